"""The MNIST scene benchmark (stbp.data.scenes, `stbp scenes`) on real digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stbp.cli import main
from stbp.data.folder import load_folder
from stbp.data.scenes import (
    SceneSpec,
    box_iou,
    crop_resize,
    load_scenes,
    make_split,
    sample_windows,
    write_benchmark,
)
from stbp.errors import StbpError


def _pool(mnist, split="test", n=500):
    return mnist[split].images[:n].numpy(), mnist[split].labels[:n].numpy()


def test_box_iou_and_crop_resize():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]])
    iou = box_iou(a, a)
    assert np.allclose(np.diag(iou), 1) and np.isclose(iou[0, 1], 25 / 175)
    assert box_iou(a, [[20, 20, 30, 30]]).max() == 0
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    same = crop_resize(img, [[2, 3, 6, 7]], 4)
    assert same.shape == (1, 4, 4) and torch.equal(same[0], torch.from_numpy(img[3:7, 2:6]))
    flat = crop_resize(np.full((3, 9, 9), 200, np.uint8), [[0, 0, 9, 9], [1, 1, 4, 4]], 6)
    assert flat.shape == (2, 3, 6, 6) and (flat == 200).all()


def test_scenes_are_deterministic_real_digits_in_their_boxes(mnist):
    pool, labels = _pool(mnist)
    spec = SceneSpec()
    a = make_split(pool, labels, 6, seed=3, split="test", spec=spec)
    b = make_split(pool, labels, 6, seed=3, split="test", spec=spec)
    c = make_split(pool, labels, 6, seed=4, split="test", spec=spec)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
               for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))
    n_boxes = 0
    for sc in a:
        assert sc.image.shape == (96, 96) and sc.image.dtype == np.uint8
        assert spec.digits[0] <= len(sc.boxes) <= spec.digits[1]
        sides = sc.boxes[:, 2] - sc.boxes[:, 0]
        assert (sides == sc.boxes[:, 3] - sc.boxes[:, 1]).all(), "square boxes"
        assert ((sides >= 24) & (sides <= 40)).all() and (sc.boxes >= 0).all() and (sc.boxes <= 96).all()
        off = box_iou(sc.boxes, sc.boxes) - np.eye(len(sc.boxes))
        assert off.max() <= spec.max_overlap
        # each box holds its source digit: the crop scaled back to 28x28 matches the MNIST image
        crops = crop_resize(sc.image, sc.boxes, 28).numpy().astype(float)
        for crop, src, digit in zip(crops, sc.sources, sc.digits, strict=True):
            assert labels[src] == digit
            r = np.corrcoef(crop.ravel(), pool[src].astype(float).ravel())[0, 1]
            assert r > 0.8, f"box does not hold digit {src} (r = {r:.2f})"
        n_boxes += len(sc.boxes)
    assert n_boxes >= 12


def test_windows_follow_the_iou_rules(mnist):
    pool, labels = _pool(mnist)
    spec = SceneSpec()
    rng = np.random.default_rng(0)
    for sc in make_split(pool, labels, 5, seed=0, split="val", spec=spec):
        pos, neg = sample_windows(sc, rng, spec)
        assert len(pos) == spec.positives_per_digit * len(sc.boxes) and len(neg) == len(pos)
        assert (box_iou(pos, sc.boxes).max(axis=1) >= spec.positive_iou).all()
        assert (box_iou(neg, sc.boxes).max(axis=1) < spec.negative_iou).all()
        for w in (pos, neg):
            assert (w[:, 0] >= 0).all() and (w[:, 2] <= 96).all() and (w[:, 1] >= 0).all()
            assert (w[:, 3] <= 96).all() and (w[:, 2] - w[:, 0] == w[:, 3] - w[:, 1]).all()


def test_cli_scenes_writes_a_benchmark_with_disjoint_digit_sources(mnist_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["scenes", "--out", str(out), "--seed", "5", "--train", "6", "--val", "3", "--test", "4",
            "--data-dir", str(mnist_dir)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["test"]["mnist_part"] == "test"
    assert summary["splits"]["val"]["mnist_range"] == [55000, 60000]
    assert not (tmp_path / "bench.part").exists()
    for split, (lo, hi) in {"train": (0, 55000), "val": (55000, 60000), "test": (0, 10000)}.items():
        scenes = load_scenes(out / "scenes" / split)
        assert len(scenes) == summary["splits"][split]["scenes"]
        assert all(lo <= i < hi for s in scenes for i in s["mnist_index"])
        assert all(s["image"].is_file() for s in scenes)
    splits, classes = load_folder(out / "windows", size=28)
    assert classes == ["background", "object"]
    assert len(splits["test"][1]) == summary["splits"]["test"]["object_windows"] * 2
    # the same seed gives the same files
    again = tmp_path / "again"
    assert main(argv[:2] + [str(again)] + argv[3:]) == 0
    capsys.readouterr()
    for f in ("scenes/test/00002.png", "scenes/val/boxes.json", "windows/train/object/00001-00.png"):
        assert (out / f).read_bytes() == (again / f).read_bytes()
    assert main(argv) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    (None, "no boxes.json"),
    ("{", "unreadable"),
    ('{"scenes": 3}', "a 'scenes' list"),
    ('{"scenes": [{"image": "a.png", "boxes": [[0, 0, 0, 5]]}]}', "scene 0 must be"),
    ('{"scenes": [{"image": "../a.png", "boxes": []}]}', "plain file name"),
    ('{"scenes": [{"image": "a.png", "boxes": [[0, 0, 5, 5.5]]}]}', "integer boxes"),
])
def test_load_scenes_bad_ground_truth(tmp_path, text, message):
    if text is not None:
        (tmp_path / "boxes.json").write_text(text)
    with pytest.raises(StbpError, match=message):
        load_scenes(tmp_path)


def test_load_scenes_names_the_split_folders_of_a_parent(tmp_path):
    """`--scenes bench/scenes` (the parent of the splits): the error names the split folders."""
    for split in ("test", "val"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "boxes.json").write_text('{"scenes": []}')
    with pytest.raises(StbpError, match=r"no boxes.json; it holds the split folders test, val: give one"):
        load_scenes(tmp_path)


def test_bad_benchmark_settings(mnist, tmp_path):
    with pytest.raises(StbpError, match="scene count test = 0"):
        write_benchmark(tmp_path / "b", mnist, counts={"test": 0})
    with pytest.raises(StbpError, match="digit scale"):
        write_benchmark(tmp_path / "b", mnist, spec=SceneSpec(scale=(30, 100)))
