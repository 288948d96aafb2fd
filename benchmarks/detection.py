"""Detection on a scene folder, each way of running the windows side by side: AP and wall time.

For one trained object/background run (``stbp train --preset detect-cnn ...``), every
combination of

- windows: ``each`` (every window cropped, resized and run on its own: the reference) and
  ``shared`` (one fully convolutional pass per pyramid level; needs ``[model] padding =
  "valid"``),
- readout: ``rate`` (the output layer's firing rates) and ``current`` (its mean input current),

is run over the scenes (``stbp scenes`` output, e.g. ``bench/scenes/val``) with the same
threads, and the AP@0.5 (box voting and plain NMS), the number of windows scored and the wall
time are printed, with each case's time as a ratio of the first case's.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/detection.py --run RUN \\
        --scenes bench/scenes/val [--windows each shared] [--readout rate current] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from stbp.detect import DEFAULT_NMS_IOU, DEFAULT_STRIDE, Detector, evaluate_scenes


def _window_accuracy(run: str) -> dict[str, float]:
    from stbp.data.splits import load_splits
    from stbp.runs import eval_options, evaluate, load_run, saved_limit_eval

    model, cfg, _, _ = load_run(run)
    classes = cfg["data"]["classes"]
    groups = torch.tensor([0 if c == "background" else 1 for c in classes])
    data, _ = load_splits(cfg, None)
    limit, seed = saved_limit_eval(run), cfg["train"]["seed"]
    kw = dict(eval_options(cfg), groups=groups)
    steps = cfg["encoding"]["steps"]
    return {"val_two_class": evaluate(model, data["val"].subset(limit), steps, seed=seed, **kw),
            "test_two_class": evaluate(model, data["test"].subset(limit), steps, seed=seed + 1, **kw)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a run trained on object/background windows")
    ap.add_argument("--scenes", required=True, help="a scene folder with boxes.json")
    ap.add_argument("--windows", nargs="+", default=["each", "shared"], choices=["each", "shared"])
    ap.add_argument("--readout", nargs="+", default=["rate", "current"], choices=["rate", "current"])
    ap.add_argument("--limit", type=int, default=None, help="only the first N scenes")
    ap.add_argument("--stride", type=float, default=DEFAULT_STRIDE,
                    help=f"window step as a fraction of its side (default {DEFAULT_STRIDE:g})")
    ap.add_argument("--nms-iou", type=float, default=DEFAULT_NMS_IOU,
                    help=f"NMS overlap (default {DEFAULT_NMS_IOU:g})")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--window-accuracy", action="store_true",
                    help="also the run's two-class (object/background) window accuracy on its "
                    "validation and test windows: the paper's metric, every class but the "
                    "background counted as object")
    args = ap.parse_args(argv)
    print(f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; run {args.run}; scenes {args.scenes}")
    rows = []
    for windows in args.windows:
        for readout in args.readout:
            det = Detector.from_run(args.run, windows=windows, readout=readout, stride=args.stride)
            t0 = time.perf_counter()
            res = evaluate_scenes(det, args.scenes, limit=args.limit, nms_iou=args.nms_iou)
            seconds = time.perf_counter() - t0
            rows.append({"windows": windows, "readout": readout, "stride": det.stride,
                         "step_px": det.shared.stride if det.shared is not None else None,
                         "nms_iou": args.nms_iou, "ap": res["ap"],
                         "ap_other": res["ap_other"], "scenes": res["scenes"],
                         "windows_scored": res.get("windows_scored"), "seconds": seconds})
            print(f"{windows:>6} {readout:>7}  AP@0.5 {100 * res['ap']:5.1f} %  (other voting "
                  f"{100 * res['ap_other']:5.1f} %)  {res['scenes']} scenes  {seconds:7.1f} s  "
                  f"{seconds / rows[0]['seconds']:.3f}x", flush=True)
    extra = _window_accuracy(args.run) if args.window_accuracy else {}
    if extra:
        print(f"two-class window accuracy: val {extra['val_two_class']:.2f} %, test "
              f"{extra['test_two_class']:.2f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "scenes": args.scenes, "rows": rows, **extra}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
