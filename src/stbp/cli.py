"""The ``stbp`` command: train, eval, plot, export, reproduce, scenes, detect, presets, pretrained."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from stbp.errors import StbpError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stbp",
        description="Train spiking neural networks with spatio-temporal backpropagation "
        "(Wu et al. 2018).",
    )
    from stbp import __version__

    p.add_argument("--version", action="version", version=f"stbp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a network from a preset or config file")
    t.add_argument("--preset", help="a preset name (see `stbp presets`)")
    t.add_argument("--config", help="a TOML config file (applied on top of --preset, if given)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=V",
                   help="override one setting, e.g. --set train.lr=0.0005 (repeatable)")
    t.add_argument("--dataset", metavar="NAME|folder:PATH", help=_dataset_help())
    t.add_argument("--epochs", type=int, help="number of epochs (overrides train.epochs)")
    t.add_argument("--seed", type=int, help="random seed (overrides train.seed)")
    t.add_argument("--data-dir", help="folder holding the dataset files: MNIST's IDX files, or "
                   "N-MNIST's Train/ and Test/ (or Train.zip, Test.zip), or a folder dataset's "
                   "images (replaces data.path) (default: $STBP_DATA/mnist or /nmnist; MNIST also "
                   "from the cache, then a download)")
    t.add_argument("--out", help="run directory (default: runs/PRESET-seedS-TIME)")
    t.add_argument("--limit-train", type=int, help="use only the first N training images")
    t.add_argument("--limit-eval", type=int,
                   help="use only the first N validation and test images")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out (same result as uninterrupted)")
    t.add_argument("--nproc", type=int, default=1,
                   help="train data-parallel in N local processes (same global batch, same "
                   "result; CPU threads are split between them)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a trained run on the validation and test splits")
    _source_arguments(e)
    e.add_argument("--data-dir", help="folder holding the dataset files")
    e.add_argument("--limit-eval", type=int, help="use only the first N val/test images "
                   "(default: the run's own --limit-eval, as in training; the output says which)")

    pl = sub.add_parser("plot", help="figures of a trained run: accuracy curves, surrogate, "
                        "firing rate per layer, spike raster and membrane trace")
    _source_arguments(pl)
    pl.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots; with "
                    "--pretrained: NAME-plots)")
    pl.add_argument("--data-dir", help="folder holding the dataset files")
    pl.add_argument("--sample", type=int, default=0,
                    help="the test sample shown in the raster (default: 0)")
    pl.add_argument("--limit-eval", type=int,
                    help="accuracy and firing rates over the first N test samples (default: the "
                    "run's own --limit-eval, at most 1000)")

    ex = sub.add_parser("export", help="write a trained run's network as a NIR graph (for other "
                        "simulators and neuromorphic chips)")
    _source_arguments(ex)
    ex.add_argument("--out", required=True, help="the NIR file to write (HDF5), e.g. net.nir")
    ex.add_argument("--dt", type=float, default=None,
                    help="seconds per time step in the NIR time constants (default 1e-4, as "
                    "snnTorch assumes)")
    ex.add_argument("--approximate", action="store_true",
                    help="write the paper's reset E4 as a reset to zero (NIR has no E4)")
    ex.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    rp = sub.add_parser(
        "reproduce", help="the paper's analyses on the MNIST MLP (SD vs SD+TD, h1-h4, width, "
        "reset, T), >= 3 seeds each, as a Markdown report with figures")
    rp.add_argument("--quick", action="store_true",
                    help="2 epochs on 4,000 training images, 1,000 val/test images: minutes, "
                    "not hours (default: 5 epochs on the full splits)")
    rp.add_argument("--out", help="folder for the runs, report.md and figures/ "
                    "(default: reproduce, or reproduce-quick with --quick)")
    rp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(default: 0 1 2)")
    rp.add_argument("--jobs", type=int, default=1,
                    help="runs trained side by side, the CPU cores split between them (default 1)")
    rp.add_argument("--epochs", type=int, help="epochs per run (overrides the budget)")
    rp.add_argument("--limit-train", type=int, help="train on the first N training images")
    rp.add_argument("--limit-eval", type=int, help="use the first N validation and test images")
    rp.add_argument("--data-dir", help="folder holding MNIST's IDX files")
    rp.add_argument("--report-only", action="store_true",
                    help="only (re)write the report from the runs finished in --out")

    pr = sub.add_parser("presets", help="list the presets, or print one to copy and edit")
    pr.add_argument("name", nargs="?", help="print this preset's TOML")

    pt = sub.add_parser("pretrained", help="list the trained models shipped with stbp, or print one's "
                        "model card (use one with --pretrained NAME in eval, plot, export, detect)")
    pt.add_argument("name", nargs="?", help="print this model's card (JSON)")

    s = sub.add_parser("scenes", help="generate the detection benchmark: cluttered scenes of real "
                       "MNIST digits with boxes, and object/background windows to train on")
    s.add_argument("--out", required=True, help="a new folder for scenes/, windows/, benchmark.json")
    s.add_argument("--seed", type=int, default=0, help="the seed every scene follows from (default 0)")
    s.add_argument("--train", type=int, default=3000, help="training scenes (default 3000)")
    s.add_argument("--val", type=int, default=100, help="validation scenes (default 100)")
    s.add_argument("--test", type=int, default=100, help="test scenes (default 100)")
    s.add_argument("--labels", choices=["object", "digit"], default="object",
                   help="object windows as one class 'object' (the paper's two-class task, default) "
                   "or by digit, digit-0 ... digit-9 (a detector that names the digit)")
    s.add_argument("--data-dir", help="folder holding the four MNIST IDX files (default: as stbp train)")

    d = sub.add_parser("detect", help="detect objects with a trained object/background run: boxes "
                       "as JSON and an annotated PNG per image, or AP on a scene folder")
    d.add_argument("images", nargs="*", metavar="IMAGE", help="PNG/JPEG images to detect in")
    _source_arguments(d, run_help="a run directory trained on object/background windows",
                      pretrained_help="a shipped detector (detect-cnn, detect-ann; see `stbp pretrained`)")
    d.add_argument("--out", default="detections", help="output folder (default: detections)")
    d.add_argument("--scenes", metavar="DIR", help="instead of IMAGEs: evaluate on a scene folder "
                   "with boxes.json (e.g. BENCH/scenes/test) and print the AP at IoU 0.5 (ap), "
                   "and ap_other: the AP with box voting switched the other way (plain NMS, or "
                   "voting with --no-vote), from the same windows")
    d.add_argument("--scales", default=",".join(map(str, _default_scales())),
                   help="window sides in pixels, comma-separated (default: %(default)s)")
    d.add_argument("--stride", type=float, default=_detect_default("DEFAULT_STRIDE"),
                   help="window step as a fraction of its side (default: %(default).4g; shared "
                   "windows step by the multiple of the network's pooling stride nearest to it)")
    d.add_argument("--windows", default="auto", choices=["auto", "shared", "each"],
                   help="shared: every window of a scale in one fully convolutional pass (a network "
                   "with [model] padding = \"valid\"); each: every window cropped and run on its own "
                   "(the reference); auto (default): shared where the network allows it")
    d.add_argument("--readout", default="rate", choices=["rate", "current"],
                   help="a window's score from the output layer's firing rates (default) or its "
                   "mean input current (graded where rates tie)")
    d.add_argument("--min-score", type=float, default=0.5,
                   help="keep boxes scoring at least this (default %(default)g)")
    d.add_argument("--nms-iou", type=float, default=_detect_default("DEFAULT_NMS_IOU"),
                   help="drop a box overlapping a better one by more than this IoU (default %(default)g)")
    d.add_argument("--no-vote", action="store_true",
                   help="plain NMS: keep each best window as it is (default: box voting, see "
                   "stbp.boxes.box_vote)")
    d.add_argument("--background", default="background",
                   help="the run's background class name (default %(default)s)")
    d.add_argument("--limit", type=int, help="with --scenes: only the first N scenes")
    return p


def _source_arguments(p: argparse.ArgumentParser, *, run_help: str = "the run directory written by "
                      "`stbp train`", pretrained_help: str = "a trained model shipped with stbp "
                      "(see `stbp pretrained`)") -> None:
    """``--run DIR`` or ``--pretrained NAME`` (one of them), and ``--checkpoint``."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help=run_help)
    g.add_argument("--pretrained", metavar="NAME", help=pretrained_help)
    p.add_argument("--checkpoint", choices=["best", "last"],
                   help="the run's best-validation or last checkpoint (default: best; a shipped "
                   "model has only its best)")


