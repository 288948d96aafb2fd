"""Synaptic currents (E1) for all T steps at once, with compact saved state for the backward.

x^{t,n} = W o^{t,n-1} + b is one matmul (or one convolution) over the T·B rows. Its backward
needs the layer's input for the weight gradient ∂L/∂W = Σ_t ε^{t,n} (o^{t,n-1})ᵀ (E8). In a
spiking network that input is spikes (0/1), or average-pooled spikes (multiples of 1/k²): such
an input is saved as one byte per value — the exact code c = 36·value, decoded as c / 36 — not
four, and turned back into floats one chunk of rows at a time while the weight gradient is
summed, so no full-size float copy is ever made again. Any other input (analog intensities, a
user's floats) is saved as it is. Gradients are those of ``F.linear`` / ``F.conv2d`` up to the
order in which the chunks are summed.

Spikes given as bytes (the trainer's Bernoulli input) go event-driven when that is faster
(:mod:`stbp.functional.events`: the weight columns of the inputs that spiked are summed, and
the spikes are kept as a sparse list); ``linear(..., events=False)`` keeps the dense matmul.

Under ``torch.autocast`` (``[train] precision = "bf16"``) the forward runs in the autocast
dtype like ``F.linear`` would, and the backward computes in that dtype too, summing the weight
gradient chunks in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stbp.functional import events as _events
from stbp.functional.spikes import Spikes
from stbp.kernels import pack as pack_kernel
from stbp.kernels.runtime import HAVE_NUMBA, TUNING, Tuning

__all__ = ["linear", "conv2d", "pack", "unpack", "is_byte_spikes", "QUANTUM"]

#: codes are 36 × value: exact for spikes (0/1) and for 1×1, 2×2, 3×3 and 6×6 average pools of
#: spikes, with values up to 255 / 36 ≈ 7.08
QUANTUM = 36

def pack(x: Tensor) -> Tensor | None:
    """One-byte codes of ``x`` (``uint8``, value = code / 36), or ``None`` if not exact.

    ``x`` is exactly representable when every value is k/36 for an integer k in [0, 255] as
    ``unpack`` rounds it — true of spikes and of average-pooled spikes.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not HAVE_NUMBA:
        return _pack_torch(x)
    return pack_kernel.pack(x, QUANTUM)


def _pack_torch(x: Tensor) -> Tensor | None:
    if not x.is_floating_point():
        return None
    c = torch.round(x.detach() * QUANTUM)
    if not bool(((c >= 0) & (c <= 255) & (c / QUANTUM == x)).all()):
        return None
    return c.to(torch.uint8)


def unpack(codes: Tensor, dtype: torch.dtype) -> Tensor:
    """The values that :func:`pack` encoded, as ``dtype`` (each one rounded as c / 36).

    Two vectorised passes (convert, divide) beat a numba table lookup by ~5× here: the gather
    does not vectorise.
    """
    return codes.to(dtype).div_(QUANTUM)


