"""`stbp plot` and the figure functions, on real MNIST runs."""

from __future__ import annotations

import json
import shutil

import pytest

from stbp.cli import main
from stbp.errors import StbpError
from stbp.plots import accuracy_curves, layer_rates, plot_run, read_history, surrogate_shapes

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 5000


def test_plot_run_writes_the_four_figures(tiny_runs, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", "--run", str(tiny_runs["mlp"]), "--out", str(out), "--sample", "3",
                 "--limit-eval", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["figures"]) == {"curves", "surrogate", "rates", "raster"}
    for name in ("curves", "surrogate", "rates", "raster"):
        assert _is_png(out / f"{name}.png"), name
    assert not list(out.glob("*.part"))
    assert result["firing"]["samples"] == 200
    # the accuracy on those 200 test images is the run's own evaluation of them
    summary = json.loads((tiny_runs["mlp"] / "summary.json").read_text())
    assert result["test_acc"] == pytest.approx(summary["test_acc"], abs=100 * 100 / 300)


def test_plot_run_defaults_to_the_run_folder(tiny_runs, tmp_path):
    run = tmp_path / "cnn"
    shutil.copytree(tiny_runs["cnn"], run)
    got = plot_run(run, limit_eval=50)
    assert all(_is_png(run / "plots" / f"{n}.png") for n in ("curves", "surrogate", "rates",
                                                             "raster"))
    assert len(got["firing"]["layers"]) == 4


def test_plot_bad_input(tiny_runs, tmp_path, capsys):
    assert main(["plot", "--run", str(tmp_path / "none")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["plot", "--run", str(tiny_runs["mlp"]), "--sample", "100000",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--sample 100000" in capsys.readouterr().err
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["mlp"], run)
    (run / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 5}\n{not json\n')
    with pytest.raises(StbpError, match="metrics.jsonl, line 2: not valid JSON"):
        plot_run(run)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(StbpError, match="metrics.jsonl: not found"):
        read_history(run)
    (tmp_path / "file").write_text("x")
    shutil.copy(tiny_runs["mlp"] / "metrics.jsonl", run / "metrics.jsonl")
    with pytest.raises(StbpError, match="not a directory"):
        plot_run(run, tmp_path / "file")


def test_figure_functions(tmp_path):
    hist = [[{"epoch": e, "val_acc": 90 + e + s} for e in (1, 2, 3)] for s in (0, 1)]
    assert _is_png(accuracy_curves({"a": hist, "b": hist[:1]}, tmp_path / "c.png"))
    assert _is_png(surrogate_shapes([("h1", "h1", 1.0), ("h4", "gaussian", 0.5)], tmp_path / "s.png"))
    layers = [{"name": "L1", "rate": 0.1}, {"name": "L2", "rate": 0.05}]
    assert _is_png(layer_rates({"x": layers, "y": layers}, tmp_path / "r.png"))
    with pytest.raises(StbpError, match="unknown surrogate"):
        surrogate_shapes([("?", "nope", 1.0)], tmp_path / "bad.png")
