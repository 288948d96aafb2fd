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


# ----------------------------------------------------------------------- rotation and scaling
def _centroid(img: torch.Tensor) -> torch.Tensor:
    h, w = img.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=img.dtype), torch.arange(w, dtype=img.dtype),
                            indexing="ij")
    m = img.sum()
    return torch.stack([(img * ys).sum() / m, (img * xs).sum() / m])


def test_affine_rotates_and_scales_digits_about_their_centre(mnist):
    """Real digits: values stay probabilities, the ink stays (small rotations, ±10 % size), a
    rotation keeps the ink's distance from the image centre, and every image gets its own
    draw; a pure rotation by 180° maximum turns a vertical bar in every direction."""
    from stbp.augment import random_affine

    images = mnist["train"].images[:64].unsqueeze(1).float() / 255
    out = random_affine(images, 10.0, 0.1, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    kept = out.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    assert 0.75 < kept.min() and kept.max() < 1.3
    assert not torch.equal(out, images)
    changed = (out - images).abs().sum(dim=(1, 2, 3))
    assert (changed > 0).all() and changed.std() > 0  # one draw per image
    bar = torch.zeros(200, 1, 21, 21)
    bar[:, :, 3:18, 10] = 1.0
    spun = random_affine(bar, 180.0, generator=torch.Generator().manual_seed(1))
    centre = torch.tensor([10.0, 10.0])
    for img in spun:  # a rotation about the centre: the bar's centroid stays there
        torch.testing.assert_close(_centroid(img[0]), centre, atol=0.05, rtol=0)
    vertical = spun[:, 0, :, 10].sum(1) / spun.sum(dim=(1, 2, 3))
    assert vertical.min() < 0.3 < 0.9 < vertical.max()  # some bars turned, some barely
    big = random_affine(bar[:50], 0.0, 0.5, generator=torch.Generator().manual_seed(2))
    length = (big[:, 0, :, 10] > 0.5).sum(1).float()
    assert length.min() < 13 and length.max() > 17  # 15 px long, scaled by 0.5 ... 1.5


def test_affine_seeded_identity_and_bad_values():
    from stbp.augment import random_affine

    x = torch.rand(5, 2, 8, 8)
    a = random_affine(x, 15, 0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, random_affine(x, 15, 0.2, generator=torch.Generator().manual_seed(0)))
    assert random_affine(x, 0, 0) is x
    for rotate, scale, message in ((-1, 0, "rotate"), (200, 0, "rotate"), (0, 1.0, "scale"),
                                   (float("nan"), 0, "rotate"), (True, 0, "rotate")):
        with pytest.raises(StbpError, match=message):
            random_affine(x, rotate, scale)
    with pytest.raises(StbpError, match="floating images"):
        random_affine(x.to(torch.uint8), 5)


def test_affine_settings_in_configs(mnist, mnist_dir):
    from stbp.config import load_config
    from stbp.data import load_mnist

    cfg = load_config("mnist-mlp", overrides=["data.rotate=10", "data.scale=0.1"])
    assert cfg["data"]["rotate"] == 10 and cfg["data"]["scale"] == 0.1
    assert load_config("mnist-mlp")["data"]["rotate"] == 0
    with pytest.raises(StbpError, match="scale"):
        load_config("mnist-mlp", overrides=["data.scale=1.5"])
    with pytest.raises(StbpError, match="rotate"):
        load_config("nmnist-mlp", overrides=["data.rotate=10"])
    split = load_mnist(mnist_dir)["train"]
    from stbp.data.splits import ImageSplit

    images = ImageSplit(split.images[:16], split.labels[:16])
    idx = torch.arange(16)
    x = images.inputs(idx, steps=5, rotate=10.0, scale=0.1,
                      generator=torch.Generator().manual_seed(0),
                      shift_generator=torch.Generator().manual_seed(1))
    plain = images.inputs(idx, steps=5, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.uint8 and x.shape == plain.shape and not torch.equal(x, plain)
