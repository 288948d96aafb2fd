#!/usr/bin/env python
"""Evaluate the shipped models (stbp.pretrained) on their whole test sets; print a table.

    python scripts/eval_pretrained.py [NAME ...] [--data-dir DIR] [--limit N]

NAME: the models to evaluate (default: all shipped, or those in $STBP_PRETRAINED_DIR). Each is
evaluated with the test spike trains the trainer and `stbp eval` draw, so the figure is
comparable to its card's ``test_acc`` (measured on ``splits.test`` samples: fewer when the run
was trained with --limit-eval). A model whose data is not found here is listed as skipped, with
the reason. Data: --data-dir for every model named, else the usual lookup ($STBP_DATA; a folder
dataset's path, e.g. bench/windows from `stbp scenes --out bench`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help="models to evaluate (default: all)")
    p.add_argument("--data-dir", help="the dataset folder (default: the usual lookup)")
    p.add_argument("--limit", type=int, help="only the first N test samples (default: all)")
    args = p.parse_args(argv)

    from stbp import pretrained
    from stbp.errors import StbpError

    names = args.names or pretrained.names()
    if not names:
        print(f"no model is shipped in {pretrained.directory()}")
        return 0
    print(f"{'model':12s} {'dataset':8s} {'samples':>7s} {'test %':>7s} {'card %':>7s} "
          f"{'card n':>6s} {'diff':>6s} {'2σ':>5s} {'s':>6s}")
    failed = 0
    for name in names:
        try:
            card = pretrained.card(name)
            t0 = time.perf_counter()
            acc, n = pretrained.test_accuracy(name, limit=args.limit, data_dir=args.data_dir)
        except StbpError as err:
            print(f"{name:12s} skipped: {err}")
            failed += 1
            continue
        ref = card["test_acc"]
        sigma = 100 * math.sqrt(max(ref / 100 * (1 - ref / 100), 1e-4) / n)
        print(f"{name:12s} {card['dataset']:8s} {n:7d} {acc:7.2f} {ref:7.2f} "
              f"{card['splits']['test'] or 0:6d} {acc - ref:+6.2f} {2 * sigma:5.2f} "
              f"{time.perf_counter() - t0:6.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
