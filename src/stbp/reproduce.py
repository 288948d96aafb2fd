"""``stbp reproduce``: the paper's analyses (:mod:`stbp.analyses`) trained as one command.

Every run is an ordinary ``stbp train`` run directory under ``OUT/runs``; finished runs are kept
and interrupted ones resumed when the command is run again with the same ``--out``; the report
is written at the end (:mod:`stbp.report`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from stbp.analyses import FULL, GROUPS, MANIFEST, PRESET, QUICK, Budget, Run, Setting, configs, plan
from stbp.checks import require_positive_int
from stbp.config import load_config
from stbp.errors import StbpError
from stbp.io import atomic_write
from stbp.report import write_report
from stbp.runlock import RunLock

__all__ = ["GROUPS", "Budget", "FULL", "QUICK", "Setting", "plan", "child_env", "reproduce",
           "write_report", "main_args"]


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
    log(f"stbp reproduce: {len(runs)} runs ({len(configs())} settings x {len(seeds)} seeds), "
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


def main_args(quick: bool, epochs: int | None, limit_train: int | None,
              limit_eval: int | None) -> Budget:
    """The budget the command-line options describe."""
    b = QUICK if quick else FULL
    return Budget(
        epochs if epochs is not None else b.epochs,
        limit_train if limit_train is not None else b.limit_train,
        limit_eval if limit_eval is not None else b.limit_eval,
    )

