"""Print a Markdown table of finished runs (from their summary.json), with mean ± std.

Usage: python scripts/results_table.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(dirs: list[str]) -> int:
    rows = []
    for d in dirs:
        s = json.loads((Path(d) / "summary.json").read_text())
        rows.append((Path(d).name, s))
    print("| run | seed | epochs | best epoch (val) | val acc | test acc (val-selected) "
          "| best test, any epoch | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['seed']} | {s['epochs']} | {s['best_epoch']} | {s['best_val_acc']:.2f} "
              f"| {s['test_acc']:.2f} | {s['best_test_acc_any_epoch']:.2f} (ep {s['best_test_epoch']}) "
              f"| {s['seconds'] / 60:.0f} min |")
    if len(rows) > 1:
        tests = [s["test_acc"] for _, s in rows]
        vals = [s["best_val_acc"] for _, s in rows]
        print(f"| mean ± std (n={len(rows)}) | | | | {statistics.mean(vals):.2f} ± "
              f"{statistics.stdev(vals):.2f} | {statistics.mean(tests):.2f} ± "
              f"{statistics.stdev(tests):.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
