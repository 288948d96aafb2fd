#!/usr/bin/env python
"""Ship a finished run's best model with the package (maintainers).

    python scripts/ship_pretrained.py RUN_DIR NAME --command "the exact command that trained it" \
        [--commit SHA] [--machine "..."] [--notes "..."] [--data-path bench/windows] [--force]

Reads RUN_DIR/best.pt, summary.json, config.toml and metrics.jsonl and writes
src/stbp/pretrained/NAME.pt (the checkpoint, without the machine's data path) and NAME.json (its
model card), each atomically; the model is read back through ``stbp.pretrained`` before the
script ends. ``--commit`` defaults to ``git rev-parse HEAD`` of this repository (give the commit
the run was trained at if it was an earlier one); ``--machine`` to the CPU model from
/proc/cpuinfo and the core count. docs/pretrained.md has the details.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise SystemExit(f"ship_pretrained: cannot read the commit ({err}); pass --commit SHA") from None
    return out.stdout.strip()


def machine() -> str:
    """``CPU model, N cores`` (the cores this process may use), or the platform's description."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    return f"{cpu or platform.processor() or platform.machine()}, {cores} cores ({platform.system()})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder of `stbp train`")
    p.add_argument("name", metavar="NAME", help="the model's name, e.g. mnist-mlp")
    p.add_argument("--command", required=True, help="the exact command that trained the run")
    p.add_argument("--commit", help="the commit of the code that trained it (default: git HEAD)")
    p.add_argument("--machine", help="where it was trained (default: from /proc/cpuinfo and nproc)")
    p.add_argument("--notes", default="", help="anything a user should know about this model")
    p.add_argument("--data-path", help="a folder dataset's path in the shipped config (default: "
                   "the path relative to here, else its last two parts, e.g. bench/windows)")
    p.add_argument("--to", default=str(REPO / "src" / "stbp" / "pretrained"),
                   help="the folder to write into (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace a model of that name")
    args = p.parse_args(argv)

    from stbp import pretrained
    from stbp.errors import StbpError

    try:
        card = pretrained.ship(args.run_dir, args.name, command=args.command,
                               commit=args.commit or git_commit(), machine=args.machine or machine(),
                               notes=args.notes, folder=args.to, data_path=args.data_path,
                               force=args.force)
    except StbpError as err:
        print(f"ship_pretrained: error: {err}", file=sys.stderr)
        return 2
    shown = {k: v for k, v in card.items() if k != "history"}
    print(json.dumps(shown, indent=2))
    print(f"wrote {Path(args.to) / args.name}.pt and .json ({len(card['history'])} epochs of history)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
