"""The trainer and the `stbp` command on real MNIST subsets."""

from __future__ import annotations

import json

import pytest
import torch

import stbp.train as train_mod
from stbp.cli import main
from stbp.config import load_config
from stbp.train import train

SMALL = ["--limit-train", "1000", "--limit-eval", "500", "--no-progress"]


def _cfg(**train_over):
    over = [f"train.{k}={v}" for k, v in train_over.items()]
    return load_config("mnist-mlp", overrides=["model.sizes=[784, 100, 10]", *over])


def test_cli_train_then_eval(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--preset", "mnist-mlp", "--set", "model.sizes=[784, 100, 10]",
               "--epochs", "2", "--seed", "1", "--data-dir", str(mnist_dir), "--out", str(out),
               *SMALL])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("best_val_acc", "test_acc", "best_epoch", "epochs", "seconds", "seed"):
        assert key in summary
    assert summary["seed"] == 1 and summary["epochs"] == 2
    assert summary["best_val_acc"] > 60, "a 784-100-10 STBP net must learn from 1000 digits"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert {p.name for p in out.iterdir()} >= {"config.toml", "metrics.jsonl", "summary.json",
                                               "best.pt", "last.pt"}
    assert load_config(config=out / "config.toml")["train"]["seed"] == 1
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--data-dir", str(mnist_dir),
                 "--limit-eval", "500"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_acc"] == summary["test_acc"]
    assert result["val_acc"] == summary["best_val_acc"]
    # an existing run is not overwritten
    assert main(["train", "--preset", "mnist-mlp", "--data-dir", str(mnist_dir), "--out",
                 str(out), *SMALL]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_gives_the_uninterrupted_result(mnist_dir, tmp_path, monkeypatch):
    cfg = _cfg(epochs=3)
    kw = dict(data_dir=mnist_dir, limit_train=600, limit_eval=300, progress=False)
    full = train(cfg, tmp_path / "full", **kw)

    real_log = train_mod._log

    def crash_after_epoch_2(msg):
        real_log(msg)
        if msg.startswith("epoch 2/"):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_log", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", **kw)
    monkeypatch.setattr(train_mod, "_log", real_log)
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = train(cfg, tmp_path / "cut", resume=True, **kw)
    drop = ("seconds",)
    assert {k: v for k, v in full.items() if k not in drop} == {
        k: v for k, v in resumed.items() if k not in drop}
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = lambda d: [  # noqa: E731
        {k: v for k, v in json.loads(x).items() if "seconds" not in k and "per_s" not in k}
        for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert metrics(tmp_path / "full") == metrics(tmp_path / "cut")


def test_cli_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "mnist-mlp" in out and "mnist-cnn" in out
    assert main(["presets", "mnist-cnn"]) == 0
    assert "channels = [15, 40]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--preset", "mnist-rnn"], "unknown preset 'mnist-rnn'"),
        (["train"], "give --preset NAME or --config FILE"),
        (["train", "--preset", "mnist-mlp", "--set", "neuron.surrogate=boxcar"],
         "surrogate = 'boxcar' is invalid"),
        (["train", "--preset", "mnist-mlp", "--set", "neuron.reset=soft"], "reset = 'soft'"),
        (["train", "--preset", "mnist-mlp", "--set", "encoding.steps=0"], "steps = 0 is invalid"),
        (["train", "--preset", "mnist-mlp", "--set", "neuron.decay=-0.1"], "decay = -0.1"),
        (["train", "--preset", "mnist-mlp", "--set", "neuron.width=0"], "width = 0"),
        (["train", "--preset", "mnist-mlp", "--epochs", "0"], "epochs = 0 is invalid"),
        (["train", "--preset", "mnist-mlp", "--data-dir", "/nonexistent/mnist"],
         "--data-dir /nonexistent/mnist: no such directory"),
        (["train", "--preset", "mnist-mlp", "--limit-train", "0"], "--limit-train must be >= 1"),
        (["train", "--resume"], "--resume needs --out"),
        (["eval", "--run", "/nonexistent/run"], "no such directory"),
    ],
)
def test_cli_bad_input(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("stbp: error:") == 1


def test_cli_bad_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"\x00garbage" * 10)
    assert main(["eval", "--run", str(run)]) == 2
    assert "checkpoint" in capsys.readouterr().err
    torch.save({"weights": 1}, run / "best.pt")
    assert main(["eval", "--run", str(run)]) == 2
    assert "not a stbp checkpoint" in capsys.readouterr().err
