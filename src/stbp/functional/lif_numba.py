"""Fused CPU kernels (numba) for the LIF recurrence (E2–E4) and its STBP backward (E6–E7).

The eager PyTorch path in :mod:`stbp.functional.lif` issues a handful of small ops per time
step; here each kernel makes one pass over ``[T, N]`` (N = every neuron of the batch), in blocks
of neurons so that a block's state stays in cache while t runs, with the blocks spread over the
CPU cores. Nothing is compiled at install time: numba compiles on first use and caches the
machine code on disk.

The forward rounds ``u·f(o) + x`` once, as the eager path's fused multiply-add does, then
compares ``u >= V_th`` in the tensor's dtype, so both paths give the same spikes; the backward
evaluates h in double precision and agrees with the eager path to float rounding (tested for
every surrogate × reset × temporal setting).
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

__all__ = ["HAVE_NUMBA", "SURROGATE_CODES", "supported", "forward", "backward"]

#: surrogate name -> the kernel's code for h
SURROGATE_CODES = {
    "rectangular": 0, "polynomial": 1, "sigmoid": 2, "gaussian": 3, "atan": 4, "fast_sigmoid": 5,
}
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
    def _h(kind, x, a):  # pragma: no cover - compiled
        """h(x) of :mod:`stbp.functional.surrogate`, x = u − V_th (double precision)."""
        if kind == 0:
            return 1.0 / a if abs(x) < a / 2 else 0.0
        if kind == 1:
            return max(0.0, math.sqrt(a) / 2 - (a / 4) * abs(x))
        if kind == 2:
            s = 1.0 / (1.0 + math.exp(-x / a))
            return s * (1.0 - s) / a
        if kind == 3:
            return math.exp(-(x * x) / (2 * a)) / math.sqrt(2 * math.pi * a)
        if kind == 4:
            z = x / a
            return 1.0 / (math.pi * a * (1.0 + z * z))
        z = 1.0 + abs(x) / a
        return 1.0 / (2 * a * z * z)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _forward_kernel(x, thr, leak0, leak1, spikes, mem):  # pragma: no cover - compiled
        steps, n = x.shape
        nblocks = (n + _BLOCK - 1) // _BLOCK
        for b in nb.prange(nblocks):
            lo = b * _BLOCK
            hi = min(lo + _BLOCK, n)
            u = np.empty(hi - lo, x.dtype)
            fired = np.zeros(hi - lo, np.bool_)
            for t in range(steps):
                for j in range(hi - lo):
                    if t == 0:
                        u[j] = x[0, lo + j]
                    else:
                        # u·f(o) + x rounded once, as the eager path's fused multiply-add
                        u[j] = _fma(u[j], leak1 if fired[j] else leak0, x[t, lo + j])
                    mem[t, lo + j] = u[j]
                    fired[j] = u[j] >= thr
                    spikes[t, lo + j] = 1.0 if fired[j] else 0.0

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _backward_kernel(
        mem, grad_spikes, grad_mem, has_gs, has_gm, thr, kind, a, leak0, leak1, lgrad0, lgrad1,
        temporal, eps,
    ):  # pragma: no cover - compiled
        steps, n = mem.shape
        nblocks = (n + _BLOCK - 1) // _BLOCK
        for b in nb.prange(nblocks):
            lo = b * _BLOCK
            hi = min(lo + _BLOCK, n)
            nxt = np.zeros(hi - lo, np.float64)
            for t in range(steps - 1, -1, -1):
                for j in range(hi - lo):
                    u = mem[t, lo + j]
                    v = u - thr
                    h = _h(kind, np.float64(v), a)
                    e = 0.0
                    if has_gs:
                        e = grad_spikes[t, lo + j] * h
                    if has_gm:
                        e += grad_mem[t, lo + j]
                    if temporal and t < steps - 1:
                        if v >= 0:
                            carry = leak1 + u * lgrad1 * h
                        else:
                            carry = leak0 + u * lgrad0 * h
                        e += nxt[j] * carry
                    eps[t, lo + j] = e
                    nxt[j] = e


def _threads() -> None:
    nb.set_num_threads(max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS)))


def _leak_values(p, dtype: torch.dtype) -> tuple[float, float, float, float]:
    """f(0), f(1), f'(0), f'(1), computed by the eager code itself so both paths round alike."""
    o = torch.tensor([0.0, 1.0], dtype=dtype)
    f, fp = p.leak(o), p.leak_grad(o)
    return float(f[0]), float(f[1]), float(fp[0]), float(fp[1])


def forward(current: Tensor, p) -> tuple[Tensor, Tensor]:
    """Spikes and membrane ``[T, ...]`` of :func:`stbp.functional.lif` (no autograd here)."""
    _threads()
    x = current.detach().contiguous()
    flat = x.reshape(x.shape[0], -1)
    spikes = torch.empty_like(flat)
    mem = torch.empty_like(flat)
    np_dtype = np.float32 if x.dtype == torch.float32 else np.float64
    leak0, leak1, _, _ = _leak_values(p, x.dtype)
    # the threshold in the tensor's dtype and f(o) as the eager path rounds them
    _forward_kernel(
        flat.numpy(), np_dtype(p.threshold), np_dtype(leak0), np_dtype(leak1), spikes.numpy(),
        mem.numpy(),
    )
    return spikes.view(x.shape), mem.view(x.shape)


def backward(
    membrane: Tensor, grad_spikes: Tensor | None, grad_membrane: Tensor | None, p
) -> Tensor:
    """ε = ∂L/∂x for all t (E6–E7), from the saved membrane and the incoming gradients."""
    _threads()
    shape = membrane.shape
    mem = membrane.contiguous().reshape(shape[0], -1)
    empty = np.empty((0, 0), dtype=mem.numpy().dtype)

    def flat(g: Tensor | None) -> np.ndarray:
        if g is None:
            return empty
        return g.detach().to(mem.dtype).contiguous().reshape(mem.shape).numpy()

    eps = torch.empty_like(mem)
    np_dtype = np.float32 if mem.dtype == torch.float32 else np.float64
    leak0, leak1, lgrad0, lgrad1 = _leak_values(p, mem.dtype)
    _backward_kernel(
        mem.numpy(), flat(grad_spikes), flat(grad_membrane), grad_spikes is not None,
        grad_membrane is not None, np_dtype(p.threshold), SURROGATE_CODES[p.surrogate.name],
        float(p.surrogate.width), leak0, leak1, lgrad0, lgrad1, bool(p.temporal), eps.numpy(),
    )
    return eps.view(shape)
