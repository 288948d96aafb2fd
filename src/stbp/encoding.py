"""Input encoding: turn intensities into spike trains of T steps."""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
from torch import Tensor

from stbp.errors import StbpError
from stbp.functional.lif_numba import HAVE_NUMBA, _threads, nb

__all__ = ["bernoulli", "direct", "encode", "ENCODINGS"]


def _check_steps(steps: int) -> int:
    try:
        n = operator.index(steps) if not isinstance(steps, bool) else None
    except TypeError:
        n = None
    if n is None or n < 1:
        raise StbpError(f"the number of time steps T must be an integer >= 1, got {steps!r}")
    return n


_CHUNK = 1 << 14  # inputs per task of the spike kernel

if HAVE_NUMBA:
    _GOLDEN = np.uint64(0x9E3779B97F4A7C15)
    _MIX1 = np.uint64(0xBF58476D1CE4E5B9)
    _MIX2 = np.uint64(0x94D049BB133111EB)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _bernoulli_kernel(p, key, out):  # pragma: no cover - compiled
        # out[t, i] = 1 if u < p[i], u = the (t·n + i + 1)-th SplitMix64 output of `key` as a
        # 53-bit uniform in [0, 1): a counter-based draw, the same whatever the thread count
        steps, n = out.shape
        chunks = (n + _CHUNK - 1) // _CHUNK
        for task in nb.prange(steps * chunks):
            t = task // chunks
            lo = (task % chunks) * _CHUNK
            for i in range(lo, min(n, lo + _CHUNK)):
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


def _bernoulli_numba(x: Tensor, steps: int, generator: torch.Generator | None) -> Tensor:
    key = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    p = x.detach().reshape(-1).contiguous()
    out = torch.empty((steps, p.numel()), dtype=torch.uint8)
    if p.numel():
        _threads()
        _bernoulli_kernel(p.numpy(), np.uint64(key), out.numpy())
    return out.view(steps, *x.shape)


def bernoulli(
    x: Tensor,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Rate coding (paper Sec. 3.1): at each step each input spikes with probability = its value.

    Args:
        x: intensities in [0, 1], any shape ``[B, ...]``.
        steps: T.
        generator: a seeded :class:`torch.Generator` for reproducible spike trains.
        dtype: of the result (default: that of ``x``). ``torch.uint8`` gives spikes as one byte
            each, which stbp's layers take directly (a quarter of float32's memory); the same
            spikes either way.

    Returns:
        A 0/1 tensor ``[T, B, ...]``.

    On a CPU (with numba) the uniforms come from a counter-based generator — SplitMix64 keyed
    by one draw from ``generator``, indexed by (t, input) — in a parallel kernel that skips
    inputs of intensity 0 or 1: the spikes depend on the seed alone, not on the number of
    threads or the input's floating dtype (half precision is compared in float32). On a GPU
    they come from ``torch.rand`` (a different stream for the same seed).
    """
    steps = _check_steps(steps)
    if not x.is_floating_point():
        raise StbpError(f"bernoulli encoding needs floating intensities in [0, 1], got {x.dtype}")
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates into both
        if math.isnan(lo) or math.isnan(hi):
            raise StbpError("bernoulli encoding needs intensities in [0, 1], got NaN")
        if lo < 0 or hi > 1:
            raise StbpError(
                f"bernoulli encoding needs intensities in [0, 1], got range [{lo:g}, {hi:g}]")
    if HAVE_NUMBA and x.device.type == "cpu":
        p = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return _bernoulli_numba(p, steps, generator).to(dtype or x.dtype)
    noise = torch.rand((steps, *x.shape), generator=generator, dtype=x.dtype, device=x.device)
    return (noise < x).to(dtype or x.dtype)


def direct(x: Tensor, steps: int) -> Tensor:
    """Analog ("direct") input: the same intensities at every step, ``[T, B, ...]``.

    The result is a view with stride 0 along T; the first synaptic layer sees that and computes
    its current once instead of T times (:mod:`stbp.layers`).
    """
    steps = _check_steps(steps)
    return x.unsqueeze(0).expand(steps, *x.shape)


ENCODINGS = ("bernoulli", "direct")


def encode(
    kind: str, x: Tensor, steps: int, *, generator: torch.Generator | None = None,
    spike_dtype: torch.dtype | None = None,
) -> Tensor:
    """Encode intensities ``[B, ...]`` as ``[T, B, ...]`` input by name ("bernoulli" or "direct");
    ``spike_dtype`` is the dtype of Bernoulli spikes (e.g. ``torch.uint8``)."""
    if kind == "bernoulli":
        return bernoulli(x, steps, generator=generator, dtype=spike_dtype)
    if kind == "direct":
        return direct(x, steps)
    raise StbpError(f"unknown encoding {kind!r}; choose one of: {', '.join(ENCODINGS)}")
