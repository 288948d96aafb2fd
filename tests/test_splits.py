"""What the trainer feeds a network (stbp.data.splits), and training on real N-MNIST recordings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from stbp.cli import main
from stbp.config import load_config
from stbp.data.splits import FrameSplit, ImageSplit, load_splits, validation_count
from stbp.errors import StbpError
from stbp.models import build
from stbp.train import build_model


@pytest.fixture(scope="session")
def nmnist_small() -> Path:
    root = os.environ.get("STBP_DATA")
    folder = Path(root) / "nmnist-small" if root else None
    if folder is None or not (folder / "Train").is_dir() or not (folder / "Test").is_dir():
        pytest.skip("the real N-MNIST subset is absent: set STBP_DATA to a folder holding "
                    "nmnist-small/Train and nmnist-small/Test, recordings in N-MNIST's layout")
    return folder


def test_validation_count():
    assert validation_count(5000, 60000, "x") == 5000
    assert validation_count(0.1, 1000, "x") == 100
    for bad in (1000, 0.0001):
        with pytest.raises(StbpError, match="validation"):
            validation_count(bad, 1000, "folder X")


def test_image_split_inputs():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    split = ImageSplit(images, torch.arange(6))
    x = split.inputs(torch.tensor([1, 4]), steps=5, kind="direct")
    assert x.shape == (5, 2, 1, 28, 28)
    assert torch.equal(x[3, 1, 0], images[4].float() / 255)
    bern = split.inputs(torch.tensor([0]), steps=7, generator=torch.Generator().manual_seed(0))
    assert bern.shape == (7, 1, 1, 28, 28) and set(bern.unique().tolist()) <= {0.0, 1.0}
    assert len(split.subset(3)) == 3 and split.subset(None) is split


def test_frame_split_inputs_and_shift():
    frames = torch.zeros(3, 4, 2, 34, 34, dtype=torch.uint8)
    frames[1, :, 0, 10, 20] = 1  # one pixel on in every bin of recording 1
    split = FrameSplit(frames, torch.tensor([0, 1, 2]))
    x = split.inputs(torch.tensor([1, 2]), steps=4)
    assert x.shape == (4, 2, 2, 34, 34) and x.dtype == torch.uint8  # event counts as bytes
    assert torch.equal(x[:, 0], frames[1])
    moved = split.inputs(torch.tensor([1]), steps=4, shift=3,
                         shift_generator=torch.Generator().manual_seed(1))
    where = [torch.nonzero(moved[t, 0, 0]).tolist() for t in range(4)]
    assert all(w == where[0] and len(w) == 1 for w in where), "one offset for the whole recording"
    with pytest.raises(StbpError, match="4 time bins, but T = 30"):
        split.inputs(torch.tensor([0]), steps=30)
    with pytest.raises(StbpError, match="does not apply to event frames"):
        split.inputs(torch.tensor([0]), steps=4, kind="bernoulli")


def test_mnist_validation_as_a_fraction(mnist_dir):
    cfg = load_config("mnist-mlp", overrides=["data.validation=0.1"])
    splits, folder = load_splits(cfg, mnist_dir)
    assert folder == mnist_dir
    assert [len(splits[k]) for k in ("train", "val", "test")] == [54000, 6000, 10000]
    default, _ = load_splits(load_config("mnist-mlp"), mnist_dir)
    assert torch.equal(default["val"].images, splits["val"].images[1000:])  # the last 5,000


def test_nmnist_splits_follow_the_sample_index(nmnist_small):
    from stbp.data.nmnist import list_recordings

    cfg = load_config("nmnist-mlp")
    splits, folder = load_splits(cfg, nmnist_small)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [900, 100, 100]
    assert splits["train"].unpacked(torch.arange(3)).shape == (3, 30, 2, 34, 34)
    assert splits["train"].frames.shape == (900, 30 * 2312 // 8)  # binary frames kept as bits
    # the same frames as load_frames gives unpacked, in sample-index order
    from stbp.data.nmnist import load_frames

    frames, _ = load_frames(folder, "test", steps=30)
    order = sorted(range(100), key=lambda i: Path(list_recordings(folder, "test")[i][0]).stem)
    x = splits["test"].inputs(torch.arange(100), steps=30)
    assert x.dtype == torch.uint8 and torch.equal(x, frames[order].transpose(0, 1))
    counts, _ = load_splits(load_config("nmnist-mlp", overrides=["data.frames='count'"]), folder)
    assert counts["test"].shape is None and counts["test"].frames.shape == (100, 30, 2, 34, 34)
    assert torch.equal(counts["test"].inputs(torch.arange(100), steps=30).clamp(max=1), x)
    # validation = the recordings 00901-01000, whatever their class folders
    names = {Path(n).stem: lab for n, lab in list_recordings(folder, "train")}
    want = torch.tensor([names[f"{i:05d}"] for i in range(901, 1001)])
    assert torch.equal(splits["val"].labels, want)
    assert len(set(splits["val"].labels.tolist())) == 10
    assert torch.equal(torch.bincount(splits["test"].labels, minlength=10),
                       torch.tensor([8, 14, 8, 11, 14, 7, 10, 15, 2, 11]))  # data README
    # the paper's N-MNIST MLP and our CNN take these frames
    x = splits["val"].inputs(torch.arange(4), steps=30)
    assert build_model(cfg)(x).shape == (30, 4, 10)
    cnn = build_model(load_config("nmnist-cnn"))
    assert cnn(x).shape == (30, 4, 10)
    too_many = load_config("nmnist-mlp", overrides=["data.validation=1000"])
    with pytest.raises(StbpError, match="leaves 0 of the 1000 training samples"):
        load_splits(too_many, nmnist_small)


def test_cli_trains_on_real_nmnist(nmnist_small, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--preset", "nmnist-mlp", "--data-dir", str(nmnist_small),
               "--set", "model.sizes=[2312, 200, 10]", "--epochs", "3", "--seed", "0",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["train_size"], summary["val_size"], summary["test_size"]) == (900, 100, 100)
    # chance is 10 %; three epochs over 900 recordings reach about 70 %
    assert summary["best_val_acc"] > 40, "an STBP MLP must learn from 900 real N-MNIST recordings"
    capsys.readouterr()
    assert main(["eval", "--run", str(out)]) == 0  # finds the data the run was trained on
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]


def test_cli_nmnist_bad_data_dir(mnist_dir, capsys):
    assert main(["train", "--preset", "nmnist-mlp", "--data-dir", str(mnist_dir)]) == 2
    err = capsys.readouterr().err
    assert str(mnist_dir) in err and "Traceback" not in err


def test_models_take_two_polarities():
    net = build("cnn", in_channels=2, image_size=34, decay=0.2, threshold=0.2)
    assert net(torch.zeros(2, 1, 2, 34, 34)).shape == (2, 1, 10)
