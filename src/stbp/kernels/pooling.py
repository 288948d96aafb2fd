"""k×k average pooling (stride k) of spikes held as bytes, and the spread of its gradient.

:func:`window_sums` sums each k×k window of byte planes (the pooled value is the sum / k², as
``F.avg_pool2d`` divides); :func:`spread_add` adds a pooled gradient, / k², to every position
of its window — the gradient of the pooling, made a few samples at a time by
:class:`stbp.functional.pool.PoolTerm` inside a neuron's backward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, nb, threads

__all__ = ["window_sums", "spread_add"]

if HAVE_NUMBA:

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _window_sums(codes, k, sums):  # pragma: no cover - compiled
        # sums[p, i, j] = Σ of the k×k window (i, j) of byte plane p (windows at stride k)
        planes, ho, wo = sums.shape
        for p in nb.prange(planes):
            plane = codes[p]
            for i in range(ho):
                so = sums[p, i]
                so[:] = 0
                for dy in range(k):
                    row = plane[i * k + dy]
                    for j in range(wo):
                        s = 0
                        for dx in range(k):
                            s += row[j * k + dx]
                        so[j] += s

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _spread_add(g, k, out, write):  # pragma: no cover - compiled
        # out[p, y, x] += g[p // P, p % P, y // k, x // k] / k² for the positions windows cover
        # (g [A, P, Ho, Wo], any strides: a slice of samples is read in place); a row of shares
        # made once per pooled row and added to the k rows of its windows; ``write``: out is
        # zeroed first (each plane by its own thread)
        outer, per, ho, wo = g.shape
        kk = out.dtype.type(k * k)
        for p in nb.prange(outer * per):
            if write:
                out[p] = 0
            gq = g[p // per, p % per]
            share = np.empty(wo * k, out.dtype)
            for yo in range(ho):
                gp = gq[yo]
                for xo in range(wo):
                    v = gp[xo] / kk  # divided, as the pooling's backward does
                    for dx in range(k):
                        share[xo * k + dx] = v
                for dy in range(k):
                    row = out[p, yo * k + dy]
                    for x in range(wo * k):
                        row[x] += share[x]


def window_sums(codes: Tensor, k: int) -> Tensor:
    """``uint8`` sums of the k×k windows (stride k) of ``codes`` ``[..., H, W]`` (0/1 bytes,
    k² <= 255): ``[..., H // k, W // k]``."""
    h, w = codes.shape[-2:]
    planes = codes.reshape(-1, h, w).contiguous()
    sums = torch.empty((planes.shape[0], h // k, w // k), dtype=torch.uint8)
    with threads():
        _window_sums(planes.numpy(), k, sums.numpy())
    return sums.view(*codes.shape[:-2], h // k, w // k)


def spread_add(grad: Tensor, k: int, out: Tensor, *, write: bool = False) -> None:
    """``out`` ``[..., H, W]`` (contiguous) += the gradient of a k×k average pooling (stride
    k) whose output gradient is ``grad`` ``[..., H // k, W // k]``; ``write=True``: ``out`` =
    that gradient (zero where no window reaches)."""
    h, w = out.shape[-2:]
    if grad.numel() == 0:
        if write:
            out.zero_()
        return
    # [A, P, H // k, W // k]: a view for a slice of samples [T, b0:b1, ...] of a gradient
    # [T, B, ...] (no copy of it), whatever its strides
    g = grad.to(out.dtype).reshape(grad.shape[0] if grad.dim() > 2 else 1, -1, h // k, w // k)
    with threads():
        _spread_add(g.numpy(), k, out.view(-1, h, w).numpy(), write)