def _rows(n_per_row: int, tuning: Tuning) -> int:
    return max(tuning.dense_min_rows, tuning.dense_chunk // max(1, n_per_row))


def _save(ctx, x: Tensor, weight: Tensor, *, rows: bool = False) -> None:
    """Save the input (packed when exact; only when a weight gradient needs it) and W;
    ``rows=True`` saves it as ``[rows, features]``.

    Spikes given as bytes (``uint8``/``bool`` 0/1) are saved as those bytes (value = code)."""
    ctx.quantum = QUANTUM
    if rows:
        x = x.reshape(-1, x.shape[-1])
    if is_byte_spikes(x):
        codes = x.view(torch.uint8) if x.dtype == torch.bool else x
        ctx.quantum = 1
    else:
        codes = pack(x) if weight.requires_grad else None
    ctx.packed = codes is not None
    ctx.in_shape, ctx.in_dtype = x.shape, x.dtype
    kept = codes if codes is not None else (x if weight.requires_grad else None)
    ctx.save_for_backward(kept, weight)


def _input_chunk(ctx, saved: Tensor, lo: int, hi: int, dtype: torch.dtype) -> Tensor:
    part = saved[lo:hi]
    if not ctx.packed:
        return part.to(dtype)
    return part.to(dtype) if ctx.quantum == 1 else unpack(part, dtype)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None,  # type: ignore[override]
                tuning: Tuning):
        out = _linear_forward(x, weight, bias, tuning)
        ctx.tuning = tuning
        ctx.dtype = out.dtype
        ctx.has_bias = bias is not None
        _save(ctx, x, weight, rows=True)
        ctx.in_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        saved, weight = ctx.saved_tensors
        dtype = ctx.dtype
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight.to(dtype)).reshape(ctx.in_shape).to(ctx.in_dtype)
        if ctx.needs_input_grad[1]:
            acc = torch.float32 if dtype != torch.float64 else dtype
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            step = _rows(saved.shape[1], ctx.tuning)
            for lo in range(0, saved.shape[0], step):
                hi = min(lo + step, saved.shape[0])
                x = _input_chunk(ctx, saved, lo, hi, dtype)
                if dtype == acc:  # accumulate inside the matmul, no temporary [out, in] product
                    grad_w.addmm_(g[lo:hi].t(), x)
                else:
                    grad_w.add_(g[lo:hi].t() @ x)
            grad_w = grad_w.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0, dtype=torch.float32 if dtype != torch.float64 else dtype)
            grad_b = grad_b.to(weight.dtype)
        return grad_x, grad_w, grad_b, None


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int,  # type: ignore[override]
                padding: int, tuning: Tuning):
        out = _conv_forward(x, weight, bias, stride, padding, tuning)
        ctx.tuning = tuning
        ctx.dtype = out.dtype
        ctx.has_bias = bias is not None
        ctx.stride, ctx.padding = stride, padding
        _save(ctx, x, weight)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        saved, weight = ctx.saved_tensors
        dtype = ctx.dtype
        g = grad.to(dtype)
        w = weight.to(dtype)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.float32 if dtype != torch.float64 else dtype
        grad_x = torch.empty(ctx.in_shape, dtype=dtype, device=g.device) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=g.device) if need_w else None
        n = ctx.in_shape[0]
        step = ctx.tuning.images_per_chunk(ctx.in_shape, g.device)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            x = (_input_chunk(ctx, saved, lo, hi, dtype) if need_w
                 else torch.empty((hi - lo, *ctx.in_shape[1:]), dtype=dtype, device=g.device))
            gx, gw, _ = torch.ops.aten.convolution_backward(
                g[lo:hi], x, w, None, [ctx.stride] * 2, [ctx.padding] * 2, [1, 1], False,
                [0, 0], 1, [need_x, need_w, False],
            )
            if need_x:
                grad_x[lo:hi] = gx
            if need_w:
                grad_w.add_(gw)
        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 2, 3), dtype=acc).to(weight.dtype)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_x is not None:
            grad_x = grad_x.to(ctx.in_dtype)
        return grad_x, grad_w, grad_b, None, None, None


def is_byte_spikes(x: Tensor) -> bool:
    """Spikes given as one byte each (``uint8`` or ``bool``, values 0/1), as
    :func:`stbp.encoding.bernoulli` makes with ``dtype=torch.uint8``."""
    return x.dtype in (torch.uint8, torch.bool)


def _as_float(x: Tensor, weight: Tensor) -> Tensor:
    """Byte spikes become the dtype the matmul runs in (the weight's, or bfloat16 under
    autocast — exact for spikes; a temporary, they are saved as bytes); any other input is
    used as it is."""
    return x.to(_events.compute_dtype(weight)) if is_byte_spikes(x) else x


def _by_chunks(op, x: Tensor, step: int) -> Tensor:
    """``op`` over the rows (images) of ``x`` ``step`` at a time, into one output: ``op(x)``
    when one chunk holds them all."""
    if x.shape[0] <= step:
        return op(x)
    first = op(x[:step])
    out = torch.empty((x.shape[0], *first.shape[1:]), dtype=first.dtype, device=first.device)
    out[:step] = first
    for lo in range(step, x.shape[0], step):
        out[lo:lo + step] = op(x[lo:lo + step])
    return out


