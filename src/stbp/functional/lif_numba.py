"""Fused CPU kernels (numba) for the LIF recurrence (E2–E4) and its STBP backward (E6–E7).

The eager PyTorch path in :mod:`stbp.functional.lif` issues a handful of small ops per time
step; here each kernel makes one pass over ``[T, N]`` (N = every neuron of the batch), in blocks
of neurons so that a block's state stays in cache while t runs, with the blocks spread over the
CPU cores. Nothing is compiled at install time: numba compiles on first use and caches the
machine code on disk.

The forward rounds ``u·f(o) + x`` once, as the eager path's fused multiply-add does, then
compares ``u >= V_th`` in the tensor's dtype, so both paths give the same spikes; the backward
computes in the tensor's dtype and agrees with the eager path to float rounding (tested for
every surrogate × reset × temporal setting). Each surrogate curve gets its own compiled backward,
so that its inner loop vectorizes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

try:  # numba is a dependency, but a platform without a wheel still gets the eager path
    import numba as nb

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    nb = None
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "supported", "forward", "backward"]

_DTYPES = (torch.float32, torch.float64)
_BLOCK = 1024  # neurons per block: 4 KiB of fp32 state per buffer


def supported(current: Tensor, surrogate) -> str | None:
    """``None`` when the numba kernels can run this case, else the reason they cannot."""
    from stbp.functional.surrogate import SURROGATES

    if not HAVE_NUMBA:
        return "numba is not installed"
    if current.device.type != "cpu":
        return f"the tensor is on {current.device.type}, the numba kernels run on the CPU"
    if current.dtype not in _DTYPES:
        return f"dtype {current.dtype} (the numba kernels take float32 or float64)"
    if SURROGATES.get(getattr(surrogate, "name", None)) is not type(surrogate):
        return f"surrogate {surrogate!r} is not one of the built-in curves"
    return None


def _constants(name: str, a: float) -> tuple[float, float]:
    """Per-curve constants (c0, c1) of h, so the kernels multiply instead of divide."""
    if name == "rectangular":
        return 1 / a, a / 2
    if name == "polynomial":
        return math.sqrt(a) / 2, a / 4
    if name == "sigmoid":
        return 1 / a, 0.0
    if name == "gaussian":
        return 1 / (2 * a), 1 / math.sqrt(2 * math.pi * a)
    if name == "atan":
        return 1 / a, 1 / (math.pi * a)
    return 1 / a, 1 / (2 * a)  # fast_sigmoid


if HAVE_NUMBA:
    from numba.extending import intrinsic

    @intrinsic
    def _fma(typingctx, a, b, c):  # pragma: no cover - compiled
        """a·b + c rounded once (LLVM's fma), the eager path's fused multiply-add."""
        if not (a == b == c and isinstance(a, nb.types.Float)):
            return None

        def codegen(context, builder, signature, args):
            return builder.fma(*args)

        return a(a, b, c), codegen

    # h(x) of each curve of stbp.functional.surrogate, x = u − V_th, with (c0, c1) from _constants
    @nb.njit(inline="always", fastmath=True)
    def _h_rectangular(x, c0, c1, zero):  # pragma: no cover - compiled
        return c0 if abs(x) < c1 else zero

    @nb.njit(inline="always", fastmath=True)
    def _h_polynomial(x, c0, c1, zero):  # pragma: no cover - compiled
        return max(zero, c0 - c1 * abs(x))

    @nb.njit(inline="always", fastmath=True)
    def _h_sigmoid(x, c0, c1, zero):  # pragma: no cover - compiled
        s = 1 / (1 + math.exp(-x * c0))
        return s * (1 - s) * c0

    @nb.njit(inline="always", fastmath=True)
    def _h_gaussian(x, c0, c1, zero):  # pragma: no cover - compiled
        return math.exp(-x * x * c0) * c1

    @nb.njit(inline="always", fastmath=True)
    def _h_atan(x, c0, c1, zero):  # pragma: no cover - compiled
        z = x * c0
        return c1 / (1 + z * z)

    @nb.njit(inline="always", fastmath=True)
    def _h_fast_sigmoid(x, c0, c1, zero):  # pragma: no cover - compiled
        z = 1 + abs(x) * c0
        return c1 / (z * z)

    _CURVES = {
        "rectangular": _h_rectangular, "polynomial": _h_polynomial, "sigmoid": _h_sigmoid,
        "gaussian": _h_gaussian, "atan": _h_atan, "fast_sigmoid": _h_fast_sigmoid,
    }

    @nb.njit(inline="always")
    def _forward_row(u, prev, spikes, codes, mem, thr, leak0, leak1):  # pragma: no cover
        # mem holds x^t on entry and u^t on exit: one array read and written in place, so that
        # the loop vectorizes (a separate x that may alias mem would defeat that)
        for j in range(mem.shape[0]):
            # u·f(o) + x rounded once, as the eager path's fused multiply-add
            v = _fma(u[j], leak1 if prev[j] != 0 else leak0, mem[j])
            u[j] = v
            mem[j] = v
            fired = v >= thr
            spikes[j] = 1 if fired else 0
            codes[j] = 1 if fired else 0

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _forward_kernel(mem, thr, leak0, leak1, spikes, codes):  # pragma: no cover - compiled
        # mem: the current on entry, the membrane potentials on exit; spikes as mem's dtype and
        # as bytes (codes), for a next layer that sums events
        steps, n = mem.shape
        nblocks = (n + _BLOCK - 1) // _BLOCK
        for b in nb.prange(nblocks):
            lo = b * _BLOCK
            hi = min(lo + _BLOCK, n)
            u = np.zeros(hi - lo, mem.dtype)  # u^0 = 0, o^0 = 0
            silent = np.zeros(hi - lo, np.uint8)
            _forward_row(u, silent, spikes[0, lo:hi], codes[0, lo:hi], mem[0, lo:hi], thr, leak0,
                         leak1)
            for t in range(1, steps):
                _forward_row(u, codes[t - 1, lo:hi], spikes[t, lo:hi], codes[t, lo:hi],
                             mem[t, lo:hi], thr, leak0, leak1)

    @nb.njit(inline="always", fastmath=True)
    def _backward_row(h, mem, gs, gm, nxt, thr, c0, c1, leak0, leak1, lg0, lg1, last,
                      with_grad_mem):  # pragma: no cover - compiled
        # mem holds u^t on entry and ε^t on exit (in place, so that the loop vectorizes)
        zero = thr - thr
        for j in range(mem.shape[0]):
            u = mem[j]
            v = u - thr
            hv = h(v, c0, c1, zero)
            e = gs[j] * hv
            if with_grad_mem:
                e += gm[j]
            if not last:  # the temporal path: ε^{t+1} · (f(o^t) + u^t · f'(o^t) · h(u^t))
                fired = v >= zero
                f = leak1 if fired else leak0
                fp = lg1 if fired else lg0
                e += nxt[j] * (f + u * fp * hv)
            mem[j] = e
            nxt[j] = e

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _backward_kernel(mem, gs, gm, fg, fw, thr, c0, c1, leak0, leak1, lg0, lg1, temporal,
                         with_grad_spikes, with_grad_mem, factored, ph, pw, pk,
                         curve):  # pragma: no cover - compiled
        # One top-level kernel (no closures, so numba's disk cache finds it in every process);
        # each curve's row loop is inlined on its own, so it vectorizes. The spikes' gradient
        # may (also) come factored, made here one block at a time instead of read from memory:
        # factored == 1: fg @ fw, a next layer's error times its weights, one sample row
        # (fw.shape[1] neurons) per block; factored == 2: fg is the gradient of a pk×pk average
        # pooling (stride pk) of ph×pw planes, expanded one plane per block.
        steps, n = mem.shape
        size = fw.shape[1] if factored == 1 else ph * pw if factored == 2 else _BLOCK
        per_step = n // size  # sample rows / planes per time step (factored)
        ho, wo = ph // max(pk, 1), pw // max(pk, 1)
        kk = mem.dtype.type(max(pk, 1) * max(pk, 1))
        nblocks = (n + size - 1) // size
        for b in nb.prange(nblocks):
            lo = b * size
            hi = min(lo + size, n)
            nxt = np.zeros(hi - lo, mem.dtype)
            grow = np.zeros(hi - lo, mem.dtype)
            share = np.zeros(max(wo * pk, 1), mem.dtype)
            for t in range(steps - 1, -1, -1):
                g_mem = gm[t, lo:hi] if with_grad_mem else gm[0, 0:0]
                m = mem[t, lo:hi]
                if factored:
                    if with_grad_spikes:
                        grow[:] = gs[t, lo:hi]
                    else:
                        grow[:] = 0
                    r = t * per_step + b
                    if factored == 1:
                        for k in range(fw.shape[0]):
                            a = fg[r, k]
                            if a != 0:
                                wk = fw[k]
                                for c in range(hi - lo):
                                    grow[c] += a * wk[c]
                    else:
                        gp = fg[r]
                        for yo in range(ho):  # each pooled value / k², over its k×k window
                            for xo in range(wo):
                                v = gp[yo * wo + xo] / kk
                                for dx in range(pk):
                                    share[xo * pk + dx] = v
                            for dy in range(pk):  # the same row of shares, k times
                                g_row = grow[(yo * pk + dy) * pw:]
                                for x in range(wo * pk):
                                    g_row[x] += share[x]
                    g = grow
                elif with_grad_spikes:
                    g = gs[t, lo:hi]
                else:
                    g = grow  # zeros
                last = (not temporal) or t == steps - 1
                if curve == 0:
                    _backward_row(_h_rectangular, m, g, g_mem, nxt, thr, c0, c1, leak0, leak1, lg0,
                                  lg1, last, with_grad_mem)
                elif curve == 1:
                    _backward_row(_h_polynomial, m, g, g_mem, nxt, thr, c0, c1, leak0, leak1, lg0,
                                  lg1, last, with_grad_mem)
                elif curve == 2:
                    _backward_row(_h_sigmoid, m, g, g_mem, nxt, thr, c0, c1, leak0, leak1, lg0,
                                  lg1, last, with_grad_mem)
                elif curve == 3:
                    _backward_row(_h_gaussian, m, g, g_mem, nxt, thr, c0, c1, leak0, leak1, lg0,
                                  lg1, last, with_grad_mem)
                elif curve == 4:
                    _backward_row(_h_atan, m, g, g_mem, nxt, thr, c0, c1, leak0, leak1, lg0,
                                  lg1, last, with_grad_mem)
                else:
                    _backward_row(_h_fast_sigmoid, m, g, g_mem, nxt, thr, c0, c1, leak0, leak1, lg0,
                                  lg1, last, with_grad_mem)

    _CURVE_IDS = {name: i for i, name in enumerate(_CURVES)}


def _threads() -> None:
    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))


def _leak_values(p, dtype: torch.dtype) -> tuple[float, float, float, float]:
    """f(0), f(1), f'(0), f'(1), computed by the eager code itself so both paths round alike."""
    o = torch.tensor([0.0, 1.0], dtype=dtype)
    f, fp = p.leak(o), p.leak_grad(o)
    return float(f[0]), float(f[1]), float(fp[0]), float(fp[1])


def forward(current: Tensor, p, *, overwrite: bool = False,
            floats: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
    """Spikes, membrane and the spikes as bytes (``uint8``), all ``[T, ...]``, of
    :func:`stbp.functional.lif` (no autograd here).

    With ``overwrite`` the membrane is written over the (contiguous) current: step t reads x^t
    before it writes u^t in the same place. ``floats=False`` makes the bytes alone (the
    spikes come back as ``None``).
    """
    _threads()
    x = current.detach().contiguous()
    flat = x.reshape(x.shape[0], -1)
    codes = torch.empty(flat.shape, dtype=torch.uint8)
    spikes = torch.empty_like(flat) if floats else codes  # bytes alone: written twice
    mem = flat if overwrite else flat.clone()
    np_dtype = np.float32 if x.dtype == torch.float32 else np.float64
    leak0, leak1, _, _ = _leak_values(p, x.dtype)
    # the threshold in the tensor's dtype and f(o) as the eager path rounds them
    _forward_kernel(
        mem.numpy(), np_dtype(p.threshold), np_dtype(leak0), np_dtype(leak1), spikes.numpy(),
        codes.numpy(),
    )
    return (spikes.view(x.shape) if floats else None), mem.view(x.shape), codes.view(x.shape)


def backward(
    membrane: Tensor, grad_spikes: Tensor | None, grad_membrane: Tensor | None, p,
    *, in_place: bool = False, factored=None,
) -> Tensor:
    """ε = ∂L/∂x for all t (E6–E7), from the saved membrane and the incoming gradients.

    ``in_place=True`` writes ε over the (contiguous) membrane: step t reads u^t before it writes
    ε^t in the same place. ``factored`` adds a gradient on the spikes without it being made in
    memory: ``("linear", g, w)`` adds ``g @ w`` — a next layer's error ``[T·R, K]`` (R sample
    rows per step) times its weight ``[K, F]`` over the F neurons of a sample row
    (``membrane``: ``[T, R, ..., F]``); ``("pool", g, k)`` adds the gradient of a k×k average
    pooling with stride k, ``g`` ``[T, ..., H // k, W // k]`` (``membrane``:
    ``[T, ..., H, W]``).
    """
    _threads()
    shape = membrane.shape
    mem = membrane.contiguous().reshape(shape[0], -1)
    dtype = mem.numpy().dtype

    def flat(g: Tensor) -> np.ndarray:
        return g.detach().to(mem.dtype).contiguous().reshape(mem.shape).numpy()

    gs = flat(grad_spikes) if grad_spikes is not None else np.zeros((1, 1), dtype)
    gm = flat(grad_membrane) if grad_membrane is not None else gs
    fg, fw = np.zeros((1, 1), dtype), np.zeros((1, 1), dtype)
    mode, ph, pw, pk = 0, 0, 0, 0
    if factored is not None and factored[0] == "linear":
        _, g, w = factored
        mode = 1
        fg = g.detach().to(mem.dtype).contiguous().numpy()
        fw = w.detach().to(mem.dtype).contiguous().numpy()
        if fw.shape[1] == 0 or mem.shape[1] % fw.shape[1] or fg.shape != (
                mem.shape[0] * (mem.shape[1] // fw.shape[1]), fw.shape[0]):
            raise ValueError(f"factored gradient {tuple(fg.shape)} @ {tuple(fw.shape)} does not "
                             f"fit a membrane of shape {tuple(shape)}")
    elif factored is not None:
        _, g, pk = factored
        mode, ph, pw = 2, shape[-2], shape[-1]
        if len(shape) < 3 or pk < 1 or tuple(g.shape) != (*shape[:-2], ph // pk, pw // pk):
            raise ValueError(f"pooled gradient of shape {tuple(g.shape)} does not fit a "
                             f"{pk}x{pk} pooling of a membrane of shape {tuple(shape)}")
        fg = g.detach().to(mem.dtype).contiguous().reshape(-1, (ph // pk) * (pw // pk)).numpy()
    # the kernel turns u^t into ε^t in place: in the saved membrane itself, or in a copy
    eps = mem if in_place and mem.data_ptr() == membrane.data_ptr() else mem.clone()
    cast = np.float32 if mem.dtype == torch.float32 else np.float64
    leak0, leak1, lgrad0, lgrad1 = _leak_values(p, mem.dtype)
    c0, c1 = _constants(p.surrogate.name, p.surrogate.width)
    _backward_kernel(
        eps.numpy(), gs, gm, fg, fw, cast(p.threshold), cast(c0), cast(c1), cast(leak0),
        cast(leak1), cast(lgrad0), cast(lgrad1), bool(p.temporal), grad_spikes is not None,
        grad_membrane is not None, mode, ph, pw, pk, _CURVE_IDS[p.surrogate.name],
    )
    return eps.view(shape)
