"""Input encoding: turn intensities into spike trains of T steps."""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

from stbp.errors import StbpError
from stbp.kernels import bernoulli as bernoulli_kernel
from stbp.kernels.runtime import HAVE_NUMBA

__all__ = ["bernoulli", "direct", "encode", "ENCODINGS"]


def _check_steps(steps: int) -> int:
    try:
        n = operator.index(steps) if not isinstance(steps, bool) else None
    except TypeError:
        n = None
    if n is None or n < 1:
        raise StbpError(f"the number of time steps T must be an integer >= 1, got {steps!r}")
    return n


def _bernoulli_numba(x: Tensor, steps: int, generator: torch.Generator | None) -> Tensor:
    key = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return bernoulli_kernel.spikes(x, steps, key)


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
