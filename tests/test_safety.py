"""Hardening (issue 17): nothing lost, nothing crashes, nothing confuses — run-folder locks,
launchers and their workers, divergence, checkpoints before evaluation, memory up front,
file-system errors. Small generated data (the toy dataset of tests/test_registry.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import stbp.train as train_mod
from stbp import budget, io, runlock
from stbp.cli import main
from stbp.config import load_config
from stbp.errors import StbpError
from stbp.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_registry import TINY  # noqa: E402 - the toy dataset's settings (the `toy` fixture: conftest)


def _cfg(*over: str):
    return load_config("mnist-mlp", dataset="toy", overrides=[*TINY, *over])


def _strict_lines(path: Path) -> list[dict]:
    def no_constants(name):
        raise AssertionError(f"{path}: bare {name} is not JSON")

    return [json.loads(x, parse_constant=no_constants) for x in path.read_text().splitlines()]


def _holder_process(folder: Path) -> subprocess.Popen:
    """A process that holds ``folder``'s lock until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from stbp.runlock import RunLock
        lock = RunLock({str(folder)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ---- 1. one writer per run folder

def test_a_locked_run_folder_refuses_a_second_writer_and_a_stale_lock_is_taken_over(toy, tmp_path):
    out = tmp_path / "run"
    proc = _holder_process(out)
    try:
        with pytest.raises(StbpError, match=rf"--out {out}: in use by process {proc.pid}"):
            train(_cfg(), out, data_dir=toy, progress=False)
        with pytest.raises(StbpError, match="in use by process"):
            train(_cfg(), out, data_dir=toy, progress=False, resume=True)
        from stbp.reproduce import QUICK, reproduce

        with pytest.raises(StbpError, match="in use by process"):
            reproduce(out, budget=QUICK, seeds=[0], log=lambda m: None)
    finally:
        proc.kill()  # kill -9: the lock file stays, its lock does not
        proc.wait()
    assert runlock.holder(out)["pid"] == proc.pid
    said = []
    with runlock.RunLock(out, log=said.append) as lock:
        assert lock.took_over["pid"] == proc.pid
        assert runlock.holder(out)["pid"] == os.getpid()
    assert "taking over the stale lock of process" in said[0]
    assert not (out / runlock.LOCK_NAME).exists()
    summary = train(_cfg(), out, data_dir=toy, progress=False)  # now free
    assert summary["epochs"] == 1 and not (out / runlock.LOCK_NAME).exists()


def test_a_refused_run_leaves_no_folder_behind(toy, tmp_path):
    with pytest.raises(StbpError):
        train(_cfg(), tmp_path / "new", data_dir=tmp_path / "nowhere", progress=False)
    assert not (tmp_path / "new").exists()


# ---- 2. workers die with their launcher

def test_nproc_workers_die_with_their_launcher(tmp_path):
    (tmp_path / "sleeper.py").write_text(textwrap.dedent("""
        import os, time
        def run(folder):
            open(os.path.join(folder, f"worker-{os.getpid()}"), "w").close()
            time.sleep(120)
    """))
    code = textwrap.dedent(f"""
        import sleeper
        from stbp import distributed
        distributed.launch(2, sleeper.run, {{"folder": {str(tmp_path)!r}}})
    """)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    launcher = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 90
        while len(list(tmp_path.glob("worker-*"))) < 2 and time.time() < deadline:
            time.sleep(0.2)
        pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
        assert len(pids) == 2, "the workers did not start"
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_running(p) for p in pids):
        time.sleep(0.2)
    alive = [p for p in pids if _running(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, "workers outlived their killed launcher"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"  # a zombie has ended (its reaper, the launcher, is gone too)


# ---- 3. divergence, collapse

def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(toy, tmp_path,
                                                                                 monkeypatch):
    real = train_mod._loss

    def nan_from_epoch_2(tcfg):
        fn, calls = real(tcfg), [0]

        def loss(out, y):
            calls[0] += 1
            value = fn(out, y)
            return value * float("nan") if calls[0] > 3 else value  # 3 batches per epoch

        return loss

    monkeypatch.setattr(train_mod, "_loss", nan_from_epoch_2)
    out = tmp_path / "run"
    with pytest.raises(StbpError, match=r"training diverged in epoch 2: the training loss is nan "
                       r"at batch 1 of 3; the run stops \(.*last.pt keeps epoch 1"):
        train(_cfg("train.epochs=2"), out, data_dir=toy, progress=False)
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(bool(torch.isfinite(v).all()) for v in last["model"].values())
    assert [r["epoch"] for r in _strict_lines(out / "metrics.jsonl")] == [1]
    assert not (out / "summary.json").exists()


def test_the_ann_at_lr_1e30_exits_non_zero_with_strict_json(toy, tmp_path, capsys):
    out = tmp_path / "ann"
    sets = [*TINY, "model.spiking=false", "train.loss=cross_entropy", "train.optimizer=sgd",
            "train.lr=1e30", "train.epochs=2"]
    rc = main(["train", "--preset", "mnist-mlp", "--dataset", "toy", "--data-dir", str(toy),
               "--out", str(out), "--no-progress", *[a for kv in sets for a in ("--set", kv)]])
    err = capsys.readouterr().err
    assert rc == 2 and "training diverged in epoch" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("stbp: error")][0].count("\n") == 0
    if (out / "metrics.jsonl").exists():
        _strict_lines(out / "metrics.jsonl")
    for name in ("best.pt", "last.pt"):
        if (out / name).exists():
            w = torch.load(out / name, weights_only=True)["model"]
            assert all(bool(torch.isfinite(v).all()) for v in w.values())


def test_a_spiking_net_collapsed_to_chance_says_so(toy, tmp_path, capsys):
    summary = train(_cfg("train.lr=1000", "train.epochs=1"), tmp_path / "run", data_dir=toy,
                    progress=False)
    err = capsys.readouterr().err
    assert summary["best_val_acc"] <= 60
    assert "is at chance level (50.0%): the spiking network has collapsed" in err
    assert summary["collapsed"] is True


def test_summary_and_metrics_are_strict_json_when_a_split_is_empty():
    from stbp.runs import strict_json

    assert json.dumps(strict_json({"a": float("nan"), "b": [float("inf"), 1.5]}),
                      allow_nan=False) == '{"a": null, "b": [null, 1.5]}'


# ---- 4. the checkpoint is saved before evaluation

def test_an_evaluation_that_fails_loses_no_epoch(toy, tmp_path, monkeypatch):
    cfg = _cfg("train.epochs=3")
    full = train(cfg, tmp_path / "full", data_dir=toy, progress=False)
    real, calls = train_mod.evaluate, [0]

    def out_of_memory_in_epoch_2(*a, **k):
        calls[0] += 1
        if calls[0] == 3:  # epoch 2's validation
            raise MemoryError
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "evaluate", out_of_memory_in_epoch_2)
    with pytest.raises(MemoryError):
        train(cfg, tmp_path / "cut", data_dir=toy, progress=False)
    monkeypatch.setattr(train_mod, "evaluate", real)
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and "pending" in last  # epoch 2's training is kept
    resumed = train(cfg, tmp_path / "cut", data_dir=toy, progress=False, resume=True)
    drop = ("seconds",)
    assert {k: v for k, v in full.items() if k not in drop} == {
        k: v for k, v in resumed.items() if k not in drop}
    strip = lambda d: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k}  # noqa: E731
                       for r in _strict_lines(d / "metrics.jsonl")]
    assert strip(tmp_path / "full") == strip(tmp_path / "cut")


