"""The dataset registry: a toy dataset declared in this file alone trains and evaluates through
the normal config path (``stbp.config`` → ``stbp.train`` → ``stbp eval``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stbp import checks
from stbp.cli import main
from stbp.config import SCHEMA, load_config, with_dataset
from stbp.data import registry
from stbp.data.registry import DatasetInfo, DatasetSpec, Key, LoadOptions
from stbp.data.splits import ImageSplit
from stbp.errors import StbpError
from stbp.train import eval_run, train


def _images(n: int, seed: int) -> ImageSplit:
    """4x4 images: class 0 lights the left half, class 1 the right half (plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.rand(n, 1, 4, 4, generator=gen) * 60
    x[labels == 0, :, :, :2] += 190
    x[labels == 1, :, :, 2:] += 190
    return ImageSplit(x.clamp(0, 255).to(torch.uint8), labels)


def _load(data, folder: Path, options: LoadOptions) -> dict[str, ImageSplit]:
    assert (folder / "toy.txt").is_file() and options.steps == 8
    return {"train": _images(data["count"], 0), "val": _images(32, 1), "test": _images(32, 2)}


def _locate(data, data_dir) -> Path:
    folder = Path(data_dir) if data_dir is not None else None
    if folder is None or not (folder / "toy.txt").is_file():
        raise StbpError(f"toy: no toy.txt in {folder}")
    return folder


TOY = DatasetSpec(
    name="toy",
    summary="left or right: 4x4 test images",
    keys={"validation": Key(checks.count_or_fraction, 32), "count": Key(checks.positive_int, 64),
          **registry.AUGMENT_KEYS},
    info=lambda data: DatasetInfo(input=(1, 4, 4), classes=2, train_size=data["count"]),
    locate=_locate,
    load=_load,
)

TINY = ["model.sizes=[16, 12, 2]", "encoding.steps=8", "train.epochs=1", "train.batch_size=16",
        "train.eval_batch_size=16", "data.shift=0", "data.count=48"]



def test_builtin_datasets_register_themselves():
    assert registry.names() == ["mnist", "nmnist", "folder"]
    assert registry.get("nmnist").events and not registry.get("mnist").events
    assert registry.dataset_info({"dataset": "mnist"}) == DatasetInfo((1, 28, 28), 10, 60000)
    info = registry.get("folder").info({"size": 32, "color": "rgb", "classes": ["a", "b", "c"]})
    assert info == DatasetInfo((3, 32, 32), 3, None)
    assert registry.dataset_forms().startswith("mnist, nmnist or folder:PATH (a folder")
    with pytest.raises(StbpError, match="unknown dataset 'cifar'; expected one of: mnist, nmnist"):
        registry.get("cifar")
    with pytest.raises(StbpError, match="already registered"):
        registry.register(DatasetSpec(name="mnist", summary="", keys={}, info=TOY.info,
                                      locate=_locate, load=_load))
    with pytest.raises(StbpError, match="argument 'path' is not one of its keys"):
        DatasetSpec(name="x", summary="", keys={}, info=TOY.info, locate=_locate, load=_load,
                    argument="path")


def test_a_toy_dataset_from_one_file_trains_and_evaluates(toy, tmp_path, capsys):
    # the config knows its keys, defaults, shape and classes from the declaration alone
    assert "count" in SCHEMA["data"] and "toy" in SCHEMA["data"]["dataset"][0].__doc__
    cfg = load_config("mnist-mlp", dataset="toy", overrides=TINY)
    assert cfg["data"] == {"dataset": "toy", "validation": 32, "count": 48, "shift": 0,
                           "rotate": 0.0, "scale": 0.0}
    with pytest.raises(StbpError, match=r"must start with 16: toy images have 1x4x4"):
        load_config("mnist-mlp", dataset="toy")
    with pytest.raises(StbpError, match="must be smaller than the 48 toy training images"):
        load_config("mnist-mlp", dataset="toy", overrides=[*TINY, "data.validation=48"])
    with pytest.raises(StbpError, match="count = 0 is invalid; expected an integer > 0"):
        load_config("mnist-mlp", dataset="toy", overrides=[*TINY, "data.count=0"])
    with pytest.raises(StbpError, match="count do\\(es\\) not apply to dataset = 'mnist'"):
        load_config("mnist-mlp", overrides=["data.count=3"])
    with pytest.raises(StbpError, match="expected mnist, nmnist, toy or folder:PATH"):
        with_dataset({}, "toy:x")

    summary = train(cfg, tmp_path / "run", data_dir=toy, progress=False)
    assert summary["train_size"] == 48 and summary["val_size"] == summary["test_size"] == 32
    assert summary["epochs"] == 1 and 0 <= summary["test_acc"] <= 100
    assert "MLP 16-12-2 on toy (48 train / 32 val / 32 test" in capsys.readouterr().err
    result = eval_run(tmp_path / "run")  # the run remembers its data folder
    assert result["test_acc"] == summary["test_acc"]
    # and through the command line
    assert main(["train", "--preset", "mnist-mlp", "--dataset", "toy", "--data-dir", str(toy),
                 "--out", str(tmp_path / "cli"), "--no-progress",
                 *[a for kv in TINY for a in ("--set", kv)]]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
    assert main(["eval", "--run", str(tmp_path / "cli")]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]


def test_the_help_lists_the_registered_datasets(toy, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "toy: left or right" in out and "folder:PATH: your own images" in out
