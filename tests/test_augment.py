"""Random-shift augmentation: each image is one zero-filled translation of itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stbp.augment import random_shift
from stbp.errors import StbpError


def _all_shifts(img: torch.Tensor, s: int) -> list[torch.Tensor]:
    padded = F.pad(img, (s, s, s, s))
    h, w = img.shape[-2:]
    return [padded[..., dy:dy + h, dx:dx + w] for dy in range(2 * s + 1) for dx in range(2 * s + 1)]


def test_each_image_is_a_translation(mnist):
    images = mnist["train"].images[:64].unsqueeze(1).float() / 255
    out = random_shift(images, 2, generator=torch.Generator().manual_seed(3))
    assert out.shape == images.shape
    used = set()
    for img, got in zip(images, out, strict=True):
        matches = [k for k, cand in enumerate(_all_shifts(img, 2)) if torch.equal(cand, got)]
        assert matches, "an output image is not a translation of its input"
        used.update(matches)
    assert len(used) > 10, "64 images should use many of the 25 offsets"
    # MNIST digits sit in the middle: a 2-pixel shift keeps almost all of the ink
    kept = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert kept.min() > 0.9


def test_seeded_and_identity():
    x = torch.rand(5, 2, 8, 8)
    a = random_shift(x, 1, generator=torch.Generator().manual_seed(0))
    b = random_shift(x, 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert random_shift(x, 0) is x
    assert random_shift(torch.rand(0, 1, 4, 4), 2).shape == (0, 1, 4, 4)


@pytest.mark.parametrize("shift,shape,message", [
    (-1, (2, 1, 4, 4), "shift must be an integer >= 0"),
    (1.5, (2, 1, 4, 4), "shift must be an integer >= 0"),
    (1, (2, 4, 4), "expects images \\[B, C, H, W\\]"),
])
def test_bad_input(shift, shape, message):
    with pytest.raises(StbpError, match=message):
        random_shift(torch.rand(shape), shift)
