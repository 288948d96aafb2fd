"""Print a Markdown table of finished runs (from their summary.json), with mean ± std.

A mean ± std row is added when all runs are seeds of one recipe. Each row names the settings
in which the run differs from its preset (DATASET-KIND: mnist-mlp, mnist-cnn, nmnist-mlp, ...).

Usage: python scripts/results_table.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from stbp.config import load_config


def _changes(run: Path) -> str:
    cfg = load_config(config=run / "config.toml")
    preset = load_config(f"{cfg['data']['dataset']}-{cfg['model']['kind']}")
    diffs = [
        f"{table}.{key}={cfg[table][key]}"
        for table in cfg
        for key in cfg[table]
        if key not in ("seed", "epochs") and preset[table].get(key) != cfg[table][key]
    ]
    return ", ".join(diffs) or "preset"


def main(dirs: list[str]) -> int:
    rows = []
    for d in dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        rows.append((Path(d), s))
    print("| run | changes vs preset | seed | epochs | best epoch (val) | val acc "
          "| test acc (val-selected) | best test, any epoch | wall time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, s in rows:
        print(f"| {run.name} | {_changes(run)} | {s['seed']} | {s['epochs']} | {s['best_epoch']} "
              f"| {s['best_val_acc']:.2f} | **{s['test_acc']:.2f}** "
              f"| {s['best_test_acc_any_epoch']:.2f} (ep {s['best_test_epoch']}) "
              f"| {s['seconds'] / 60:.0f} min |")
    same_recipe = len({(_changes(r), s["epochs"]) for r, s in rows}) == 1
    if len(rows) > 1 and same_recipe:  # seed replicates of one recipe
        tests = [s["test_acc"] for _, s in rows]
        vals = [s["best_val_acc"] for _, s in rows]
        print(f"| mean ± std (n={len(rows)}) | | | | | {statistics.mean(vals):.2f} ± "
              f"{statistics.stdev(vals):.2f} | {statistics.mean(tests):.2f} ± "
              f"{statistics.stdev(tests):.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
