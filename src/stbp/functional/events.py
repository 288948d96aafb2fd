"""Event-driven synapses (E1, E8) for spikes held as bytes: work in proportion to the spikes.

When a layer's input is spikes as bytes — a ``uint8``/``bool`` tensor (what
:func:`stbp.encoding.bernoulli` makes with ``dtype=torch.uint8``) or
:class:`~stbp.functional.spikes.Spikes` from a layer of neurons or a pooling — E1's
x^t = W o^t + b needs no multiplications: each row's current is b plus the sum of the weight
columns of the inputs that spiked (:mod:`stbp.kernels.sparse_linear`,
:mod:`stbp.kernels.sparse_conv`). :func:`linear` and :func:`conv2d` return ``None`` when that
does not apply or is not worth it — numba missing, not on the CPU, a dtype the kernels do not
take, or more of the inputs nonzero than ``tuning.max_density`` (for a fully connected layer
whose dense matmul runs in bfloat16 under ``torch.autocast``, :func:`compute_dtype`, the
lower ``tuning.density_limit``) — and the caller (:mod:`stbp.functional.synapse`) runs the dense
matmul/convolution instead.

Gradients: to the weight and bias (summed the same way over the kept spikes), and, for
:class:`Spikes` that carry an origin, to that origin: a fully connected layer hands back its
gradient on the spikes factored, as a :class:`LinearTerm` (its error ε and W — ∂L/∂o = ε W,
made a few samples at a time inside the neurons' backward); a convolution hands it back dense
(the transposed convolution of its error).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.errors import StbpError
from stbp.functional.spikes import DenseTerm, GradTerm, Spikes
from stbp.kernels import dense_rows, density, pack, sparse_conv, sparse_linear
from stbp.kernels.runtime import HAVE_NUMBA, TUNING, Tuning

__all__ = ["linear", "conv2d", "usable", "as_spikes", "compute_dtype", "LinearTerm"]

_WEIGHT_DTYPES = (torch.float32, torch.float64)


def usable(x: Tensor | Spikes, weight: Tensor) -> bool:
    """Whether the event-driven path can run for ``x`` — :class:`Spikes`, a ``uint8``/``bool``
    tensor, or a float tensor of the weight's dtype (whose values are then checked, by
    :func:`as_spikes`) — on the CPU with numba; the density is checked by the layer functions."""
    if not (HAVE_NUMBA and weight.device.type == "cpu" and weight.dtype in _WEIGHT_DTYPES
            and x.device.type == "cpu" and x.dim() >= 1):
        return False
    if isinstance(x, Spikes):
        return x.dtype == weight.dtype
    return x.dtype in (torch.uint8, torch.bool, weight.dtype)


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype a dense matmul/convolution with ``weight`` runs in: the autocast dtype inside
    ``torch.autocast`` on the weight's device (for a float32 weight), else the weight's."""
    kind = weight.device.type
    if weight.dtype == torch.float32 and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def as_spikes(x: Tensor | Spikes, dtype: torch.dtype) -> Spikes | None:
    """``x`` as :class:`Spikes` standing for ``dtype``: :class:`Spikes` as they are; a
    ``uint8``/``bool`` tensor (its values); a float32/64 CPU tensor whose values are all whole
    numbers in [0, 255] — spikes as ``(torch.rand(...) < p).float()`` makes them, or event
    counts — as one byte each, found in one pass (:func:`stbp.kernels.pack.pack`); else
    ``None``. A tensor's Spikes carry no origin: a consumer makes a tensor's gradient itself."""
    if isinstance(x, Spikes):
        return x
    if x.dtype in (torch.uint8, torch.bool):
        return Spikes(x.view(torch.uint8) if x.dtype == torch.bool else x, dtype)
    if x.dtype in _WEIGHT_DTYPES and x.device.type == "cpu" and HAVE_NUMBA:
        codes = pack.pack(x, 1)
        return None if codes is None else Spikes(codes, x.dtype)
    return None


def _source(x: Tensor | Spikes, spikes: Spikes) -> Tensor | None:
    """What a consumer's Function takes as its input for the spikes' gradient: their origin's
    input, or the float tensor they were read from; ``None``: no gradient wanted."""
    if spikes.requires_grad:
        spikes.origin.use()
        return spikes.origin.input
    if isinstance(x, Tensor) and x.is_floating_point() and x.requires_grad:
        return x
    return None


def _input_gradient(ctx, term: GradTerm) -> Tensor:
    """∂L/∂(the Function's input) for the gradient ``term`` on the spikes it read: through
    their origin, or made densely for a float tensor."""
    if ctx.origin is not None:
        return ctx.origin.backward(term)
    return term.dense(ctx.in_shape, ctx.in_dtype)


