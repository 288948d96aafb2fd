"""Hardening (issue 17): crafted files, huge integers, unwritable caches, and what confused a
careful user (messages, rules, defaults, figures). Small generated cases; real MNIST only
where named."""

from __future__ import annotations

import io
import json
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import stbp.train as train_mod
from stbp.cli import main
from stbp.config import load_config
from stbp.errors import StbpError
from stbp.runs import CHECKPOINT_FORMAT, build_model, load_checkpoint, load_run
from stbp.train import eval_run, train

sys.path.insert(0, str(Path(__file__).parent))
from test_registry import TINY  # noqa: E402 - the toy dataset's settings (the `toy` fixture: conftest)

ROOT = Path(__file__).parents[1]


def _cfg(*over: str):
    return load_config("mnist-mlp", dataset="toy", overrides=[*TINY, *over])


def _run(toy, out, *over, **kw):
    return train(_cfg(*over), out, data_dir=toy, progress=False, **kw)


# ---- 6. crafted checkpoints and NIR files cannot exhaust memory

def test_a_checkpoint_whose_config_claims_1e11_neurons_builds_nothing(tmp_path):
    cfg = load_config("mnist-mlp")
    cfg["model"]["sizes"] = [784, 100_000_000_000, 10]
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg, "epoch": 1,
                "model": {"1.synapse.weight": torch.zeros(2, 2)}}, run / "best.pt")
    assert (run / "best.pt").stat().st_size < 4096
    t0 = time.perf_counter()
    with pytest.raises(StbpError, match=r"weights do not fit the saved config: 1\.synapse\.\w+ is "
                       r".*, the config's network needs \[100000000000"):
        load_run(run)
    assert time.perf_counter() - t0 < 10


def test_a_checkpoint_that_inflates_is_refused_before_it_is_read(tmp_path):
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "config": {}, "epoch": 1, "model": {}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in src.infolist():
            zf.writestr(info.filename, src.read(info.filename))
        with zf.open("bomb/data/9", "w") as fh:  # 256 MiB of zeros in a few hundred KB
            block = bytes(8 * 2**20)
            for _ in range(32):
                fh.write(block)
    assert path.stat().st_size < 2**20
    with pytest.raises(StbpError, match=r"unpack to 256 MiB from a \d+ MiB file.*could exhaust memory"):
        load_checkpoint(path)


def test_a_nir_file_declaring_a_50000x50000_weight_is_refused_unread(tmp_path):
    import h5py

    from stbp.export import read_nir

    path = tmp_path / "big.nir"
    with h5py.File(path, "w") as f:
        g = f.create_group("node/nodes/0")
        g.create_dataset("weight", shape=(50000, 50000), dtype="float32", chunks=(1000, 1000),
                         compression="gzip")
    assert path.stat().st_size < 2 * 2**20
    with pytest.raises(StbpError, match=r"arrays would take 9.3 GiB in memory \(the largest: "
                       r"node/nodes/0/weight \[50000, 50000\]\)"):
        read_nir(path)


def test_a_crafted_pickle_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "pwned"))

    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": {}, "epoch": 1, "model": {},
                "x": Payload()}, path)
    with pytest.raises(StbpError, match="unreadable or corrupt"):
        load_checkpoint(path)
    assert not marker.exists()


# ---- 8. the frame cache in an unwritable place

def test_an_unwritable_frame_cache_is_a_warning_not_a_crash(tmp_path, capsys):
    from stbp.data.framecache import write_frame_cache

    (tmp_path / "file").write_text("not a folder")
    write_frame_cache(tmp_path / "file" / "cache" / "x.npz", "k", np.zeros((2, 3), np.uint8),
                      np.zeros(2, np.int64), 1)
    assert "continuing without it" in capsys.readouterr().err


# ---- 9. integers beyond 64 bits

@pytest.mark.parametrize("over", ["train.seed=18446744073709551616", "data.shift=100000000000000000000",
                                  "encoding.steps=9223372036854775808",
                                  "model.sizes=[784, 9223372036854775808, 10]"])
def test_integers_beyond_64_bits_are_refused(over):
    with pytest.raises(StbpError, match=r"is invalid; expected .*below 2\*\*63"):
        load_config("mnist-mlp", overrides=[over])


def test_a_time_window_of_2_63_is_refused():
    with pytest.raises(StbpError, match="time_window = 9223372036854775808 is invalid"):
        load_config("nmnist-mlp", overrides=["data.time_window=9223372036854775808"])


def test_idx_dims_whose_product_overflows_64_bits_are_refused():
    from stbp.data.idx import parse_idx

    data = bytes([0, 0, 0x08, 4]) + (65536).to_bytes(4, "big") * 4  # 2**64 elements, no body
    with pytest.raises(StbpError, match=r"truncated IDX data: shape \(65536, 65536, 65536, 65536\) "
                       r"needs 18446744073709551616 bytes"):
        parse_idx(data)


# ---- 10. stbp export of a folder-dataset CNN

