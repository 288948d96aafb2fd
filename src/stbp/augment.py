"""Training-time data augmentation (not part of the paper; off by default in every preset)."""

from __future__ import annotations

import torch
from torch import Tensor

from stbp.errors import StbpError

__all__ = ["random_shift"]


def random_shift(
    images: Tensor, max_shift: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift]², zero-filled.

    Args:
        images: ``[B, C, H, W]``.
        max_shift: the largest shift in pixels (0 returns ``images`` unchanged).
        generator: a seeded :class:`torch.Generator` for reproducible shifts.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise StbpError(f"shift must be an integer >= 0, got {max_shift!r}")
    if images.dim() != 4:
        raise StbpError(f"random_shift expects images [B, C, H, W], got {tuple(images.shape)}")
    if max_shift == 0 or images.shape[0] == 0:
        return images
    b, _, h, w = images.shape
    s = max_shift
    padded = torch.nn.functional.pad(images, (s, s, s, s))
    off = torch.randint(0, 2 * s + 1, (2, b), generator=generator).to(images.device)
    rows = (off[0, :, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (off[1, :, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]
