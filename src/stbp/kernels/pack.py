"""One-byte codes of spikes (and average-pooled spikes) saved for a backward: the check that a
float tensor is exactly representable as code / quantum, and the codes, in one pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, nb, threads

__all__ = ["pack", "BLOCK"]

BLOCK = 1 << 16  # values per task

if HAVE_NUMBA:

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _pack_kernel(x, quantum, codes, ok):  # pragma: no cover - compiled
        # branch-free, so that the loop vectorises (3x faster than stopping at the first
        # misfit: 0.6 against 2.0 ms for [30, 100, 784] float32 spikes, 2 threads); a value
        # that does not fit (not code / quantum, out of 0..255, NaN) clears its block's flag
        # and writes a 0 code, never an out-of-range conversion
        n = x.shape[0]
        q = x.dtype.type(quantum)
        zero, top = x.dtype.type(0), x.dtype.type(255)
        nblocks = (n + BLOCK - 1) // BLOCK
        for b in nb.prange(nblocks):
            good = True
            for j in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
                v = x[j]
                c = np.rint(v * q)
                fit = (c >= zero) & (c <= top) & (c / q == v)
                good &= fit
                codes[j] = np.uint8(c if fit else zero)
            ok[b] = good


def pack(x: Tensor, quantum: int) -> Tensor | None:
    """``uint8`` codes c with c / ``quantum`` == x for every value of the CPU float tensor ``x``
    (float32/64), or ``None`` if some value is not of that form."""
    flat = x.detach().contiguous().reshape(-1)
    codes = torch.empty(flat.shape, dtype=torch.uint8)
    if not flat.numel():
        return codes.view(x.shape)
    ok = np.zeros((flat.numel() + BLOCK - 1) // BLOCK, np.uint8)
    with threads():
        _pack_kernel(flat.numpy(), quantum, codes.numpy(), ok)
    return codes.view(x.shape) if ok.all() else None