def _linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None, tuning: Tuning) -> Tensor:
    """``F.linear``; byte spikes are turned into floats a chunk of rows at a time, so no
    full-size float copy of the input is made."""
    if not is_byte_spikes(x):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    out = _by_chunks(lambda r: F.linear(_as_float(r, weight), weight, bias), rows,
                     _rows(rows.shape[1], tuning))
    return out.reshape(*x.shape[:-1], out.shape[1])


def _conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int,
                  tuning: Tuning) -> Tensor:
    """``F.conv2d`` over ``x`` ``[N, C, H, W]`` a chunk of images at a time
    (``tuning.images_per_chunk``: oneDNN's float32 convolution runs up to 4x faster so than over
    a whole T·B batch; byte spikes become floats one chunk at a time)."""
    step = tuning.images_per_chunk(x.shape, x.device) if x.dim() == 4 else x.shape[0]
    return _by_chunks(lambda c: F.conv2d(_as_float(c, weight), weight, bias, stride, padding), x,
                      step)


def _as_bytes(x: Tensor | Spikes, weight: Tensor) -> Tensor | Spikes:
    """A float input that asks for no gradient and holds whole numbers in [0, 255] (spikes as
    ``(torch.rand(...) < p).float()`` makes them) as those bytes, found in one pass: the event
    path sums them, and the dense path, if they are too dense to sum, saves them as they are
    (instead of checking them a second time). Anything else unchanged."""
    if (isinstance(x, Tensor) and x.is_floating_point() and not x.requires_grad
            and _events.usable(x, weight)):
        spikes = _events.as_spikes(x, weight.dtype)
        if spikes is not None:
            return spikes.codes
    return x


def _tracks(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: Tensor | Spikes, weight: Tensor, bias: Tensor | None = None, *,
           events: bool = True, tuning: Tuning = TUNING) -> Tensor:
    """``F.linear`` (E1 for all rows at once) that saves a spiking input as one byte per value.

    Spikes held as bytes — a ``uint8``/``bool`` tensor, or :class:`Spikes` — run event-driven
    (:func:`stbp.functional.events.linear`: the weight columns of the inputs that spiked are
    summed) when that applies; ``events=False`` forces the dense matmul.
    """
    if events:
        x = _as_bytes(x, weight)
        out = _events.linear(x, weight, bias, tuning=tuning)
        if out is not None:
            return out
    if isinstance(x, Spikes):
        x = x.float()
    if not _tracks(x, weight, bias):
        return _linear_forward(x, weight, bias, tuning)
    return _Linear.apply(x, weight, bias, tuning)


def conv2d(x: Tensor | Spikes, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
           padding: int = 0, *, events: bool = True, steps: int = 0,
           tuning: Tuning = TUNING) -> Tensor:
    """``F.conv2d`` on ``[N, C, H, W]`` that saves a spiking input as one byte per value.

    ``x``: a tensor ``[N, C, H, W]``, or :class:`Spikes` ``[T, B, C, H, W]`` (the result is
    then ``[T·B, Cout, Ho, Wo]``). Spikes held as bytes run event-driven
    (:func:`stbp.functional.events.conv2d`) when that applies; ``events=False`` forces the
    dense convolution. ``steps`` = T when the N images of a tensor are T time steps of N / T
    samples (image t·B + b), which lets the event-driven sums run over the changes along
    time."""
    if events:
        x = _as_bytes(x, weight)
        out = _events.conv2d(x, weight, bias, stride, padding, steps=steps, tuning=tuning)
        if out is not None:
            return out
    if isinstance(x, Spikes):
        x = x.float().flatten(0, 1)
    if not _tracks(x, weight, bias):
        return _conv_forward(x, weight, bias, stride, padding, tuning)
    return _Conv2d.apply(x, weight, bias, stride, padding, tuning)