def _trained(args: argparse.Namespace, data_dir: str | None = None):
    """The network ``--run`` or ``--pretrained`` names (:class:`stbp.runs.Trained`)."""
    if args.pretrained is not None:
        if args.checkpoint == "last":
            raise StbpError("--checkpoint last: a shipped model (--pretrained) is only its "
                            "best-validation checkpoint; drop --checkpoint")
        from stbp import pretrained

        return pretrained.trained(args.pretrained, data_dir=data_dir)
    from stbp.runs import open_run

    return open_run(args.run, args.checkpoint or "best", data_dir)


def _dataset_help() -> str:
    from stbp.data import registry

    forms = "; ".join(f"{s.name}{':' + s.argument.upper() if s.argument else ''}: {s.summary}"
                      for s in registry.specs())
    return f"the dataset (overrides data.dataset and the key NAME:VALUE sets): {forms}"


def _detect_default(name: str) -> float:
    import stbp.detect

    return getattr(stbp.detect, name)


def _default_scales() -> tuple[int, ...]:
    from stbp.data.scenes import SceneSpec

    return SceneSpec().window_scales


def _train(args: argparse.Namespace) -> int:
    from stbp.config import differences, load_config, resolve_dataset
    from stbp.train import train

    overrides = list(args.overrides)
    if args.epochs is not None:
        if args.epochs < 1:
            raise StbpError(f"--epochs must be >= 1, got {args.epochs}")
        overrides.append(f"train.epochs={args.epochs}")
    if args.seed is not None:
        if args.seed < 0:
            raise StbpError(f"--seed must be >= 0, got {args.seed}")
        overrides.append(f"train.seed={args.seed}")
    if args.resume:
        if not args.out:
            raise StbpError("--resume needs --out RUN_DIR (the run to continue)")
        saved = Path(args.out) / "config.toml"
        if not saved.is_file():
            raise StbpError(f"--resume: {saved} not found; nothing to resume")
        cfg = load_config(config=saved)
        if args.preset or args.config or overrides or args.dataset:
            # --preset/--config rebuild the settings from scratch; otherwise the options
            # given apply on top of the saved run.
            given = (load_config(args.preset, args.config, overrides, args.dataset)
                     if args.preset or args.config
                     else load_config(config=saved, overrides=overrides, dataset=args.dataset))
            diffs = differences(cfg, resolve_dataset(given, args.data_dir))
            if diffs:
                raise StbpError(
                    f"--resume: {'; '.join(diffs)} (from {saved}); a resumed run keeps its "
                    "settings: drop the option, or start a new run in another --out"
                )
    else:
        cfg = load_config(args.preset, args.config, overrides, args.dataset)
    out = args.out
    if out is None:
        name = args.preset or Path(args.config).stem
        out = args.out = f"runs/{name}-seed{cfg['train']['seed']}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = train(
        cfg, out, resume=args.resume, data_dir=args.data_dir, limit_train=args.limit_train,
        limit_eval=args.limit_eval, progress=not args.no_progress, nproc=args.nproc,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from stbp.runs import eval_trained

    if args.limit_eval is not None and args.limit_eval < 1:
        raise StbpError(f"--limit-eval must be >= 1, got {args.limit_eval}")
    result = eval_trained(_trained(args, args.data_dir), limit_eval=args.limit_eval)
    print(json.dumps(result, indent=2))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from stbp.plots import plot_run, plot_trained

    kw = dict(checkpoint=args.checkpoint or "best", sample=args.sample, limit_eval=args.limit_eval)
    if args.run is not None:
        result = plot_run(args.run, args.out, data_dir=args.data_dir, **kw)
    else:
        from stbp import pretrained

        trained = _trained(args, args.data_dir)
        result = plot_trained(trained, args.out or f"{args.pretrained}-plots",
                              history=pretrained.card(args.pretrained)["history"], **kw)
    print(json.dumps(result, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from stbp.config import dataset_info
    from stbp.export import DEFAULT_DT, to_nir, write_nir
    trained = _trained(args)
    model, cfg = trained.model, trained.cfg
    if Path(args.out).exists() and not Path(args.out).is_dir() and not args.force:
        raise StbpError(f"--out {args.out}: exists; pass --force to overwrite it")
    shape = (tuple(dataset_info(cfg["data"]).input) if cfg["model"]["kind"] == "cnn"
             else (cfg["model"]["sizes"][0],))
    dt = DEFAULT_DT if args.dt is None else args.dt
    graph = to_nir(model, shape, dt=dt, approximate=args.approximate)
    out = write_nir(graph, args.out)
    print(json.dumps({"nir": str(out), "input_shape": list(shape), "dt": dt,
                      "nodes": {k: type(v).__name__ for k, v in graph.nodes.items()}}, indent=2))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from stbp.reproduce import main_args, reproduce, write_report

    out = args.out or ("reproduce-quick" if args.quick else "reproduce")
    if args.report_only:
        print(write_report(out, data_dir=args.data_dir))
        return 0
    budget = main_args(args.quick, args.epochs, args.limit_train, args.limit_eval)
    report = reproduce(out, budget=budget, seeds=args.seeds, jobs=args.jobs,
                       data_dir=args.data_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(report)
    return 0


def _pretrained(args: argparse.Namespace) -> int:
    from stbp import pretrained

    if args.name:
        print(json.dumps(pretrained.card(args.name), indent=2))
        return 0
    available = pretrained.names()
    if not available:
        print(f"no trained model is shipped in {pretrained.directory()}")
        return 0
    for name in available:
        print(pretrained.summary_line(name, width=max(map(len, available))))
    print("\n`stbp pretrained NAME` prints a model's card; use one with --pretrained NAME in "
          "`stbp eval`, `plot`, `export`, `detect`")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from stbp.config import preset_description, preset_names, preset_path

    if args.name:
        print(preset_path(args.name).read_text(), end="")
        return 0
    names = preset_names()
    for name in names:
        print(f"{name:{max(map(len, names))}s}  {preset_description(name)}")
    print("\n`stbp presets NAME > my.toml` prints one to edit; train it with --config my.toml")
    return 0


def _scenes(args: argparse.Namespace) -> int:
    from stbp.data.mnist import load_mnist
    from stbp.data.scenes import write_benchmark

    if args.seed < 0:
        raise StbpError(f"--seed must be >= 0, got {args.seed}")
    for name in ("train", "val", "test"):
        if getattr(args, name) < 1:
            raise StbpError(f"--{name} must be >= 1, got {getattr(args, name)}")
    mnist = load_mnist(args.data_dir)  # validation = the last 5,000 training images
    t0 = time.perf_counter()
    summary = write_benchmark(args.out, mnist, seed=args.seed,
                              counts={"train": args.train, "val": args.val, "test": args.test},
                              labels=args.labels)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary, indent=2))
    return 0


def _detect(args: argparse.Namespace) -> int:
    from stbp.detect import Detector, evaluate_scenes, write_detections

    try:
        scales = [int(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        raise StbpError(f"--scales {args.scales!r}: expected integers separated by commas, e.g. 24,32,42") \
            from None
    for name in ("min_score", "nms_iou"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise StbpError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.limit is not None and args.limit < 1:
        raise StbpError(f"--limit must be >= 1, got {args.limit}")
    if args.scenes and args.images:
        raise StbpError("give IMAGEs or --scenes DIR, not both")
    detector = Detector.from_trained(_trained(args), background=args.background, scales=scales,
                                     stride=args.stride, vote=not args.no_vote,
                                     windows=args.windows, readout=args.readout)
    if args.scenes:
        t0 = time.perf_counter()
        result = evaluate_scenes(detector, args.scenes, nms_iou=args.nms_iou, limit=args.limit)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(result, indent=2))
        return 0
    results = write_detections(detector, args.images, args.out, min_score=args.min_score,
                               nms_iou=args.nms_iou)
    for r in results:
        print(f"{r['image']}: {len(r['detections'])} box(es) -> {Path(args.out) / Path(r['image']).stem}"
              ".json, .png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handlers = {"train": _train, "eval": _eval, "plot": _plot, "export": _export,
                "reproduce": _reproduce, "scenes": _scenes, "detect": _detect,
                "presets": _presets, "pretrained": _pretrained}
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command in ("train", "eval", "reproduce", "detect"):
            from stbp.malloc import apply_from_env

            apply_from_env()  # large buffers stay in the heap: no page faults every step
        return handlers[args.command](args)
    except StbpError as err:
        print(f"stbp: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output went away (`stbp ... | head`): not an error
        _quiet_stdout()
        return 0
    except OSError as err:  # the file system: a read-only folder, a full disk, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"stbp: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and not _out_of_memory(err):
            raise
        print("stbp: error: out of memory; lower encoding.steps, train.batch_size or "
              "train.eval_batch_size (the run folder keeps the last finished epoch)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stbp: interrupted" + _resume_hint(args), file=sys.stderr)
        return 130


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue, where that applies: a training run whose folder holds ``last.pt``."""
    out = getattr(args, "out", None)
    if args.command != "train" or not out or not (Path(out) / "last.pt").is_file():
        return ""
    return f" (continue with: stbp train --resume --out {out})"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