def test_export_of_a_folder_dataset_cnn(tmp_path, capsys):
    cfg = load_config("detect-cnn", overrides=["model.channels=[2]", "model.hidden=[4]"],
                      dataset=f"folder:{tmp_path}")
    cfg["data"]["classes"] = ["background", "object"]
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg, "epoch": 1,
                "model": build_model(cfg).state_dict()}, run / "best.pt")
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "n.nir")]) == 0
    size = cfg["data"]["size"]
    assert json.loads(capsys.readouterr().out)["input_shape"] == [1, size, size]


# ---- 12. the first step compiles: said, and kept out of the ETA

def test_a_slow_first_step_says_it_compiles_and_stays_out_of_the_eta(toy, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setattr(train_mod, "COMPILE_NOTICE_AFTER", 0.05)
    monkeypatch.setitem(train_mod._WARM, "done", False)
    real_loss, bars = train_mod._loss, []

    def slow_first(tcfg):
        fn, calls = real_loss(tcfg), [0]

        def loss(out, y):
            calls[0] += 1
            if calls[0] == 1:
                time.sleep(0.5)
            return fn(out, y)
        return loss

    real_bar = train_mod._progress_bar
    monkeypatch.setattr(train_mod, "_loss", slow_first)
    monkeypatch.setattr(train_mod, "_progress_bar",
                        lambda run, e, total, done, p: bars.append(done) or real_bar(run, e, total, done, p))
    _run(toy, tmp_path / "run", "train.epochs=2")
    err = capsys.readouterr().err
    assert err.count("stbp: compiling kernels (first run only") == 1
    assert bars == [1, 0]  # the first bar starts after the compiled step; the next as usual


# ---- 13. one --limit-eval rule for eval and plot

def test_eval_uses_the_runs_own_limit_and_says_so(toy, tmp_path):
    summary = _run(toy, tmp_path / "run", limit_eval=10)
    result = eval_run(tmp_path / "run")
    assert result["val_size"] == result["test_size"] == 10 and result["limit_eval"] == 10
    assert "the run's own --limit-eval 10" in result["evaluated_on"]
    assert result["val_acc"] == summary["best_val_acc"] and result["test_acc"] == summary["test_acc"]
    full = eval_run(tmp_path / "run", limit_eval=32)
    assert full["val_size"] == 32 and "--limit-eval 32 (given)" in full["evaluated_on"]


def test_plot_follows_the_same_rule(toy, tmp_path):
    from stbp.plots import plot_run

    _run(toy, tmp_path / "run", limit_eval=12)
    got = plot_run(tmp_path / "run")
    assert got["limit_eval"] == 12 and got["firing"]["samples"] == 12
    assert "the run's own --limit-eval 12" in got["evaluated_on"]


# ---- 14. resume messages

def test_resume_messages(toy, tmp_path, capsys):
    out = tmp_path / "run"
    sets = [a for kv in TINY for a in ("--set", kv)]
    base = ["train", "--preset", "mnist-mlp", "--dataset", "toy", "--data-dir", str(toy),
            "--out", str(out), "--no-progress"]
    assert main([*base, *sets]) == 0
    capsys.readouterr()
    base = ["train", "--data-dir", str(toy), "--out", str(out), "--no-progress"]
    assert main([*base, "--resume"]) == 0  # a finished run
    captured = capsys.readouterr()
    assert f"the run in {out} is complete (1 of 1 epochs); nothing to resume" in captured.err
    assert "resuming" not in captured.err and json.loads(captured.out)["epochs"] == 1
    assert main([*base, "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs = 3 differs from the run's 1" in err and "resuming" not in err
    # a config.toml edited by hand: the keys that differ are named
    text = (out / "config.toml").read_text().replace("lr = 0.001", "lr = 0.002")
    (out / "config.toml").write_text(text)
    assert main([*base, "--resume"]) == 2
    assert "train.lr = 0.002 differs from the run's 0.001" in capsys.readouterr().err


def test_the_resume_hint_only_where_it_applies(toy, tmp_path, monkeypatch, capsys):
    import stbp.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_scenes", interrupted)
    assert main(["scenes", "--out", str(tmp_path / "s")]) == 130
    assert capsys.readouterr().err == "stbp: interrupted\n"
    monkeypatch.setattr(train_mod, "_start", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    args = ["train", "--preset", "mnist-mlp", "--dataset", "toy", "--data-dir", str(toy), "--out",
            str(tmp_path / "run"), "--no-progress", *[a for kv in TINY for a in ("--set", kv)]]
    assert main(args) == 130
    assert capsys.readouterr().err == "stbp: interrupted\n"  # no run folder yet: nothing to resume
    monkeypatch.undo()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    monkeypatch.setattr(cli, "_train", interrupted)
    assert main(args) == 130
    assert f"continue with: stbp train --resume --out {tmp_path / 'run'}" in capsys.readouterr().err


# ---- 15. environment, export overwrite, rounding, ap_other, STBP_DATA, paths, figures

def test_reproduce_keeps_the_users_thread_settings():
    from stbp.reproduce import child_env

    env = child_env(2, {"OMP_NUM_THREADS": "1", "PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "1" and env["NUMBA_NUM_THREADS"].isdigit()


def test_export_refuses_to_overwrite_without_force(toy, tmp_path, capsys):
    _run(toy, tmp_path / "run")
    out = tmp_path / "net.nir"
    args = ["export", "--run", str(tmp_path / "run"), "--out", str(out)]
    assert main(args) == 0
    first = out.read_bytes()
    assert main(args) == 2
    assert f"--out {out}: exists; pass --force to overwrite it" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert main([*args, "--force"]) == 0


def test_accuracies_are_rounded(toy, tmp_path):
    summary = _run(toy, tmp_path / "run", "data.validation=31")  # 31 samples: thirds of a percent
    for key in ("best_val_acc", "test_acc", "final_test_acc", "best_test_acc_any_epoch"):
        assert round(summary[key], 2) == summary[key]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert all(round(record[k], 2) == record[k] for k in ("train_acc", "val_acc", "test_acc"))


def test_ap_other_is_explained_where_a_user_looks(capsys):
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "ap_other: the AP with box voting switched the other way" in help_text
    assert "ap_other" in (ROOT / "README.md").read_text()


def test_stbp_data_pointing_nowhere_is_an_error(monkeypatch, tmp_path):
    from stbp.data.mnist import locate_mnist

    monkeypatch.setenv("STBP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(StbpError, match=r"STBP_DATA=.*nowhere: no such directory"):
        locate_mnist(None)


def test_no_message_or_doc_points_at_paths_a_user_does_not_have():
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "src").rglob("*.py"),
             *(ROOT / "src").rglob("*.toml"), *(ROOT / "tests").rglob("*.py"),
             *(ROOT / "scripts").glob("*")]
    bad = [str(p.relative_to(ROOT)) for p in files if p.is_file() and p != Path(__file__)
           and "../shared/" in p.read_text(errors="replace")]
    assert not bad, bad


def test_the_detect_png_is_readable_and_its_labels_do_not_overlap():
    from PIL import Image

    from stbp.detect import ANNOTATE_MIN_SIDE, Detection, annotate, label_places

    img = np.zeros((1, 96, 96), np.uint8)
    dets = [Detection([10, 10, 40, 40], 0.9, "object"), Detection([12, 11, 42, 41], 0.8, "object"),
            Detection([11, 12, 41, 43], 0.7, "object")]
    png = Image.open(io.BytesIO(annotate(img, dets)))
    assert min(png.size) >= ANNOTATE_MIN_SIDE
    places = label_places([tuple(d.box) for d in dets], (40, 14), (96, 96))
    for i, a in enumerate(places):
        for b in places[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_the_raster_has_integer_ticks(tmp_path, monkeypatch):
    import stbp.plots as plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or Path(path))
    # two output neurons over 4 steps: matplotlib's own ticks would be -0.5, 0, 0.5, ...
    traced = {"input": torch.ones(4, 1, 3),
              "layers": [{"name": "out", "spikes": torch.ones(4, 1, 2), "membrane": torch.rand(4, 1, 2)}]}
    plots.raster(traced, tmp_path / "r.png", threshold=1.0)
    rasters, membrane = figs[0].axes[1:-1], figs[0].axes[-1]
    for ticks in [*(ax.get_yticks() for ax in rasters), *(ax.get_xticks() for ax in figs[0].axes[1:])]:
        assert all(float(t).is_integer() for t in ticks), ticks
    assert membrane.get_xlabel() == "time step t"


# ---- 16. every speed-up in the README traces to a recorded run

def test_the_readme_speed_and_memory_figures_trace_to_recorded_runs():
    """Every "N×" of the README's performance bullet is a ratio of a recorded benchmark run
    (docs/bench/*.json, written by benchmarks/peers.py --json): a peer's time over an stbp
    case's (the whole step, or the network alone: the step less its input encoding), or an
    stbp case's peak memory over a peer's."""
    import json

    readme = (ROOT / "README.md").read_text()
    bullet = readme[readme.index("- **Fast and lean on a CPU**"):readme.index("- **A GPU path**")]
    ratios = set()
    for name in re.findall(r"`(bench\d+(?:-[a-z0-9]+)?)`", bullet):  # the runs the bullet cites
        rows = json.loads((ROOT / "docs" / "bench" / f"{name}.json").read_text())["rows"]
        ours = [r for r in rows if r["case"].startswith("stbp") and r["case"] != "stbp-eager"]
        peers = [r for r in rows if not r["case"].startswith(("stbp", "floor"))]
        for a in ours:
            for b in peers:
                if (a["kind"], a["T"]) == (b["kind"], b["T"]):
                    ratios |= {f"{b['ms'] / a['ms']:.1f}", f"{a['peak_mb'] / b['peak_mb']:.2f}"}
                    if a.get("encode_ms") is not None and b.get("encode_ms") is not None:
                        net_b, net_a = b["ms"] - b["encode_ms"], a["ms"] - a["encode_ms"]
                        ratios.add(f"{net_b / net_a:.1f}")
    figures = re.findall(r"(\d+\.\d+)×", bullet)
    assert figures and set(figures) <= ratios, (sorted(set(figures) - ratios), sorted(ratios))
