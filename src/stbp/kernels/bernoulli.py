"""The Bernoulli encoder's CPU kernel: counter-based SplitMix64 draws, one per (t, input).

out[t, i] = 1 if u < p[i], u the (t·n + i + 1)-th SplitMix64 output of a key as a 53-bit
uniform in [0, 1): the spikes depend on the key alone, not on the thread count; inputs of
intensity 0 or 1 take no draw.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, nb, threads

__all__ = ["spikes", "CHUNK"]

CHUNK = 1 << 14  # inputs per task of the spike kernel

if HAVE_NUMBA:
    _GOLDEN = np.uint64(0x9E3779B97F4A7C15)
    _MIX1 = np.uint64(0xBF58476D1CE4E5B9)
    _MIX2 = np.uint64(0x94D049BB133111EB)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _bernoulli_kernel(p, key, out):  # pragma: no cover - compiled
        # out[t, i] = 1 if u < p[i], u = the (t·n + i + 1)-th SplitMix64 output of `key` as a
        # 53-bit uniform in [0, 1): a counter-based draw, the same whatever the thread count
        steps, n = out.shape
        chunks = (n + CHUNK - 1) // CHUNK
        for task in nb.prange(steps * chunks):
            t = task // chunks
            lo = (task % chunks) * CHUNK
            for i in range(lo, min(n, lo + CHUNK)):
                q = p[i]
                if q <= 0:
                    out[t, i] = 0
                elif q >= 1:
                    out[t, i] = 1
                else:
                    z = key + np.uint64(t * n + i + 1) * _GOLDEN
                    z = (z ^ (z >> np.uint64(30))) * _MIX1
                    z = (z ^ (z >> np.uint64(27))) * _MIX2
                    z = z ^ (z >> np.uint64(31))
                    u = np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)
                    out[t, i] = 1 if u < q else 0


def spikes(p: Tensor, steps: int, key: int) -> Tensor:
    """``uint8`` spikes ``[T, *p.shape]`` of the CPU intensities ``p`` (float32/64) for ``key``."""
    flat = p.detach().reshape(-1).contiguous()
    out = torch.empty((steps, flat.numel()), dtype=torch.uint8)
    if flat.numel():
        with threads():
            _bernoulli_kernel(flat.numpy(), np.uint64(key), out.numpy())
    return out.view(steps, *p.shape)
