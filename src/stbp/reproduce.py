"""``stbp reproduce``: the paper's analyses on the MNIST MLP preset, as one command and a report.

Wu et al. (2018) argue that (1) the temporal-domain (TD) error path of STBP matters — training
with the spatial domain only ("SD only", our ``neuron.temporal = false``) is worse — and (2)
that the choice of approximated derivative h1–h4 matters little. This module trains the grid
below on the ``mnist-mlp`` preset, ≥ 3 seeds per setting, and writes ``report.md`` with tables
(mean ± std of the validation-selected test accuracy) and PNG figures (:mod:`stbp.plots`).

Groups (each compares settings that differ from the preset in one thing):

- ``td``: SD+TD (STBP) vs SD only;
- ``surrogate``: h1 rectangular, h2 polynomial (the preset), h3 sigmoid, h4 gaussian, a = 1;
- ``width``: h1 with a = 0.25, 0.5, 1, 2;
- ``reset``: E4' (reset to zero, the preset) vs the paper's E4, f(o) = τ·exp(−o/τ);
- ``steps``: T = 5, 10, 20, 30.

Settings that resolve to the same configuration (e.g. h1 at a = 1 in two groups) are trained
once. Every run is an ordinary ``stbp train`` run directory under ``OUT/runs``; finished runs
are kept and interrupted ones resumed when the command is run again with the same ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stbp.checks import require_positive_int
from stbp.config import load_config
from stbp.errors import StbpError
from stbp.io import atomic_write
from stbp.runlock import RunLock

__all__ = ["GROUPS", "Budget", "FULL", "QUICK", "plan", "child_env", "reproduce", "write_report"]

PRESET = "mnist-mlp"
MANIFEST = "reproduce.json"


@dataclass(frozen=True)
class Setting:
    """One row of a group: a label and the ``--set`` overrides applied to the preset."""

    label: str
    overrides: tuple[str, ...] = ()


#: key -> (title, what it tests, settings). The first setting of a group is its reference.
GROUPS: dict[str, tuple[str, str, tuple[Setting, ...]]] = {
    "td": (
        "Temporal-domain error path: SD+TD (STBP) vs SD only",
        "SD only drops both temporal terms of E6–E7 (u^t and o^t enter step t+1 detached).",
        (Setting("SD+TD (STBP)"), Setting("SD only", ("neuron.temporal=false",))),
    ),
    "surrogate": (
        "Approximated derivative h1–h4 (a = 1)",
        "The curve that replaces dg/du in the backward (paper Eqs. 23–26).",
        (
            Setting("h1 rectangular", ("neuron.surrogate=rectangular",)),
            Setting("h2 polynomial"),
            Setting("h3 sigmoid", ("neuron.surrogate=sigmoid",)),
            Setting("h4 gaussian", ("neuron.surrogate=gaussian",)),
        ),
    ),
    "width": (
        "Width a of h1 (rectangular)",
        "h1 = (1/a)·1[|u − V_th| < a/2]: a narrower window passes gradient to fewer neurons.",
        tuple(
            Setting(f"h1, a = {a:g}", ("neuron.surrogate=rectangular",)
                    + (() if a == 1 else (f"neuron.width={a}",)))
            for a in (0.25, 0.5, 1.0, 2.0)
        ),
    ),
    "reset": (
        "Reset form: E4' (reset to zero) vs the paper's E4",
        "E4': f(o) = τ(1 − o); E4: f(o) = τ·exp(−o/τ). They differ in the reset's gradient.",
        (Setting("E4' f = τ(1−o) (preset)"), Setting("E4 f = τ·exp(−o/τ)", ("neuron.reset=paper",))),
    ),
    "steps": (
        "Time window T",
        "The number of time steps each digit is presented for (Bernoulli rate coding).",
        tuple(Setting(f"T = {t}", () if t == 30 else (f"encoding.steps={t}",))
              for t in (5, 10, 20, 30)),
    ),
}


@dataclass(frozen=True)
class Budget:
    """What each run trains on: epochs, and optional limits on the data (``None`` = all)."""

    epochs: int
    limit_train: int | None = None
    limit_eval: int | None = None

    def describe(self) -> str:
        train = f"the first {self.limit_train:,} training images" if self.limit_train else (
            "all 55,000 training images")
        ev = f"the first {self.limit_eval:,} validation and test images" if self.limit_eval else (
            "all 5,000 validation and 10,000 test images")
        return f"{self.epochs} epoch{'s' if self.epochs > 1 else ''} on {train}, evaluated on {ev}"


#: the committed report (docs/reproduce/): full data, a shortened schedule (see the README)
FULL = Budget(epochs=5)
#: `--quick`: minutes on 2 cores
QUICK = Budget(epochs=2, limit_train=4000, limit_eval=1000)


@dataclass(frozen=True)
class Run:
    slug: str  # names the configuration, e.g. "base", "surrogate-rectangular_width-0.5"
    overrides: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.slug}/seed{self.seed}"


def _slug(overrides: tuple[str, ...]) -> str:
    if not overrides:
        return "base"
    parts = []
    for item in sorted(overrides):
        key, _, value = item.partition("=")
        parts.append(f"{key.split('.')[-1]}-{value}")
    return "_".join(parts)


def _configs() -> dict[str, tuple[str, ...]]:
    """slug -> overrides of every distinct configuration in :data:`GROUPS`."""
    out: dict[str, tuple[str, ...]] = {}
    for _, _, settings in GROUPS.values():
        for s in settings:
            out.setdefault(_slug(s.overrides), tuple(sorted(s.overrides)))
    return out


def plan(seeds: list[int]) -> list[Run]:
    """Every run to train: all configurations for the first seed, then the next seed, …"""
    configs = _configs()
    return [Run(slug, ov, seed) for seed in seeds for slug, ov in configs.items()]


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def _check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise StbpError(f"--out {out}: {MANIFEST} is unreadable; use another --out") from None
    keys = ("preset", "epochs", "limit_train", "limit_eval")
    diffs = [f"{k} = {manifest[k]!r} (saved: {saved.get(k)!r})" for k in keys
             if saved.get(k) != manifest[k]]
    if diffs:
        raise StbpError(
            f"--out {out} holds a reproduction with other settings: {'; '.join(diffs)}; "
            "use another --out, or the same options to continue it"
        )


def _train_command(run: Run, budget: Budget, run_dir: Path, data_dir: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "stbp.cli", "train", "--preset", PRESET,
           "--seed", str(run.seed), "--epochs", str(budget.epochs), "--out", str(run_dir),
           "--no-progress"]
    for item in run.overrides:
        cmd += ["--set", item]
    if budget.limit_train:
        cmd += ["--limit-train", str(budget.limit_train)]
    if budget.limit_eval:
        cmd += ["--limit-eval", str(budget.limit_eval)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    if (run_dir / "last.pt").is_file():
        cmd.append("--resume")
    return cmd


def child_env(jobs: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The training processes' environment: the cores split between ``jobs`` unless the user
    set ``OMP_NUM_THREADS``/``NUMBA_NUM_THREADS``."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads, **(environ or os.environ)}


def reproduce(
    out: str | os.PathLike,
    *,
    budget: Budget = FULL,
    seeds: list[int] | None = None,
    jobs: int = 1,
    data_dir: str | os.PathLike | None = None,
    log=print,
) -> Path:
    """Train every run of :func:`plan` that is not finished in ``out``, then write the report.

    ``jobs`` runs train side by side, each in its own process with ``cores // jobs`` threads
    (:func:`child_env`); ``out`` is locked meanwhile (:mod:`stbp.runlock`). Returns the report.
    """
    seeds = [0, 1, 2] if seeds is None else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise StbpError(f"--seeds must be integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StbpError(f"--seeds has repeats: {seeds}")
    require_positive_int(jobs, "--jobs")
    for name in ("epochs", "limit_train", "limit_eval"):
        if getattr(budget, name) is not None:
            require_positive_int(getattr(budget, name), f"--{name.replace('_', '-')}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StbpError(f"--out {out}: exists and is not a directory")
    with RunLock(out, what="--out"):  # one reproduce per folder (each run locks its own too)
        return _reproduce(out, budget, seeds, jobs, data_dir, log)


def _reproduce(out: Path, budget: Budget, seeds: list[int], jobs: int, data_dir: Any, log) -> Path:
    runs = plan(seeds)
    for run in runs:  # every configuration is valid before anything is trained
        load_config(PRESET, overrides=list(run.overrides))
    from stbp.data.splits import load_splits
    load_splits(load_config(PRESET), data_dir)  # the data is there (or fetched) before training
    manifest = {"preset": PRESET, "epochs": budget.epochs, "limit_train": budget.limit_train,
                "limit_eval": budget.limit_eval}
    _check_manifest(out, manifest)
    saved_seeds: list[int] = []
    if (out / MANIFEST).is_file():
        saved_seeds = json.loads((out / MANIFEST).read_text()).get("seeds", [])
    manifest["seeds"] = sorted(set(saved_seeds) | set(seeds))
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    todo = [r for r in runs if not (out / "runs" / r.name / "summary.json").is_file()]
    log(f"stbp reproduce: {len(runs)} runs ({len(_configs())} settings x {len(seeds)} seeds), "
        f"{len(runs) - len(todo)} already done; {budget.describe()}; {jobs} at a time -> {out}")
    env = child_env(jobs)
    (out / "logs").mkdir(exist_ok=True)
    failures: list[str] = []
    t0 = time.perf_counter()

    def one(run: Run) -> tuple[Run, int, float]:
        run_dir = out / "runs" / run.name
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = _train_command(run, budget, run_dir, data_dir and str(data_dir))
        log_path = out / "logs" / f"{run.slug}-seed{run.seed}.log"
        start = time.perf_counter()
        with open(log_path, "a") as fh:
            fh.write("$ " + shlex.join(cmd) + "\n")
            fh.flush()
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        return run, rc, time.perf_counter() - start

    done = len(runs) - len(todo)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, r) for r in todo]
        for fut in as_completed(futures):
            run, rc, secs = fut.result()
            done += 1
            if rc != 0:
                failures.append(f"{run.name} (exit {rc}; log: {out}/logs/{run.slug}-seed{run.seed}.log)")
                log(f"[{done}/{len(runs)}] {run.name}: FAILED (exit {rc})")
                continue
            s = json.loads((out / "runs" / run.name / "summary.json").read_text())
            log(f"[{done}/{len(runs)}] {run.name}: test {s['test_acc']:.2f} % "
                f"(val {s['best_val_acc']:.2f} %, epoch {s['best_epoch']}) in {secs:.0f} s; "
                f"{(time.perf_counter() - t0) / 60:.1f} min so far")
    report = write_report(out, data_dir=data_dir)
    if failures:
        raise StbpError(f"{len(failures)} run(s) failed: {'; '.join(failures)}; the report "
                        f"{report} covers the others; run the same command again to retry")
    return report


# ------------------------------------------------------------------------------------- report


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _finished(out: Path, slug: str, seeds: list[int]) -> list[tuple[int, dict, list[dict]]]:
    from stbp.plots import read_history

    got = []
    for seed in seeds:
        d = out / "runs" / slug / f"seed{seed}"
        if (d / "summary.json").is_file():
            got.append((seed, json.loads((d / "summary.json").read_text()), read_history(d)))
    return got


def _firing(out: Path, slug: str, seed: int, limit: int | None, test_split) -> dict[str, Any] | None:
    """Firing statistics of one run's best model on the first ``limit`` test images (cached);
    ``test_split()`` gives the MNIST test split (the same images for every setting)."""
    from stbp.runs import evaluate, load_run
    from stbp.stats import FiringMonitor

    run_dir = out / "runs" / slug / f"seed{seed}"
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
    from stbp import plots
    from stbp.data.splits import load_splits
    from stbp.runs import load_run
    from stbp.seeds import EVAL_SEED, generator
    from stbp.stats import trace

    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        raise StbpError(f"--out {out}: no {MANIFEST}; run `stbp reproduce --out {out}` first")
    manifest = json.loads(path.read_text())
    seeds = manifest["seeds"]
    budget = Budget(manifest["epochs"], manifest["limit_train"], manifest["limit_eval"])
    figs = out / "figures"
    lines: list[str] = []
    configs = _configs()
    results = {slug: _finished(out, slug, seeds) for slug in configs}
    n_done = sum(len(v) for v in results.values())
    total_s = sum(s["seconds"] for v in results.values() for _, s, _ in v)
    first = next((s for v in results.values() for _, s, _ in v), None)
    quick = budget != FULL
    opts = []
    if quick:
        opts.append("--quick" if budget == QUICK else
                    f"--epochs {budget.epochs}" + (f" --limit-train {budget.limit_train}"
                                                   if budget.limit_train else "")
                    + (f" --limit-eval {budget.limit_eval}" if budget.limit_eval else ""))
    if seeds != [0, 1, 2]:
        opts.append("--seeds " + " ".join(map(str, seeds)))
    command = " ".join(["stbp reproduce", *opts, f"--out {out.name}"])
    lines += [
        "# STBP analyses on the MNIST MLP (784-800-10)",
        "",
        f"Made by `{command}` (stbp {_version()}, torch {torch.__version__}).",
        "",
        f"- Base: the `{PRESET}` preset (h2, a = 1, τ = 0.1, V_th = 0.5, E4' reset, T = 30, "
        "Bernoulli input, MSE on the output rate, Adam, cosine schedule, 2-px shift), changed "
        "in one setting per row.",
        f"- Budget per run: {budget.describe()}"
        + (" (shrunk by `--quick`; the full report uses 5 epochs on the full splits)." if quick
           else " (the preset trains 30 epochs; this shortened schedule keeps the whole grid "
                "affordable on 2 cores — accuracies are therefore below the preset's 98.9 %)."),
        f"- Seeds {', '.join(map(str, seeds))} per setting: {n_done} finished runs of "
        f"{len(configs) * len(seeds)}, {_duration(total_s)} of training and evaluation in all"
        + (f" ({first['threads']} thread(s) per run)" if first else "") + ".",
        f"- Machine: {_machine()}.",
        "- Accuracy = test accuracy of the epoch with the best validation accuracy (the "
        "validation split is the last 5,000 training images, never trained on"
        + (f"; the first {budget.limit_eval:,} of them and of the test images here"
           if budget.limit_eval else "") + "), mean ± std "
        "over seeds. Input spike trains of "
        "the evaluation are fixed per seed.",
        "",
    ]
    for key, (title, what, settings) in GROUPS.items():
        lines += [f"## {title}", "", what, "",
                  "| setting | test acc. (val-selected), % | best val. acc., % | best epoch "
                  "| s / run | runs with a silent output neuron |",
                  "|---|---|---|---|---|---|"]
        series = {}
        means = []
        for s in settings:
            slug = _slug(s.overrides)
            got = results[slug]
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
            stds = [statistics.stdev([x["test_acc"] for _, x, _ in results[_slug(s.overrides)]])
                    for s in settings if len(results[_slug(s.overrides)]) > 1]
            lines += ["", f"Highest mean: {max(means)[1]} ({max(means)[0]:.2f} %); lowest: "
                      f"{min(means)[1]} ({min(means)[0]:.2f} %); spread of the means "
                      f"{spread:.2f} points"
                      + (f", largest seed std {max(stds):.2f} points." if stds else ".")]
        if any(series.values()):
            plots.accuracy_curves(series, figs / f"{key}.png", metric="val_acc", title=title)
            lines += ["", f"![{title}: validation accuracy per epoch](figures/{key}.png)"]
        lines.append("")

    # the curves themselves
    curves = [(f"h{i} {n}, a = 1", n, 1.0)
              for i, n in enumerate(("rectangular", "polynomial", "sigmoid", "gaussian"), 1)]
    curves += [(f"h1, a = {a:g}", "rectangular", a) for a in (0.25, 0.5, 2.0)]
    plots.surrogate_shapes(curves, figs / "surrogates.png")
    lines += ["## The approximated derivatives", "",
              "![h1-h4 at a = 1 and h1 at the other widths](figures/surrogates.png)", ""]

    # firing statistics of each setting (first seed's best model)
    seed0 = seeds[0]
    limit = min(budget.limit_eval or 1000, 1000)
    lines += ["## Firing rate per layer and synaptic operations", "",
              f"Best-validation model of seed {seed0}, on the first {limit:,} test images "
              "(`stbp eval` reports the same on the whole test split). Rate = spikes per neuron "
              "per step; SynOps = weight accumulates triggered by input spikes, per image over "
              "all T steps; SynOps / ANN MAC compares them with the multiply-accumulates of a "
              "non-spiking network of the same shape (one forward pass).", "",
              "| setting | rate, hidden | rate, output | spikes / image | SynOps / image "
              "| SynOps / ANN MAC |", "|---|---|---|---|---|---|"]
    loaded: dict[str, Any] = {}

    def test_split():  # read MNIST once, and only if a figure or table needs it
        if "test" not in loaded:
            loaded["test"] = load_splits(load_config(PRESET), data_dir)[0]["test"]
        return loaded["test"]

    rates: dict[str, list[dict[str, Any]]] = {}
    for slug in configs:
        firing = _firing(out, slug, seed0, limit, test_split)
        if firing is None:
            continue
        label = _label(slug)
        layers = firing["layers"]
        lines.append(f"| {label} | {layers[0]['rate']:.3f} | {layers[-1]['rate']:.3f} | "
                     f"{firing['spikes_per_sample']:,.0f} | {firing['synops_per_sample']:,.0f} | "
                     f"{firing['synops_per_ann_mac']:.2f} |")
        rates[label] = layers
    if rates:
        plots.layer_rates(rates, figs / "rates.png")
        lines += ["", "![mean firing rate per layer](figures/rates.png)", ""]

    base = out / "runs" / "base" / f"seed{seed0}"
    if (base / "best.pt").is_file():
        model, cfg, _, _ = load_run(base)
        test = test_split()
        x = test.inputs(torch.tensor([0]), steps=cfg["encoding"]["steps"],
                        generator=generator(EVAL_SEED, 0))
        label0 = int(test.labels[0])
        neuron = plots.output_neuron(model)
        plots.raster(trace(model, x), figs / "raster.png",
                     threshold=None if neuron is None else neuron.threshold,
                     label=label0, title=f"base, seed {seed0}: test digit 0 (label {label0})")
        lines += ["## One test digit through the network", "",
                  "Input spikes, the hidden and output layers' spikes (neurons that fired at least "
                  "once), and the output neurons' membrane potentials u^t against V_th "
                  f"(base setting, seed {seed0}, best-validation model).", "",
                  "![spike raster and membrane trace](figures/raster.png)", ""]
    report = out / "report.md"
    atomic_write(report, "\n".join(lines))
    return report


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _label(slug: str) -> str:
    for _, _, settings in GROUPS.values():
        for s in settings:
            if _slug(s.overrides) == slug:
                return s.label if slug != "base" else "base (preset)"
    return slug


def _version() -> str:
    from stbp import __version__

    return __version__


def main_args(quick: bool, epochs: int | None, limit_train: int | None,
              limit_eval: int | None) -> Budget:
    """The budget the command-line options describe."""
    b = QUICK if quick else FULL
    return Budget(
        epochs if epochs is not None else b.epochs,
        limit_train if limit_train is not None else b.limit_train,
        limit_eval if limit_eval is not None else b.limit_eval,
    )

