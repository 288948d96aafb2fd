"""Seeded random streams: every random draw of a run comes from a generator seeded by a tuple
such as (seed, epoch, stream), so a resumed run draws what an uninterrupted one would.

- :func:`generator` — a ``torch.Generator`` seeded by a tuple of integers;
- :data:`EVAL_SEED` — the first part of the seed of the validation / test spike trains: they are
  the same in every epoch and every run of a seed (``generator(EVAL_SEED, seed)``).
"""

from __future__ import annotations

import torch

__all__ = ["EVAL_SEED", "generator", "seed_of"]

#: spike trains for validation and test are fixed across epochs and runs of a seed
EVAL_SEED = 2_000_003


def seed_of(*parts: int) -> int:
    """One 63-bit seed from a tuple of integers (a polynomial hash; order matters)."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return seed


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`seed_of` ``(*parts)``."""
    return torch.Generator().manual_seed(seed_of(*parts))