# ---- 5. memory up front

@pytest.mark.parametrize("over, what", [
    (["encoding.steps=100000"], "a training step"),
    (["model.sizes=[784, 99999999999, 10]"], "a training step"),
])
def test_memory_is_checked_before_anything_is_allocated(tmp_path, over, what):
    cfg = load_config("mnist-mlp", overrides=over)
    t0 = time.perf_counter()
    with pytest.raises(StbpError, match=rf"not enough memory: {what} \(T = .*\) about [\d,.]+ (GiB|MiB)"
                       r".*available on this machine; lower encoding.steps, train.batch_size"):
        train(cfg, tmp_path / "run", data_dir=tmp_path, progress=False)
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "run").exists()


def test_the_evaluation_batch_is_checked_too():
    cfg = load_config("mnist-mlp", overrides=["encoding.steps=3000"])
    est = budget.estimate(cfg)
    assert est.eval_batch > 8 * 2**30 > est.train_step  # T = 3000: evaluation batches of 1,000
    with pytest.raises(StbpError, match=r"an evaluation batch \(T = 3000, train.eval_batch_size = "
                       r"1000\) about .* GiB .* more than the 8.0 GiB available.*eval_batch_size"):
        budget.check(cfg, available=8 * 2**30)
    budget.check(load_config("mnist-mlp"), available=8 * 2**30)  # the presets fit
    budget.check(load_config("mnist-cnn"), available=8 * 2**30)


def test_the_memory_check_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("STBP_MEMORY_CHECK", "off")
    budget.check(load_config("mnist-mlp", overrides=["encoding.steps=100000"]), available=1)


def test_a_shift_larger_than_the_image_is_refused():
    with pytest.raises(StbpError, match=r"\[data\] shift = 1000 .* 28x28"):
        load_config("mnist-mlp", overrides=["data.shift=1000"])


# ---- 7. file-system errors: one line naming the path, no .part files

def test_a_full_disk_gives_one_line_and_leaves_no_part_file(toy, tmp_path, monkeypatch, capsys):
    real_fsync = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("best.pt.part"):
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", full)
    out = tmp_path / "run"
    sets = [a for kv in TINY for a in ("--set", kv)]
    rc = main(["train", "--preset", "mnist-mlp", "--dataset", "toy", "--data-dir", str(toy),
               "--out", str(out), "--no-progress", *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"stbp: error: cannot write {out / 'best.pt'} (No space left on device)"
    assert not list(out.glob("*.part"))
    monkeypatch.setattr(io.os, "fsync", real_fsync)
    (out / "last.pt.part").write_bytes(b"x" * 100)  # as a kill -9 mid-write leaves it
    assert main(["train", "--preset", "mnist-mlp", "--dataset", "toy", "--data-dir", str(toy),
                 "--out", str(out), "--no-progress", "--resume", *sets]) == 0
    assert not list(out.glob("*.part"))


def test_a_read_only_out_gives_one_line(toy, tmp_path, monkeypatch, capsys):
    def read_only(self, *a, **k):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    rc = main(["train", "--preset", "mnist-mlp", "--dataset", "toy", "--data-dir", str(toy),
               "--out", str(tmp_path / "ro" / "run"), "--no-progress",
               *[a for kv in TINY for a in ("--set", kv)]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"stbp: error: --out {tmp_path / 'ro' / 'run'}: cannot create the "
                               "folder (Read-only file system)")


def test_an_os_error_anywhere_is_one_line(monkeypatch, capsys):
    import stbp.cli as cli

    def broken(args):
        raise PermissionError(13, "Permission denied", "/somewhere/file")

    monkeypatch.setattr(cli, "_presets", broken)
    assert main(["presets"]) == 1
    assert capsys.readouterr().err == "stbp: error: /somewhere/file: Permission denied\n"
