"""Your own image folders as datasets (stbp.data.folder, --dataset folder:PATH)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from stbp.cli import main
from stbp.config import load_config, resolve_dataset, validate
from stbp.data.folder import list_classes, load_folder, read_image
from stbp.data.splits import load_splits
from stbp.errors import StbpError
from stbp.train import build_model


def _save(path, array, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _pool(root, per_class=10, classes=("a", "b"), size=(12, 9)):
    rng = np.random.default_rng(0)
    for c in classes:
        for i in range(per_class):
            _save(root / c / f"{i:03d}.png", rng.integers(0, 256, size[::-1], dtype=np.uint8))


def test_read_image_gray_rgb_resize(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    _save(tmp_path / "r.png", rgb)
    _save(tmp_path / "r.jpg", rgb, "JPEG")
    x = read_image(tmp_path / "r.png", color="rgb")
    assert x.shape == (3, 6, 8) and x.dtype == np.uint8 and (x[0] == 255).all() and (x[1:] == 0).all()
    g = read_image(tmp_path / "r.png", size=4)
    assert g.shape == (1, 4, 4) and (g == 76).all()  # ITU-R 601 luma of pure red, as Pillow's "L"
    j = read_image(tmp_path / "r.jpg", size=5, color="rgb")
    assert j.shape == (3, 5, 5) and j[0].min() > 200


@pytest.mark.parametrize("content,message", [
    (b"", "empty file (0 bytes)"),
    (b"not an image at all", "unreadable or not a PNG/JPEG image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "unreadable or not a PNG/JPEG image"),
])
def test_read_image_bad_files(tmp_path, content, message):
    f = tmp_path / "bad.png"
    f.write_bytes(content)
    with pytest.raises(StbpError, match=re.escape(message)) as info:
        read_image(f)
    assert "bad.png" in str(info.value)
    with pytest.raises(StbpError, match="no such file|cannot read"):
        read_image(tmp_path / "missing.png")


def test_read_image_rejects_other_formats_and_zero_size(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "x.png", format="BMP")  # a BMP named .png
    with pytest.raises(StbpError, match="a BMP file; expected PNG or JPEG"):
        read_image(tmp_path / "x.png")
    # a PNG whose header declares a 0x5 image (Pillow refuses it; either way a clear error)
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    (tmp_path / "zero.png").write_bytes(data)
    with pytest.raises(StbpError, match="zero.png: (zero size|unreadable)"):
        read_image(tmp_path / "zero.png")


def test_pool_layout_splits_are_seeded_disjoint_and_complete(tmp_path):
    _pool(tmp_path, per_class=10)
    splits, classes = load_folder(tmp_path, size=8, validation=0.25, test=0.2)
    assert classes == ["a", "b"]
    sizes = {k: len(v[1]) for k, v in splits.items()}
    assert sizes == {"train": 12, "val": 4, "test": 4}
    assert splits["train"][0].shape == (12, 1, 8, 8) and splits["train"][0].dtype == torch.uint8
    rows = [tuple(x.flatten().tolist()) for k in splits for x in splits[k][0]]
    assert len(set(rows)) == 20, "every image in exactly one split"
    again, _ = load_folder(tmp_path, size=8, validation=0.25, test=0.2)
    other, _ = load_folder(tmp_path, size=8, validation=0.25, test=0.2, split_seed=1)
    assert torch.equal(again["test"][0], splits["test"][0])
    assert not torch.equal(other["test"][0], splits["test"][0])
    # classes in a chosen order → labels follow it
    swapped, names = load_folder(tmp_path, size=8, classes=["b", "a"], validation=2, test=2)
    assert names == ["b", "a"] and len(swapped["val"][1]) == 2


def test_split_layout_and_bad_folders(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _pool(tmp_path / "ok" / split, per_class=n, classes=("object", "background"))
    splits, classes = load_folder(tmp_path / "ok", size=10, color="rgb")
    assert classes == ["background", "object"]
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 12, "val": 4, "test": 6}
    assert splits["val"][0].shape[1] == 3

    (tmp_path / "empty").mkdir()
    _pool(tmp_path / "single", classes=("only",))
    _pool(tmp_path / "hollow")
    (tmp_path / "hollow" / "c").mkdir()  # a class folder with no images
    _pool(tmp_path / "gap" / "train")
    _pool(tmp_path / "gap" / "test", classes=("a",))
    _pool(tmp_path / "half" / "train")
    (tmp_path / "file.png").write_bytes(b"x")
    _pool(tmp_path / "broken")
    (tmp_path / "broken" / "b" / "999.png").write_bytes(b"")
    cases = [
        ("empty", "no class subfolders"),
        ("single", "only one class (only)"),
        ("hollow", "hollow/c: no PNG/JPEG images"),
        ("gap", "gap/test/b: no such class folder"),
        ("half", "has train/ but no test/"),
        ("file.png", "not a directory"),
        ("nothing", "no such directory"),
        ("broken", "999.png: empty file"),
    ]
    for name, message in cases:
        with pytest.raises(StbpError, match=re.escape(message)):
            load_folder(tmp_path / name, size=8)
    with pytest.raises(StbpError, match="no class subfolder\\(s\\) zebra"):
        list_classes(tmp_path / "ok", ["object", "zebra"])
    with pytest.raises(StbpError, match="test = 0.01 leaves 12 of the 12 images"):
        load_folder(tmp_path / "ok" / "train", size=8, test=0.01)


def test_config_and_dataset_shortcut(tmp_path):
    _pool(tmp_path / "imgs", per_class=10, classes=("cat", "dog", "eel"))
    cfg = load_config("mnist-cnn", dataset=f"folder:{tmp_path / 'imgs'}",
                      overrides=["data.size=16", "data.color='rgb'"])
    assert cfg["data"]["dataset"] == "folder" and cfg["data"]["validation"] == 0.1
    assert "classes" not in cfg["data"]
    resolved = resolve_dataset(cfg)
    assert resolved["data"]["classes"] == ["cat", "dog", "eel"]
    model = build_model(resolved)
    out = model(torch.zeros(2, 3, 3, 16, 16))
    assert out.shape == (2, 3, 3)
    splits, folder = load_splits(resolved)
    assert splits["train"].inputs(torch.arange(2), steps=4).shape == (4, 2, 3, 16, 16)
    with pytest.raises(StbpError, match="must end with 3, the number of folder classes"):
        resolve_dataset(load_config("mnist-mlp", dataset=f"folder:{tmp_path / 'imgs'}"))
    with pytest.raises(StbpError, match="must start with 256"):
        load_config("mnist-mlp", dataset="folder:x", overrides=["data.size=16"])
    with pytest.raises(StbpError, match="needs \\[data\\] path"):
        load_config("mnist-cnn", overrides=["data.dataset='folder'"])
    with pytest.raises(StbpError, match="expected mnist, nmnist or folder:PATH"):
        load_config("mnist-cnn", dataset="folder")
    with pytest.raises(StbpError, match="size do\\(es\\) not apply to dataset = 'mnist'"):
        load_config("mnist-cnn", overrides=["data.size=16"])
    with pytest.raises(StbpError, match="color = 'cmyk' is invalid"):
        load_config("detect-cnn", overrides=["data.color='cmyk'"])
    # nmnist's own keys are dropped when --dataset switches to a folder; events do not fit images
    with pytest.raises(StbpError, match="kind = 'events' does not fit dataset = 'folder'"):
        load_config("nmnist-cnn", dataset="folder:x")
    assert validate(resolved, "again") == resolved


def test_cli_trains_on_a_folder_of_real_digits(mnist, tmp_path, capsys, monkeypatch):
    """Real MNIST 0s and 1s written as PNG class folders train a spiking MLP to > 95 %."""
    monkeypatch.chdir(tmp_path)
    images, labels = mnist["train"].images, mnist["train"].labels
    for digit, name in ((0, "zero"), (1, "one")):
        for i in torch.nonzero(labels == digit).flatten()[:150].tolist():
            _save(tmp_path / "digits" / name / f"{i}.png", images[i].numpy())
    argv = ["train", "--preset", "mnist-mlp", "--dataset", "folder:digits", "--epochs", "3",
            "--set", "model.sizes=[784, 100, 2]", "--set", "encoding.steps=8",
            "--set", "train.batch_size=20", "--set", "neuron.backend=torch", "--out", "run", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_size"] == 60 and summary["val_size"] == 24 and summary["train_size"] == 216
    assert summary["test_acc"] > 95
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'classes = ["one", "zero"]' in saved and str(tmp_path / "digits") in saved
    assert main(["eval", "--run", "run"]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
    # resuming keeps the resolved dataset; the same --dataset is not a difference
    assert main(argv[:-3] + ["--epochs", "4", "--out", "run", "--resume", "--no-progress"]) == 2
    assert "train.epochs = 4 differs" in capsys.readouterr().err
