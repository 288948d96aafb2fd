"""The report of ``stbp reproduce``: ``OUT/report.md`` and ``OUT/figures/*.png`` from the
finished runs of the analyses' grid (:mod:`stbp.analyses`): tables of the validation-selected
test accuracy (mean ± std over seeds), validation curves per group, the curves h1–h4, firing
statistics per setting, and one test digit through the network."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from stbp import analyses
from stbp.analyses import FULL, MANIFEST, PRESET, QUICK, Budget, configs, label, machine, slug
from stbp.config import load_config
from stbp.errors import StbpError
from stbp.io import atomic_write

__all__ = ["write_report"]

def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _finished(out: Path, name: str, seeds: list[int]) -> list[tuple[int, dict, list[dict]]]:
    from stbp.plots import read_history

    got = []
    for seed in seeds:
        d = out / "runs" / name / f"seed{seed}"
        if (d / "summary.json").is_file():
            got.append((seed, json.loads((d / "summary.json").read_text()), read_history(d)))
    return got


def _firing(out: Path, name: str, seed: int, limit: int | None, test_split) -> dict[str, Any] | None:
    """Firing statistics of one run's best model on the first ``limit`` test images (cached);
    ``test_split()`` gives the MNIST test split (the same images for every setting)."""
    from stbp.runs import evaluate, load_run
    from stbp.stats import FiringMonitor

    run_dir = out / "runs" / name / f"seed{seed}"
    cache = run_dir / "firing.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    if not (run_dir / "best.pt").is_file():
        return None
    model, cfg, _, _ = load_run(run_dir)
    with FiringMonitor(model) as mon:
        evaluate(model, test_split().subset(limit), cfg["encoding"]["steps"], seed=seed + 1,
                 encoding_kind=cfg["encoding"]["kind"], precision=cfg["train"]["precision"])
    firing = mon.summary()
    atomic_write(cache, json.dumps(firing, indent=2) + "\n")
    return firing


def write_report(out: str | os.PathLike, *, data_dir: str | os.PathLike | None = None) -> Path:
    """Write ``OUT/report.md`` and ``OUT/figures/*.png`` from the finished runs in ``out``."""
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        raise StbpError(f"--out {out}: no {MANIFEST}; run `stbp reproduce --out {out}` first")
    manifest = json.loads(path.read_text())
    seeds = manifest["seeds"]
    budget = Budget(manifest["epochs"], manifest["limit_train"], manifest["limit_eval"])
    figs = out / "figures"
    results = {name: _finished(out, name, seeds) for name in configs()}
    loaded: dict[str, Any] = {}

    def test_split():  # read MNIST once, and only if a figure or table needs it
        if "test" not in loaded:
            from stbp.data.splits import load_splits

            loaded["test"] = load_splits(load_config(PRESET), data_dir)[0]["test"]
        return loaded["test"]

    lines = _header(out, budget, seeds, results)
    for key, group in analyses.GROUPS.items():
        lines += _group(key, group, results, figs)
    lines += _curves(figs)
    lines += _firing_table(out, seeds[0], budget, test_split, figs)
    lines += _one_digit(out, seeds[0], test_split, figs)
    report = out / "report.md"
    atomic_write(report, "\n".join(lines))
    return report


def _command(out: Path, budget: Budget, seeds: list[int]) -> str:
    """The command that makes this report."""
    opts = []
    if budget != FULL:
        opts.append("--quick" if budget == QUICK else
                    f"--epochs {budget.epochs}" + (f" --limit-train {budget.limit_train}"
                                                   if budget.limit_train else "")
                    + (f" --limit-eval {budget.limit_eval}" if budget.limit_eval else ""))
    if seeds != [0, 1, 2]:
        opts.append("--seeds " + " ".join(map(str, seeds)))
    return " ".join(["stbp reproduce", *opts, f"--out {out.name}"])


def _header(out: Path, budget: Budget, seeds: list[int], results: dict) -> list[str]:
    n_done = sum(len(v) for v in results.values())
    total_s = sum(s["seconds"] for v in results.values() for _, s, _ in v)
    first = next((s for v in results.values() for _, s, _ in v), None)
    quick = budget != FULL
    return [
        "# STBP analyses on the MNIST MLP (784-800-10)",
        "",
        f"Made by `{_command(out, budget, seeds)}` (stbp {_version()}, torch {torch.__version__}).",
        "",
        f"- Base: the `{PRESET}` preset (h2, a = 1, τ = 0.1, V_th = 0.5, E4' reset, T = 30, "
        "Bernoulli input, MSE on the output rate, Adam, cosine schedule, 2-px shift), changed "
        "in one setting per row.",
        f"- Budget per run: {budget.describe()}"
        + (" (shrunk by `--quick`; the full report uses 5 epochs on the full splits)." if quick
           else " (the preset trains 30 epochs; this shortened schedule keeps the whole grid "
                "affordable on 2 cores — accuracies are therefore below the preset's 98.9 %)."),
        f"- Seeds {', '.join(map(str, seeds))} per setting: {n_done} finished runs of "
        f"{len(results) * len(seeds)}, {_duration(total_s)} of training and evaluation in all"
        + (f" ({first['threads']} thread(s) per run)" if first else "") + ".",
        f"- Machine: {machine()}.",
        "- Accuracy = test accuracy of the epoch with the best validation accuracy (the "
        "validation split is the last 5,000 training images, never trained on"
        + (f"; the first {budget.limit_eval:,} of them and of the test images here"
           if budget.limit_eval else "") + "), mean ± std "
        "over seeds. Input spike trains of "
        "the evaluation are fixed per seed.",
        "",
    ]


def _group(key: str, group: tuple, results: dict, figs: Path) -> list[str]:
    """One group's table (and its validation curves)."""
    from stbp import plots

    title, what, settings = group
    lines = [f"## {title}", "", what, "",
             "| setting | test acc. (val-selected), % | best val. acc., % | best epoch "
             "| s / run | runs with a silent output neuron |",
             "|---|---|---|---|---|---|"]
    series, means = {}, []
    for s in settings:
        got = results[slug(s.overrides)]
        tests = [x["test_acc"] for _, x, _ in got]
        vals = [x["best_val_acc"] for _, x, _ in got]
        silent = sum(1 for _, _, h in got if h and h[-1].get("silent_outputs"))
        lines.append(
            f"| {s.label} | {_mean_std(tests)} | {_mean_std(vals)} | "
            + (", ".join(str(x["best_epoch"]) for _, x, _ in got) or "—") + " | "
            + (f"{statistics.mean(x['seconds'] for _, x, _ in got):.0f}" if got else "—")
            + f" | {silent} of {len(got)} |")
        series[s.label] = [h for _, _, h in got]
        if tests:
            means.append((statistics.mean(tests), s.label))
    if len(means) > 1:
        spread = max(means)[0] - min(means)[0]
        stds = [statistics.stdev([x["test_acc"] for _, x, _ in results[slug(s.overrides)]])
                for s in settings if len(results[slug(s.overrides)]) > 1]
        lines += ["", f"Highest mean: {max(means)[1]} ({max(means)[0]:.2f} %); lowest: "
                  f"{min(means)[1]} ({min(means)[0]:.2f} %); spread of the means "
                  f"{spread:.2f} points"
                  + (f", largest seed std {max(stds):.2f} points." if stds else ".")]
    if any(series.values()):
        plots.accuracy_curves(series, figs / f"{key}.png", metric="val_acc", title=title)
        lines += ["", f"![{title}: validation accuracy per epoch](figures/{key}.png)"]
    return lines + [""]


def _curves(figs: Path) -> list[str]:
    """The approximated derivatives themselves."""
    from stbp import plots

    curves = [(f"h{i} {n}, a = 1", n, 1.0)
              for i, n in enumerate(("rectangular", "polynomial", "sigmoid", "gaussian"), 1)]
    curves += [(f"h1, a = {a:g}", "rectangular", a) for a in (0.25, 0.5, 2.0)]
    plots.surrogate_shapes(curves, figs / "surrogates.png")
    return ["## The approximated derivatives", "",
            "![h1-h4 at a = 1 and h1 at the other widths](figures/surrogates.png)", ""]


def _firing_table(out: Path, seed0: int, budget: Budget, test_split, figs: Path) -> list[str]:
    """Firing statistics of each setting (the first seed's best model)."""
    from stbp import plots

    limit = min(budget.limit_eval or 1000, 1000)
    lines = ["## Firing rate per layer and synaptic operations", "",
             f"Best-validation model of seed {seed0}, on the first {limit:,} test images "
             "(`stbp eval` reports the same on the whole test split). Rate = spikes per neuron "
             "per step; SynOps = weight accumulates triggered by input spikes, per image over "
             "all T steps; SynOps / ANN MAC compares them with the multiply-accumulates of a "
             "non-spiking network of the same shape (one forward pass).", "",
             "| setting | rate, hidden | rate, output | spikes / image | SynOps / image "
             "| SynOps / ANN MAC |", "|---|---|---|---|---|---|"]
    rates: dict[str, list[dict[str, Any]]] = {}
    for name in configs():
        firing = _firing(out, name, seed0, limit, test_split)
        if firing is None:
            continue
        row, per_layer = label(name), firing["layers"]
        lines.append(f"| {row} | {per_layer[0]['rate']:.3f} | {per_layer[-1]['rate']:.3f} | "
                     f"{firing['spikes_per_sample']:,.0f} | {firing['synops_per_sample']:,.0f} | "
                     f"{firing['synops_per_ann_mac']:.2f} |")
        rates[row] = per_layer
    if rates:
        plots.layer_rates(rates, figs / "rates.png")
        lines += ["", "![mean firing rate per layer](figures/rates.png)", ""]
    return lines


def _one_digit(out: Path, seed0: int, test_split, figs: Path) -> list[str]:
    """A spike raster and membrane trace of one test digit (the base setting)."""
    from stbp import plots
    from stbp.runs import load_run
    from stbp.seeds import EVAL_SEED, generator
    from stbp.stats import trace

    base = out / "runs" / "base" / f"seed{seed0}"
    if not (base / "best.pt").is_file():
        return []
    model, cfg, _, _ = load_run(base)
    test = test_split()
    x = test.inputs(torch.tensor([0]), steps=cfg["encoding"]["steps"],
                    generator=generator(EVAL_SEED, 0))
    label0 = int(test.labels[0])
    neuron = plots.output_neuron(model)
    plots.raster(trace(model, x), figs / "raster.png",
                 threshold=None if neuron is None else neuron.threshold,
                 label=label0, title=f"base, seed {seed0}: test digit 0 (label {label0})")
    return ["## One test digit through the network", "",
            "Input spikes, the hidden and output layers' spikes (neurons that fired at least "
            "once), and the output neurons' membrane potentials u^t against V_th "
            f"(base setting, seed {seed0}, best-validation model).", "",
            "![spike raster and membrane trace](figures/raster.png)", ""]


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _version() -> str:
    from stbp import __version__

    return __version__
