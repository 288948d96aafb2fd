"""The trainer and the `stbp` command on real MNIST subsets."""

from __future__ import annotations

import json

import pytest
import torch

import stbp.train as train_mod
from stbp.cli import main
from stbp.config import load_config
from stbp.errors import StbpError
from stbp.train import build_model, train

SMALL = ["--limit-train", "1000", "--limit-eval", "500", "--no-progress"]


def _cfg(**train_over):
    over = [f"train.{k}={v}" for k, v in train_over.items()]
    # no augmentation: these runs see 1,000 digits or fewer for an epoch or two
    return load_config("mnist-mlp", overrides=["model.sizes=[784, 100, 10]", "data.shift=0", *over])


def test_cli_train_then_eval(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--preset", "mnist-mlp", "--set", "model.sizes=[784, 100, 10]",
               "--set", "data.shift=0", "--epochs", "2", "--seed", "1",
               "--data-dir", str(mnist_dir), "--out", str(out), *SMALL])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("best_val_acc", "test_acc", "best_epoch", "epochs", "seconds", "seed"):
        assert key in summary
    assert summary["seed"] == 1 and summary["epochs"] == 2
    # chance is 10 %; 2 epochs over 1,000 digits reach about 60 %
    assert summary["best_val_acc"] > 40, "a 784-100-10 STBP net must learn from 1000 digits"
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


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_gives_the_uninterrupted_result(mnist_dir, tmp_path, monkeypatch, ema):
    cfg = _cfg(epochs=3, ema=ema)
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
    if ema:  # the trained weights too, not only their average
        a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["trained"]
        b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["trained"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = lambda d: [  # noqa: E731
        {k: v for k, v in json.loads(x).items() if "seconds" not in k and "per_s" not in k}
        for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert metrics(tmp_path / "full") == metrics(tmp_path / "cut")


def test_ema_is_what_is_evaluated_and_saved(mnist_dir, tmp_path, capsys):
    """train.ema > 0: the moving average of the weights is scored every epoch and saved as the
    checkpoints' ``model``; ``last.pt`` keeps the trained weights apart to resume from."""
    out = tmp_path / "run"
    summary = train(_cfg(epochs=2, ema=0.95), out, data_dir=mnist_dir, limit_train=600,
                    limit_eval=300, progress=False)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["fused"] is True  # Adam's fused kernel
    avg, trained = last["model"], last["trained"]
    assert set(avg) == set(trained)
    assert any(not torch.allclose(avg[k], trained[k]) for k in avg), "the average is not the weights"
    # the average lags the trained weights: it sits between the start and the end
    start = build_model(_cfg(epochs=2, ema=0.95)).state_dict()  # seeded as train() builds it
    w = "1.synapse.weight"
    assert (avg[w] - trained[w]).norm() < (start[w] - trained[w]).norm()
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--data-dir", str(mnist_dir), "--limit-eval", "300"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_acc"] == summary["best_val_acc"] and result["test_acc"] == summary["test_acc"]


def test_current_readout_trains_hidden_spikes_and_a_graded_output(mnist_dir, tmp_path):
    """[model] readout = "current": the output layer does not fire (its mean input current is
    the output, graded), the hidden layers spike; STBP trains it to well above chance."""
    from stbp import layers

    cfg = load_config("mnist-mlp", overrides=["model.sizes=[784, 100, 10]", "data.shift=0",
                                              "train.epochs=2", "model.readout='current'"])
    model = build_model(cfg)
    assert isinstance(model[-1].neuron, layers.Analog) and isinstance(model[-2].neuron, layers.LIF)
    x = (torch.rand(5, 3, 784) < 0.2).to(torch.uint8)
    out = model(x)
    assert not torch.all((out == 0) | (out == 1)), "the output is a current, not spikes"
    from stbp.stats import trace

    traced = trace(model, x)["layers"]  # what the plots read: the output layer does not spike
    assert [t["spiking"] for t in traced] == [True, False]
    summary = train(cfg, tmp_path / "run", data_dir=mnist_dir, limit_train=1000, limit_eval=300,
                    progress=False)
    assert summary["best_val_acc"] > 50
    with pytest.raises(StbpError, match="readout"):
        load_config("mnist-mlp", overrides=["model.readout='membrane'"])


@pytest.mark.parametrize("value", [1.0, -0.1, "0.5"])
def test_ema_setting_is_checked(value):
    from stbp.errors import StbpError
    with pytest.raises(StbpError, match="ema"):
        _cfg(ema=f'"{value}"' if isinstance(value, str) else value)


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
         "[neuron] unknown surrogate 'boxcar'"),
        (["train", "--preset", "mnist-mlp", "--set", "neuron.reset=soft"], "unknown reset 'soft'"),
        (["train", "--preset", "mnist-mlp", "--set", "encoding.steps=0"], "steps = 0 is invalid"),
        (["train", "--preset", "mnist-mlp", "--set", "neuron.decay=-0.1"],
         "decay must be in (0, 1], got -0.1"),
        (["train", "--preset", "mnist-mlp", "--set", "neuron.width=0"],
         "surrogate width must be a finite number > 0, got 0"),
        (["train", "--preset", "mnist-mlp", "--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["train", "--preset", "mnist-mlp", "--seed", "-3"], "--seed must be >= 0, got -3"),
        (["train", "--preset", "mnist-mlp", "--set", "model.sizes=[784, 800, 5]"],
         "must end with 10, the number of mnist classes"),
        (["train", "--preset", "mnist-mlp", "--set", "model.sizes=[100, 10]"],
         "must start with 784"),
        (["train", "--preset", "mnist-mlp", "--set", "model.channels=[4]"],
         "channels do(es) not apply to kind = 'mlp'"),
        (["train", "--preset", "mnist-cnn", "--set", "model.channels=[2, 2, 2, 2, 2, 2]"],
         "allow at most 4"),
        (["train", "--preset", "mnist-cnn", "--set", "model.channels=[2, 2, 2]",
          "--set", "model.padding=\"valid\""], "allow at most 2 with 5x5 'valid' convolutions"),
        (["train", "--preset", "mnist-cnn", "--set", "model.padding=\"full\""], "padding"),
        (["train", "--preset", "mnist-mlp", "--set", "data.validation=0"], "validation = 0"),
        (["train", "--preset", "mnist-mlp", "--set", "data.validation=60000"],
         "must be smaller than the 60000 mnist training images"),
        (["eval", "--run", ".", "--limit-eval", "0"], "--limit-eval must be >= 1"),
        (["train", "--preset", "mnist-mlp", "--nproc", "0"], "--nproc must be an integer >= 1"),
        (["train", "--preset", "mnist-mlp", "--nproc", "4", "--set", "train.batch_size=2"],
         "must be at least the number of processes"),
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


def test_cli_bad_run_dirs(mnist_dir, tmp_path, capsys, monkeypatch):
    """Errors come before anything is written; --out must be a directory; --data-dir too."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "mnist-mlp", "--data-dir", str(tmp_path / "none"),
                 "--out", "run", *SMALL]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "a failed start must not leave a run directory"
    (tmp_path / "file").write_text("x")
    assert main(["train", "--preset", "mnist-mlp", "--data-dir", str(mnist_dir),
                 "--out", "file", *SMALL]) == 2
    assert "--out file: exists and is not a directory" in capsys.readouterr().err
    assert main(["train", "--preset", "mnist-mlp", "--data-dir", "file", "--out", "r2",
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert "--data-dir file: not a directory" in err and not (tmp_path / "r2").exists()


def test_resume_options_and_eval_reuses_the_runs_data(mnist_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    base = ["train", "--preset", "mnist-mlp", "--set", "model.sizes=[784, 50, 10]",
            "--set", "data.shift=1",
            "--data-dir", str(mnist_dir), "--out", str(out), "--limit-train", "300",
            "--limit-eval", "200", "--no-progress"]
    assert main([*base, "--epochs", "1"]) == 0
    capsys.readouterr()
    # the same settings given again (or none) resume fine: the run is already complete
    assert main(["train", "--resume", "--out", str(out), "--epochs", "1", "--data-dir",
                 str(mnist_dir), "--limit-train", "300", "--limit-eval", "200",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--epochs", "4", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs = 4 differs from the run's 1" in err and "Traceback" not in err
    # resuming without the run's limits names the options to pass
    assert main(["train", "--resume", "--out", str(out), "--data-dir", str(mnist_dir)]) == 2
    assert "resume with the same options: --limit-train 300 --limit-eval 200" in (
        capsys.readouterr().err)
    # eval finds the run's data without --data-dir, $STBP_DATA or any download
    monkeypatch.delenv("STBP_DATA", raising=False)

    def no_download(*_a, **_k):
        raise AssertionError("eval must reuse the run's data, not download")

    monkeypatch.setattr("stbp.data.mnist._download_hosts", no_download)
    monkeypatch.setattr("stbp.data.mnist._download_mirror", no_download)
    assert main(["eval", "--run", str(out), "--limit-eval", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert result["test_acc"] == summary["test_acc"]
    assert summary["data_dir"] == str(mnist_dir.resolve())
    lrs = [json.loads(x)["lr"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] > 0, "the logged lr is the one used in the epoch's last step"


# direct (analog) input learns more slowly at these settings: a constant current makes a neuron
# fire at every step or never, so the rate code is coarse at first; 3x chance after 2 epochs
@pytest.mark.parametrize("settings,floor", [(["train.precision=bf16"], 60),
                                            (["encoding.kind=direct"], 30)])
def test_bf16_and_direct_input_learn(settings, floor, mnist_dir, tmp_path):
    cfg = load_config("mnist-mlp", overrides=["model.sizes=[784, 100, 10]", "train.epochs=2",
                                              "data.shift=0", *settings])
    summary = train(cfg, tmp_path / "run", data_dir=mnist_dir, limit_train=1000, limit_eval=500,
                    progress=False)
    assert summary["best_val_acc"] > floor, summary


def test_two_processes_follow_the_one_process_trajectory(mnist_dir, tmp_path):
    """Data-parallel (2 gloo processes) = one process with the same global batch."""
    cfg = _cfg(epochs=2, batch_size=50)
    kw = dict(data_dir=mnist_dir, limit_train=400, limit_eval=200, progress=False)
    one = train(cfg, tmp_path / "one", **kw)
    two = train(cfg, tmp_path / "two", nproc=2, **kw)
    assert two["processes"] == 2 and one["processes"] == 1

    def metrics(d):
        return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 * a["train_loss"], (a, b)
        assert abs(a["val_acc"] - b["val_acc"]) <= 1.0
    wa = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-3), (k, (wa[k] - wb[k]).abs().max())


def test_a_silent_output_neuron_is_reported(mnist_dir, tmp_path, capsys):
    """An output neuron that never fires on validation data is named in the log and metrics."""
    # a huge threshold silences every neuron: all ten outputs are reported
    cfg = _cfg(epochs=1)
    cfg["neuron"]["threshold"] = 50.0
    train(cfg, tmp_path / "run", data_dir=mnist_dir, limit_train=200, limit_eval=100,
          progress=False)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["silent_outputs"] == list(range(10))
    assert "output neuron(s) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 never fired" in capsys.readouterr().err
    # a working run reports none
    train(_cfg(epochs=1), tmp_path / "ok", data_dir=mnist_dir, limit_train=1000, limit_eval=200,
          progress=False)
    line = json.loads((tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["silent_outputs"] == []


@pytest.mark.parametrize("name,decoupled", [("adam", False), ("adamw", True), ("sgd", None)])
def test_optimizers_are_the_fused_kernels_where_torch_has_them(name, decoupled, mnist_dir, tmp_path):
    """[train] optimizer: Adam and AdamW run PyTorch's fused kernel (the same update up to
    rounding); SGD its default."""
    cfg = _cfg(epochs=1, optimizer=f"'{name}'", weight_decay=0.01)
    train(cfg, tmp_path / name, data_dir=mnist_dir, limit_train=200, limit_eval=100, progress=False)
    group = torch.load(tmp_path / name / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.01
    if decoupled is None:
        assert "betas" not in group and not group.get("fused")
    else:
        assert group["fused"] is True and group["decoupled_weight_decay"] is decoupled