class LinearTerm(GradTerm):
    """∂L/∂o = ε W of a fully connected layer's input spikes ``[T, B, ..., F]``: its error ε
    ``[T·B·…, K]`` (rows in the spikes' order) and weight W ``[K, F]``. Made whole
    (:meth:`dense`) it skips the zeros of ε where they are most of it
    (``tuning.max_linear_grad_density``); in parts (:meth:`write_to`) it always does."""

    def __init__(self, grad: Tensor, weight: Tensor, tuning: Tuning = TUNING) -> None:
        self.grad, self.weight, self.tuning = grad, weight, tuning

    def _rows(self, out: Tensor, b0: int, b1: int) -> tuple[Tensor, Tensor]:
        """The error rows of samples ``b0:b1`` ``[T, R, K]`` and ``out`` seen as ``[T, R, F]``."""
        k, f = self.weight.shape
        per = out[0, 0].numel() // f  # rows of the layer per sample and step (usually 1)
        rows = self.grad.view(out.shape[0], -1, k)[:, b0 * per:b1 * per]
        return rows, out.view(out.shape[0], -1, f)

    def add_to(self, out: Tensor, b0: int, b1: int) -> None:
        rows, target = self._rows(out, b0, b1)
        target.add_(torch.matmul(rows, self.weight))

    def write_to(self, out: Tensor, b0: int, b1: int) -> None:
        rows, target = self._rows(out, b0, b1)
        if rows.device.type == "cpu" and HAVE_NUMBA and rows.dtype in _WEIGHT_DTYPES:
            dense_rows.error_times_weight(rows, self.weight, target)  # the small kernel
        else:
            torch.matmul(rows, self.weight, out=target)

    def dense(self, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        g = self.grad
        if (g.device.type == "cpu" and HAVE_NUMBA and g.dtype in _WEIGHT_DTYPES and g.dim() == 2
                and density.nonzero_fraction(g) <= self.tuning.max_linear_grad_density):
            out = torch.empty((1, g.shape[0], self.weight.shape[1]), dtype=g.dtype)
            dense_rows.error_times_weight(g.unsqueeze(0), self.weight, out)
            return out.to(dtype).reshape(shape)
        return (g @ self.weight).to(dtype).reshape(shape)


def _operands(weight: Tensor, bias: Tensor | None,
              divisor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Wᵀ ``[in, out]`` (times 1/``divisor``) and the bias (zeros without one) as arrays."""
    w = weight.detach()
    base = (np.zeros(w.shape[0], w.numpy().dtype) if bias is None
            else bias.detach().to(w.dtype).contiguous().numpy())
    # Wᵀ, the rows the kernels sum (scaled out of place: .contiguous() may return W itself)
    wt = (w.t() * (1.0 / divisor) if divisor != 1 else w.t()).contiguous()
    return wt.numpy(), base


class _EventLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor | None, weight: Tensor, bias: Tensor | None,  # type: ignore[override]
                spikes: Spikes, rows: np.ndarray, counts: np.ndarray, tuning: Tuning):
        # source: the tensor the spikes' gradient goes to (their origin's input), or None
        wt, base = _operands(weight, bias, spikes.divisor)
        shape = spikes.shape
        # one pass: the CSR kept (listed sample by sample) and the current — over the changes
        # along time where they are fewer than the spikes
        changes = sparse_linear.change_counts(rows, shape, counts, tuning)
        if changes is not None:
            csr, out = sparse_linear.csr_changes(rows, int(shape[0]), changes, wt, base)
        else:
            csr, out = sparse_linear.csr_rows(rows, counts, sparse_linear.sample_order(shape), wt,
                                              base)
        ctx.csr, ctx.origin, ctx.divisor, ctx.tuning = csr, spikes.origin, spikes.divisor, tuning
        ctx.in_shape, ctx.in_dtype = shape, spikes.dtype
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight)
        return torch.from_numpy(out.reshape(*shape[:-1], weight.shape[0]))  # not a view

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(weight.dtype).contiguous()
        grad_src = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_wt = torch.from_numpy(ctx.csr.t_matmul(g.numpy(), ctx.tuning))  # ∂L/∂Wᵀ (E8)
            if ctx.divisor != 1:
                grad_wt.mul_(1.0 / ctx.divisor)
            grad_w = grad_wt.t().contiguous()  # [out, in], contiguous like the parameter
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        if ctx.needs_input_grad[0]:  # ∂L/∂o = ε W, made inside the origin's backward
            grad_src = _input_gradient(ctx, LinearTerm(g, weight, ctx.tuning))
        return grad_src, grad_w, grad_b, None, None, None, None


def _tracks(spikes: Spikes, weight: Tensor, bias: Tensor | None) -> bool:
    return torch.is_grad_enabled() and (spikes.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


def linear(x: Tensor | Spikes, weight: Tensor, bias: Tensor | None = None, *,
           tuning: Tuning = TUNING) -> Tensor | None:
    """E1 for spikes held as bytes ``x [..., in]`` by summing weight columns; ``None`` when the
    event-driven path does not apply (:func:`usable`) or more of the inputs are nonzero than
    ``tuning.density_limit`` allows (the caller then runs the dense matmul).

    The result has the weight's dtype, also under ``torch.autocast`` (the sums are exact in
    it). Gradients flow to ``weight`` and ``bias``, and for :class:`Spikes` with an origin, to
    that origin (as a :class:`LinearTerm`); a byte tensor has no gradient."""
    if not usable(x, weight) or x.numel() == 0:
        return None
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1] or (
            bias is not None and bias.shape != (weight.shape[0],)):
        raise StbpError(
            f"linear: input of shape {tuple(x.shape)} does not fit a weight of shape "
            f"{tuple(weight.shape)}" + ("" if bias is None else f" and a bias of shape "
                                        f"{tuple(bias.shape)}"))
    spikes = as_spikes(x, weight.dtype)
    if spikes is None:
        return None
    rows = sparse_linear.byte_rows(spikes.codes)
    counts = sparse_linear.nonzero_counts(rows)
    limit = tuning.density_limit(compute_dtype(weight), weight.shape[0])
    if counts.sum() > limit * rows.size:
        return None
    source = _source(x, spikes) if torch.is_grad_enabled() else None
    if source is not None or _tracks(spikes, weight, bias):
        return _EventLinear.apply(source, weight, bias, spikes, rows, counts, tuning)
    wt, base = _operands(weight, bias, spikes.divisor)
    changes = sparse_linear.change_counts(rows, spikes.shape, counts, tuning)
    if changes is not None:  # no backward: no CSR to keep
        _, out = sparse_linear.csr_changes(rows, int(spikes.shape[0]), changes, wt, base,
                                           with_csr=False)
    else:
        out = sparse_linear.scan(rows, sparse_linear.sample_order(spikes.shape), wt, base)
    return torch.from_numpy(out.reshape(*spikes.shape[:-1], weight.shape[0]))


# ----------------------------------------------------------------------------- convolution
class _EventConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor | None, weight: Tensor, bias: Tensor | None,  # type: ignore[override]
                spikes: Spikes, images: Tensor, padding: int, steps: int, tuning: Tuning,
                events: int):
        # images: the codes as [N, C, H, W]; steps = T > 1: summed over the changes along time;
        # events: the inputs (or their changes) the sums run over
        ctx.padding, ctx.has_bias, ctx.divisor = padding, bias is not None, spikes.divisor
        ctx.events = events
        ctx.steps, ctx.tuning, ctx.origin = steps, tuning, spikes.origin
        ctx.in_shape = spikes.shape if source is not None and spikes.origin is None else None
        ctx.in_dtype = spikes.dtype
        ctx.compute = compute_dtype(weight)  # the backward runs outside autocast
        ctx.save_for_backward(images, weight)
        return sparse_conv.forward(images, weight, bias, padding, spikes.divisor, steps)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        images, weight = ctx.saved_tensors
        g = grad.to(weight.dtype).contiguous()
        grad_src = grad_w = grad_b = None
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        # the error is zero wherever the surrogate of the neurons it comes from is: its nonzero
        # values, counted once, decide how both gradients below are summed. The weight gradient
        # runs over them where they are fewer than the inputs' events (weighed by the channels
        # each adds to); below tuning.min_breakeven_density that cannot be, and an error whose
        # gradient on the input is not wanted (a first layer's) is not counted
        cout, cin = weight.shape[:2]
        by_error = ctx.events * cout / max(1, g.numel() * sparse_conv.padded_channels(cin))
        counted = ctx.needs_input_grad[0] or (ctx.needs_input_grad[1]
                                              and by_error >= ctx.tuning.min_breakeven_density)
        nonzero = density.nonzero_fraction(g) if counted else 1.0
        if ctx.needs_input_grad[1]:  # ∂L/∂b comes from the same pass over the error
            if nonzero < by_error:
                grad_w, sums = sparse_conv.weight_grad_by_error(images, g, weight.shape, ctx.padding,
                                                                ctx.divisor, ctx.tuning)
            else:  # over the inputs' events (or their changes along time)
                grad_w, sums = sparse_conv.weight_grad(images, g, weight.shape, ctx.padding,
                                                       ctx.divisor, ctx.steps, ctx.tuning)
            grad_b = sums if want_b else None
        elif want_b:
            grad_b = g.sum((0, 2, 3))
        if ctx.needs_input_grad[0]:  # ∂L/∂o by the transposed convolution (summed or dense)
            grad_o = _conv_input_grad(images.shape, weight, g, ctx.padding, ctx.compute, nonzero,
                                      ctx.tuning)
            grad_src = _input_gradient(ctx, DenseTerm(grad_o))
        return grad_src, grad_w, grad_b, None, None, None, None, None, None


def _conv_input_grad(shape: torch.Size, weight: Tensor, g: Tensor, padding: int,
                     dtype: torch.dtype, nonzero: float, tuning: Tuning) -> Tensor:
    """The transposed convolution of the error ``g`` ``[N, C, H, W]``, in the weight's dtype:
    summed over the nonzero values of ``g`` where they are few enough
    (``tuning.grad_density_limit``; the error is zero wherever the surrogate of the neurons the
    convolution feeds is zero), else dense — for ``dtype`` bfloat16 (under autocast) in
    bfloat16 channels-last, where oneDNN is ~3x faster, handed back as a contiguous tensor of
    the weight's dtype (float32 instead where the CPU has no native bfloat16,
    ``tuning.dense_dtype``). ``nonzero``: the fraction of ``g`` that is nonzero."""
    dtype = tuning.dense_dtype(dtype)
    if nonzero <= tuning.grad_density_limit(dtype):
        return sparse_conv.input_grad(g, weight, shape, padding)
    if dtype == weight.dtype:  # a chunk of images at a time: oneDNN runs it ~1.5x faster
        grad = torch.empty(shape, dtype=weight.dtype)
        step = tuning.images_per_chunk(shape, g.device)
        for lo in range(0, shape[0], step):
            hi = min(lo + step, shape[0])
            grad[lo:hi] = torch.nn.grad.conv2d_input((hi - lo, *shape[1:]), weight, g[lo:hi], 1,
                                                     padding)
        return grad
    n, c, h, w = g.shape
    # cast and transpose in one copy (2.4x faster than .to(dtype, memory_format=channels_last))
    g_cl = torch.empty((n, h, w, c), dtype=dtype).copy_(g.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    w_cl = weight.to(dtype, memory_format=torch.channels_last)
    grad = torch.nn.grad.conv2d_input(shape, w_cl, g_cl, 1, padding)
    return torch.empty(shape, dtype=weight.dtype).copy_(grad)


def conv2d(x: Tensor | Spikes, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
           padding: int = 0, *, steps: int = 0, tuning: Tuning = TUNING) -> Tensor | None:
    """E1 of a convolution (stride 1) for inputs held as bytes: a byte tensor ``[N, C, H, W]``
    or :class:`Spikes` ``[T, B, C, H, W]`` (value = code / divisor). Each nonzero input adds
    its weights over all output channels; ``None`` if not applicable or too dense (the caller
    then runs the dense convolution). Returns ``[N, Cout, Ho, Wo]`` (N = T·B, image t·B + b).

    ``steps`` = T when the N images of a byte tensor are T time steps of N / T samples
    (:class:`Spikes` say so themselves): where the inputs change at fewer places from one step
    to the next than they are nonzero, each sample's sums run on over time, adding only the
    changes. Gradients flow to ``weight`` and ``bias`` (summed the same way over the inputs)
    and, for :class:`Spikes` with an origin, to that origin (densely)."""
    if not usable(x, weight) or x.dim() not in (4, 5) or x.numel() == 0:
        return None
    spikes = as_spikes(x, weight.dtype)
    if spikes is None:
        return None
    if isinstance(x, Spikes):
        if spikes.dim() != 5:
            return None
        steps = spikes.shape[0]
        images = spikes.codes.flatten(0, 1)
    else:
        images = spikes.codes
    if (images.dim() != 4 or weight.dim() != 4 or stride != 1
            or weight.shape[2] != weight.shape[3] or images.shape[1] != weight.shape[1]
            or images.numel() == 0):
        return None
    k = weight.shape[2]
    if images.shape[2] + 2 * padding < k or images.shape[3] + 2 * padding < k:
        return None
    rows = sparse_conv.byte_images(images).reshape(images.shape[0], -1)
    counts = sparse_linear.nonzero_counts(rows)
    if counts.sum() > tuning.density_limit(compute_dtype(weight)) * rows.size:
        return None
    changes = None if steps < 2 or images.shape[0] % steps else sparse_linear.change_counts(
        rows, torch.Size((steps, images.shape[0] // steps, rows.shape[1])), counts, tuning)
    if changes is None:
        steps = 0
    source = _source(x, spikes) if torch.is_grad_enabled() else None
    if source is not None or _tracks(spikes, weight, bias):
        events = int((counts if changes is None else changes).sum())
        return _EventConv2d.apply(source, weight, bias, spikes, images, padding, steps, tuning,
                                  events)
    return sparse_conv.forward(images, weight, bias, padding, spikes.divisor, steps)
