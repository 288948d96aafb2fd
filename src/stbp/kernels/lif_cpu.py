"""Fused CPU kernels (numba) for the LIF recurrence (E2–E4) and its STBP backward (E6–E7).

The eager PyTorch path issues a handful of small ops per time step; here each kernel makes one
pass over ``[T, N]`` (N = every neuron of the batch), in blocks of neurons so that a block's
state stays in cache while t runs, with the blocks spread over the CPU cores. Nothing is
compiled at install time: numba compiles on first use and caches the machine code on disk.

The forward rounds ``u·f(o) + x`` once, as the eager path's fused multiply-add does, then
compares ``u >= V_th`` in the tensor's dtype, so both paths give the same spikes; it writes the
spikes as bytes (and, when asked, as floats too). The backward computes in the tensor's dtype
and agrees with the eager path to float rounding. It runs over a range of columns of the
membrane, so that a caller may hand it the gradient on the spikes a few samples at a time
(:meth:`stbp.functional.spikes.GradTerm.add_to`) instead of as one ``[T, N]`` tensor. The
kernels know nothing of the layers around the neuron.

Each built-in surrogate curve (:mod:`stbp.kernels.curves`) gets its own compiled, disk-cached
backward, so that its inner loop vectorizes; any other numba curve runs through
:func:`_backward_custom`, compiled for it once per process.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from stbp.kernels import curves
from stbp.kernels.runtime import HAVE_NUMBA, nb, threads

__all__ = ["NeuronConstants", "constants", "supported", "forward", "backward", "BLOCK"]

_DTYPES = (torch.float32, torch.float64)
BLOCK = 1024  # neurons per block: 4 KiB of fp32 state per buffer

# the built-in curves, each with a compiled, cached backward (ids named here, used below)
RECTANGULAR, POLYNOMIAL, SIGMOID, GAUSSIAN, ATAN, FAST_SIGMOID = range(6)
_BUILTIN = {
    curves.rectangular: RECTANGULAR, curves.polynomial: POLYNOMIAL, curves.sigmoid: SIGMOID,
    curves.gaussian: GAUSSIAN, curves.atan: ATAN, curves.fast_sigmoid: FAST_SIGMOID,
} if HAVE_NUMBA else {}


class NeuronConstants(NamedTuple):
    """What the kernels need of a neuron, as numbers: V_th, f(0), f(1), f'(0), f'(1) (E4/E4'),
    the surrogate's curve and its two constants, and whether the temporal path is on."""

    threshold: float
    leak0: float
    leak1: float
    leak_grad0: float
    leak_grad1: float
    curve: object
    c0: float
    c1: float
    temporal: bool


def supported(current: Tensor, p) -> str | None:
    """``None`` when the kernels can run this case (``p``: the neuron's parameters), else the
    reason they cannot."""
    if not HAVE_NUMBA:
        return "numba is not installed"
    if current.device.type != "cpu":
        return f"the tensor is on {current.device.type}, the numba kernels run on the CPU"
    if current.dtype not in _DTYPES:
        return f"dtype {current.dtype} (the numba kernels take float32 or float64)"
    if getattr(p.surrogate, "curve", None) is None:
        return f"surrogate {p.surrogate!r} has no numba curve (its `curve` attribute)"
    return None


@functools.lru_cache(maxsize=256)
def constants(p, dtype: torch.dtype) -> NeuronConstants:
    """The kernels' numbers for the neuron ``p`` (:class:`stbp.functional.LIFParams`): f and f'
    at o = 0 and 1 are computed by the eager code itself, so that both paths round alike."""
    o = torch.tensor([0.0, 1.0], dtype=dtype)
    f, fp = p.leak(o), p.leak_grad(o)
    c0, c1 = p.surrogate.constants()
    return NeuronConstants(p.threshold, float(f[0]), float(f[1]), float(fp[0]), float(fp[1]),
                           p.surrogate.curve, c0, c1, p.temporal)


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

    @nb.njit(inline="always")
    def _forward_row(u, prev, spikes, codes, mem, thr, leak0, leak1):  # pragma: no cover
        # mem holds x^t on entry and u^t on exit: one array read and written in place, so that
        # the loop vectorizes (a separate x that may alias mem would defeat that)
        for j in range(mem.shape[0]):
            v = _fma(u[j], leak1 if prev[j] != 0 else leak0, mem[j])  # u·f(o) + x, rounded once
            u[j] = v
            mem[j] = v
            fired = v >= thr
            spikes[j] = 1 if fired else 0
            codes[j] = 1 if fired else 0

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _forward_kernel(mem, thr, leak0, leak1, spikes, codes):  # pragma: no cover - compiled
        # mem: the current on entry, the membrane potentials on exit; spikes as bytes (codes)
        # and in ``spikes`` (floats, or the codes once more when no floats are wanted)
        steps, n = mem.shape
        nblocks = (n + BLOCK - 1) // BLOCK
        for b in nb.prange(nblocks):
            lo = b * BLOCK
            hi = min(lo + BLOCK, n)
            u = np.zeros(hi - lo, mem.dtype)  # u^0 = 0, o^0 = 0
            silent = np.zeros(hi - lo, np.uint8)
            _forward_row(u, silent, spikes[0, lo:hi], codes[0, lo:hi], mem[0, lo:hi], thr, leak0,
                         leak1)
            for t in range(1, steps):
                _forward_row(u, codes[t - 1, lo:hi], spikes[t, lo:hi], codes[t, lo:hi],
                             mem[t, lo:hi], thr, leak0, leak1)

    @nb.njit(inline="always", fastmath=True)
    def _backward_row(h, mem, gs, gm, nxt, thr, c0, c1, leak0, leak1, lg0, lg1, last,
                      with_grad_spikes, with_grad_mem):  # pragma: no cover - compiled
        # mem holds u^t on entry and ε^t on exit (in place, so that the loop vectorizes)
        zero = thr - thr
        for j in range(mem.shape[0]):
            u = mem[j]
            v = u - thr
            hv = h(v, c0, c1, zero)
            e = gs[j] * hv if with_grad_spikes else zero
            if with_grad_mem:
                e += gm[j]
            if not last:  # the temporal path: ε^{t+1} · (f(o^t) + u^t · f'(o^t) · h(u^t))
                fired = v >= zero
                f = leak1 if fired else leak0
                fp = lg1 if fired else lg0
                e += nxt[j] * (f + u * fp * hv)
            mem[j] = e
            nxt[j] = e

    @nb.njit(inline="always")
    def _backward_block(h, mem, lo, hi, col, gs, gm, thr, c0, c1, leak0, leak1, lg0, lg1,
                        temporal, with_grad_spikes, with_grad_mem):  # pragma: no cover
        # columns lo:hi of mem, t = T..1; gs/gm hold the columns col.. of those (col = lo − the
        # first column the caller's gradient covers)
        steps = mem.shape[0]
        nxt = np.zeros(hi - lo, mem.dtype)
        for t in range(steps - 1, -1, -1):
            g = gs[t, col:col + hi - lo] if with_grad_spikes else gs[0, 0:0]
            g_mem = gm[t, col:col + hi - lo] if with_grad_mem else gm[0, 0:0]
            last = (not temporal) or t == steps - 1
            _backward_row(h, mem[t, lo:hi], g, g_mem, nxt, thr, c0, c1, leak0, leak1, lg0, lg1,
                          last, with_grad_spikes, with_grad_mem)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _backward_builtin(mem, lo, hi, gs, gm, thr, c0, c1, leak0, leak1, lg0, lg1, temporal,
                          with_grad_spikes, with_grad_mem, curve):  # pragma: no cover - compiled
        # One top-level kernel (no closures, so numba's disk cache finds it in every process);
        # each curve's row loop is inlined on its own, so it vectorizes.
        nblocks = (hi - lo + BLOCK - 1) // BLOCK
        for b in nb.prange(nblocks):
            a = lo + b * BLOCK
            z = min(a + BLOCK, hi)
            if curve == RECTANGULAR:
                _backward_block(curves.rectangular, mem, a, z, a - lo, gs, gm, thr, c0, c1,
                                leak0, leak1, lg0, lg1, temporal, with_grad_spikes,
                                with_grad_mem)
            elif curve == POLYNOMIAL:
                _backward_block(curves.polynomial, mem, a, z, a - lo, gs, gm, thr, c0, c1,
                                leak0, leak1, lg0, lg1, temporal, with_grad_spikes,
                                with_grad_mem)
            elif curve == SIGMOID:
                _backward_block(curves.sigmoid, mem, a, z, a - lo, gs, gm, thr, c0, c1,
                                leak0, leak1, lg0, lg1, temporal, with_grad_spikes,
                                with_grad_mem)
            elif curve == GAUSSIAN:
                _backward_block(curves.gaussian, mem, a, z, a - lo, gs, gm, thr, c0, c1,
                                leak0, leak1, lg0, lg1, temporal, with_grad_spikes,
                                with_grad_mem)
            elif curve == ATAN:
                _backward_block(curves.atan, mem, a, z, a - lo, gs, gm, thr, c0, c1,
                                leak0, leak1, lg0, lg1, temporal, with_grad_spikes,
                                with_grad_mem)
            else:
                _backward_block(curves.fast_sigmoid, mem, a, z, a - lo, gs, gm, thr, c0, c1,
                                leak0, leak1, lg0, lg1, temporal, with_grad_spikes,
                                with_grad_mem)

    @nb.njit(parallel=True, nogil=True)
    def _backward_custom(h, mem, lo, hi, gs, gm, thr, c0, c1, leak0, leak1, lg0, lg1, temporal,
                         with_grad_spikes, with_grad_mem):  # pragma: no cover - compiled
        # the same for a curve of the user's (compiled once per process and curve: numba's
        # disk cache cannot key on a function argument)
        nblocks = (hi - lo + BLOCK - 1) // BLOCK
        for b in nb.prange(nblocks):
            a = lo + b * BLOCK
            z = min(a + BLOCK, hi)
            _backward_block(h, mem, a, z, a - lo, gs, gm, thr, c0, c1, leak0, leak1, lg0, lg1,
                            temporal, with_grad_spikes, with_grad_mem)


def forward(current: Tensor, threshold: float, leak0: float, leak1: float, *,
            overwrite: bool = False, floats: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
    """Spikes (floats, or ``None`` when ``floats=False``), membrane and the spikes as bytes
    (``uint8``), all shaped like ``current`` ``[T, ...]``; no autograd here.

    With ``overwrite`` the membrane is written over the (contiguous) current: step t reads x^t
    before it writes u^t in the same place. ``leak0``/``leak1`` are f(0) and f(1).
    """
    x = current.detach().contiguous()
    flat = x.reshape(x.shape[0], -1)
    codes = torch.empty(flat.shape, dtype=torch.uint8)
    spikes = torch.empty_like(flat) if floats else codes  # bytes alone: written twice
    mem = flat if overwrite else flat.clone()
    cast = np.float32 if x.dtype == torch.float32 else np.float64
    with threads():  # the threshold in the tensor's dtype and f(o) as the eager path rounds it
        _forward_kernel(mem.numpy(), cast(threshold), cast(leak0), cast(leak1), spikes.numpy(),
                        codes.numpy())
    return (spikes.view(x.shape) if floats else None), mem.view(x.shape), codes.view(x.shape)


def backward(eps: Tensor, k: NeuronConstants, grad_spikes: Tensor | None,
             grad_membrane: Tensor | None = None, columns: tuple[int, int] | None = None) -> None:
    """Turn the membrane potentials in ``eps`` (contiguous ``[T, N]``) into ε = ∂L/∂x (E6–E7),
    in place, for the neurons ``columns`` = (lo, hi) (default: all).

    ``grad_spikes`` / ``grad_membrane``: the gradients on those neurons' spikes and membrane
    potentials, ``[T, hi − lo]`` (or ``None``)."""
    lo, hi = (0, eps.shape[1]) if columns is None else columns
    mem = eps.numpy()
    dtype = mem.dtype
    empty = np.zeros((1, 1), dtype)

    def arr(g: Tensor | None) -> np.ndarray:
        if g is None:
            return empty
        a = g.detach().to(eps.dtype).contiguous().numpy()
        if a.shape != (mem.shape[0], hi - lo):
            raise ValueError(f"gradient of shape {a.shape} for {hi - lo} neurons over "
                             f"{mem.shape[0]} steps")
        return a

    gs, gm = arr(grad_spikes), arr(grad_membrane)
    cast = dtype.type
    args = (cast(k.threshold), cast(k.c0), cast(k.c1), cast(k.leak0), cast(k.leak1),
            cast(k.leak_grad0), cast(k.leak_grad1), bool(k.temporal), grad_spikes is not None,
            grad_membrane is not None)
    with threads():
        if k.curve in _BUILTIN:
            _backward_builtin(mem, lo, hi, gs, gm, *args, _BUILTIN[k.curve])
        else:
            _backward_custom(k.curve, mem, lo, hi, gs, gm, *args)


def run_forward(current: Tensor, p, overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """The backend's forward: (spikes as bytes, membrane) for the neuron ``p``."""
    k = constants(p, current.dtype)
    _, membrane, codes = forward(current, k.threshold, k.leak0, k.leak1, overwrite=overwrite,
                                 floats=False)
    return codes, membrane


def run_backward(eps: Tensor, p, grad_spikes: Tensor | None, grad_membrane: Tensor | None,
                 columns: tuple[int, int] | None = None) -> None:
    """The backend's backward (see :func:`backward`) for the neuron ``p``."""
    backward(eps, constants(p, eps.dtype), grad_spikes, grad_membrane, columns)
