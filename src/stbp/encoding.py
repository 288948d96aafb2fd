"""Input encoding: turn intensities into spike trains of T steps."""

from __future__ import annotations

import torch
from torch import Tensor

from stbp.errors import StbpError

__all__ = ["bernoulli", "direct", "encode", "ENCODINGS"]


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise StbpError(f"the number of time steps T must be an integer >= 1, got {steps!r}")
    return steps


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
    """
    steps = _check_steps(steps)
    if not x.is_floating_point():
        raise StbpError(f"bernoulli encoding needs floating intensities in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise StbpError(
            f"bernoulli encoding needs intensities in [0, 1], got range [{x.min():g}, {x.max():g}]"
        )
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
