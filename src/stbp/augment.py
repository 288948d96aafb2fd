"""Training-time data augmentation (not part of the paper; off by default in every preset)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stbp.errors import StbpError

__all__ = ["random_shift", "random_affine"]


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


def random_affine(
    images: Tensor, rotate: float = 0.0, scale: float = 0.0, *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rotate each image about its centre by its own random angle in [-rotate, rotate] degrees
    and scale it by its own random factor in [1 - scale, 1 + scale]; bilinear, zero-filled.

    Values stay within the range of the input (each output pixel is a convex combination of
    input pixels and zeros), so intensities in [0, 1] remain firing probabilities.

    Args:
        images: floating ``[B, C, H, W]``.
        rotate: the largest rotation in degrees, in [0, 180] (0: none).
        scale: the largest relative change of size, in [0, 1) (0: none).
        generator: a seeded :class:`torch.Generator` for reproducible draws.
    """
    for name, v, ok in (("rotate", rotate, lambda v: 0 <= v <= 180),
                        ("scale", scale, lambda v: 0 <= v < 1)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not ok(v):
            raise StbpError(f"{name} must be a number in {'[0, 180]' if name == 'rotate' else '[0, 1)'}"
                            f", got {v!r}")
    if images.dim() != 4 or not images.is_floating_point():
        raise StbpError(f"random_affine expects floating images [B, C, H, W], got "
                        f"{tuple(images.shape)} {images.dtype}")
    if (rotate == 0 and scale == 0) or images.shape[0] == 0:
        return images
    b = images.shape[0]
    u = torch.rand(2, b, generator=generator, dtype=torch.float64) * 2 - 1
    angle = u[0] * math.radians(rotate)
    size = 1 + u[1] * scale
    # the sampling grid maps output to input coordinates: the inverse rotation and scale
    cos, sin = torch.cos(angle) / size, torch.sin(angle) / size
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype).to(images.device), list(images.shape),
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
