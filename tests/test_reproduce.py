"""`stbp reproduce`: the grid, resuming, the report's numbers, bad options."""

from __future__ import annotations

import json
import re
import statistics

import pytest

import stbp.reproduce as rep
from stbp import analyses
from stbp.cli import main
from stbp.config import load_config
from stbp.errors import StbpError
from stbp.reproduce import GROUPS, Budget, Setting, plan


def test_the_grid_covers_the_papers_analyses_once_per_configuration():
    runs = plan([0, 1, 2])
    slugs = {r.slug for r in runs}
    # base, SD only, h1, h3, h4, h1 at 3 other widths, reset E4, T = 5, 10, 20
    assert len(slugs) == 12 and len(runs) == 36
    assert {"base", "temporal-false", "surrogate-rectangular", "reset-paper", "steps-5"} <= slugs
    assert set(GROUPS) == {"td", "surrogate", "width", "reset", "steps"}
    assert all(len(s) >= 2 for _, _, s in GROUPS.values())
    # every setting is a valid configuration that differs from the preset as its label says
    base = load_config("mnist-mlp")
    for r in runs:
        cfg = load_config("mnist-mlp", overrides=list(r.overrides))
        changed = {f"{t}.{k}" for t in cfg for k in cfg[t] if cfg[t][k] != base[t][k]}
        assert changed == {o.split("=")[0] for o in r.overrides}
    # seeds come in order: all settings of seed 0 first (a partial report is usable early)
    assert [r.seed for r in runs[:12]] == [0] * 12


@pytest.fixture
def small_grid(monkeypatch):
    groups = {"td": ("SD+TD vs SD only", "what", (Setting("SD+TD"),
                                                  Setting("SD only", ("neuron.temporal=false",))))}
    monkeypatch.setattr(analyses, "GROUPS", groups)  # the grid, as every module reads it
    return groups


def test_reproduce_trains_reports_and_resumes(small_grid, mnist_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    budget = Budget(epochs=1, limit_train=200, limit_eval=100)
    lines: list[str] = []
    report = rep.reproduce(out, budget=budget, seeds=[0, 1], jobs=2, data_dir=mnist_dir,
                           log=lines.append)
    assert "4 runs (2 settings x 2 seeds), 0 already done" in lines[0]
    assert sum("test" in x for x in lines[1:]) == 4
    text = report.read_text()
    # the table's numbers are the runs' own summaries, mean ± std over the seeds
    for slug, label in (("base", "SD+TD"), ("temporal-false", "SD only")):
        tests = [json.loads((out / "runs" / slug / f"seed{s}" / "summary.json").read_text())
                 ["test_acc"] for s in (0, 1)]
        want = f"| {label} | {statistics.mean(tests):.2f} ± {statistics.stdev(tests):.2f} |"
        assert want in text, (want, text)
    for fig in re.findall(r"\(figures/([a-z]+\.png)\)", text):
        assert (out / "figures" / fig).read_bytes().startswith(b"\x89PNG")
    assert {"td.png", "surrogates.png", "rates.png", "raster.png"} <= {
        p.name for p in (out / "figures").iterdir()}
    assert "--epochs 1 --limit-train 200 --limit-eval 100 --seeds 0 1" in text
    # a second call finds every run done and only rewrites the report
    lines.clear()
    rep.reproduce(out, budget=budget, seeds=[0, 1], jobs=1, data_dir=mnist_dir, log=lines.append)
    assert "4 already done" in lines[0] and len(lines) == 1
    # other settings in the same folder are refused
    with pytest.raises(StbpError, match="holds a reproduction with other settings: epochs = 2"):
        rep.reproduce(out, budget=Budget(2, 200, 100), seeds=[0, 1], data_dir=mnist_dir)
    assert main(["reproduce", "--report-only", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(report)


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "-1"], "--seeds must be integers >= 0"),
    (["--seeds", "1", "1"], "--seeds has repeats"),
    (["--jobs", "0"], "--jobs must be an integer >= 1"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--limit-train", "0"], "--limit-train must be an integer >= 1"),
])
def test_bad_options(argv, message, tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "r"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_only_needs_a_reproduction(tmp_path, capsys):
    assert main(["reproduce", "--report-only", "--out", str(tmp_path)]) == 2
    assert "no reproduce.json" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["reproduce", "--out", str(tmp_path / "f"), "--quick"]) == 2
    assert "not a directory" in capsys.readouterr().err
