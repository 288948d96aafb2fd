"""Trained networks shipped with the package, ready to use without training.

Each model is two files in this folder (package data: a wheel ships them):

- ``NAME.pt`` — a checkpoint in the run format: ``torch.load(path(NAME), weights_only=True)``
  gives the dict a run's ``best.pt`` holds (``format``, the resolved ``config``, the ``model``
  weights, ``epoch``, ``val_acc``, ``limits``), less what belonged to the machine it was trained
  on (the data folder's path);
- ``NAME.json`` — its model card: the data and splits, the exact command, seed, commit, epochs,
  the validation-selected test accuracy, wall time, machine, threads, torch version, date,
  notes, the per-epoch ``history`` (for ``stbp plot``) and the checkpoint's ``sha256``.

>>> from stbp import pretrained
>>> pretrained.names()                      # doctest: +SKIP
['detect-ann', 'detect-cnn', 'mnist-cnn', 'mnist-mlp', 'nmnist-mlp']
>>> net = pretrained.load("mnist-mlp")      # doctest: +SKIP  (a SpikingNet in eval mode)

``STBP_PRETRAINED_DIR`` (or the ``folder`` argument) names another folder to read them from.
:func:`ship` writes one from a finished run (``scripts/ship_pretrained.py``; docs/pretrained.md).
This module is part of the application side (it reads run-format checkpoints through
:mod:`stbp.runs`); nothing in the library imports it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stbp.errors import StbpError
from stbp.io import atomic_write
from stbp.models import SpikingNet
from stbp.runs import Trained, describe_model, open_checkpoint, open_run, strict_json

__all__ = ["names", "path", "card", "load", "trained", "test_accuracy", "directory", "ship", "summary_line",
           "FOLDER_ENV", "CARD_FORMAT", "CARD_KEYS"]

#: the environment variable naming another folder of shipped models (tests, your own models)
FOLDER_ENV = "STBP_PRETRAINED_DIR"
CARD_FORMAT = "stbp-model-card-v1"
#: the keys every model card holds (docs/pretrained.md says what each means)
CARD_KEYS = ("format", "name", "dataset", "model", "splits", "command", "seed", "commit", "epochs",
             "best_epoch", "val_acc", "test_acc", "wall_time_s", "machine", "threads", "torch", "date",
             "notes", "history", "sha256")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
#: the per-epoch figures a card keeps from metrics.jsonl (what ``stbp plot`` draws)
_HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "seconds")


def directory(folder: str | os.PathLike | None = None) -> Path:
    """The folder the models are read from: ``folder``, else ``$STBP_PRETRAINED_DIR``, else the
    package's own."""
    if folder is None and os.environ.get(FOLDER_ENV):
        folder = os.environ[FOLDER_ENV]
        if not Path(folder).is_dir():
            raise StbpError(f"{FOLDER_ENV}={folder}: no such folder")
    return Path(__file__).parent if folder is None else Path(folder)


def names(folder: str | os.PathLike | None = None) -> list[str]:
    """The names of the shipped models, sorted (a name with either of its two files counts: the
    missing one is then an error naming it)."""
    d = directory(folder)
    if not d.is_dir():
        raise StbpError(f"pretrained models folder {d}: no such folder")
    return sorted({p.stem for p in d.iterdir()
                   if p.suffix in (".pt", ".json") and _NAME.match(p.stem) and p.is_file()})


def _known(name: str, folder: str | os.PathLike | None) -> Path:
    d = directory(folder)
    available = names(d)
    if not isinstance(name, str) or name not in available:
        shipped = ", ".join(available) if available else "none (no model is shipped in this folder)"
        raise StbpError(f"no pretrained model {name!r}; available: {shipped} (in {d})")
    return d


def path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of model ``name`` (the run format: ``torch.load(..., weights_only=True)``
    gives a dict with ``config`` and ``model`` as a run's ``best.pt``)."""
    p = _known(name, folder) / f"{name}.pt"
    if not p.is_file():
        raise StbpError(f"{p}: missing — pretrained model {name!r} has a card but no checkpoint "
                        "(a broken install or a half-shipped model; ship it again)")
    return p


def card(name: str, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model card of ``name``: a dict with at least :data:`CARD_KEYS`."""
    p = _known(name, folder) / f"{name}.json"
    if not p.is_file():
        raise StbpError(f"{p}: missing — pretrained model {name!r} has a checkpoint but no model card")
    try:
        value = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StbpError(f"{p}: not a valid model card (not JSON: {err})") from None
    except OSError as err:
        raise StbpError(f"{p}: cannot read ({err.strerror or err})") from None
    if not isinstance(value, dict):
        raise StbpError(f"{p}: not a valid model card (a JSON {type(value).__name__}, not an object)")
    missing = [k for k in CARD_KEYS if k not in value]
    if missing:
        raise StbpError(f"{p}: not a valid model card (missing {', '.join(missing)})")
    if value["name"] != name or value["format"] != CARD_FORMAT:
        raise StbpError(f"{p}: not a valid model card (name {value['name']!r}, format "
                        f"{value['format']!r}; expected {name!r}, {CARD_FORMAT!r})")
    return value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def trained(name: str, data_dir: str | os.PathLike | None = None,
            folder: str | os.PathLike | None = None) -> Trained:
    """Model ``name`` as :class:`stbp.runs.Trained` — what ``stbp eval``, ``plot``, ``export`` and
    ``detect`` use for ``--pretrained NAME``, as for a run's ``best.pt``. ``data_dir``: the data
    to evaluate it on (default: the usual lookup, ``$STBP_DATA``, or a folder dataset's path)."""
    info, p = card(name, folder), path(name, folder)
    try:
        digest = _sha256(p.read_bytes())
    except OSError as err:
        raise StbpError(f"{p}: cannot read ({err.strerror or err})") from None
    if digest != info["sha256"]:
        raise StbpError(f"{p}: corrupt or replaced — its sha256 {digest[:12]}… differs from the "
                        f"{str(info['sha256'])[:12]}… its model card records; reinstall stbp (or ship "
                        "the model again)")
    return open_checkpoint(p, name=name, source=f"--pretrained {name}", data_dir=data_dir)


def load(name: str, folder: str | os.PathLike | None = None) -> SpikingNet:
    """The network of model ``name``, built as its config describes, its weights loaded, in eval
    mode (as ``stbp eval`` builds a run's)."""
    return trained(name, folder=folder).model.eval()


def test_accuracy(name: str, *, limit: int | None = None, data_dir: str | os.PathLike | None = None,
                  folder: str | os.PathLike | None = None) -> tuple[float, int]:
    """Model ``name``'s accuracy (in %) on the first ``limit`` samples of its dataset's test split
    (default: all of them) and their number, with the test spike trains the trainer and ``stbp
    eval`` draw (seed ``EVAL_SEED``, the run's seed + 1). Needs the dataset (``data_dir``, else the
    usual lookup)."""
    from stbp.runs import eval_options, evaluate, trained_splits

    t = trained(name, data_dir=data_dir, folder=folder)
    cfg = t.cfg
    test = trained_splits(t)["test"].subset(limit)
    acc = evaluate(t.model, test, cfg["encoding"]["steps"], seed=cfg["train"]["seed"] + 1,
                   **eval_options(cfg))
    return acc, len(test)


def summary_line(name: str, folder: str | os.PathLike | None = None, width: int = 14) -> str:
    """One line: name (padded to ``width``), dataset, validation-selected test accuracy, epochs,
    seed, network."""
    c = card(name, folder)
    acc = f"{c['test_acc']:.2f} %" if isinstance(c["test_acc"], (int, float)) else "?"
    return (f"{name:{width}s}  {c['dataset']:7s}  test {acc:>8s}  {c['epochs']:>3} epochs  seed {c['seed']}"
            f"  {c['model']}")


# -- shipping (maintainers: scripts/ship_pretrained.py) -------------------------------------------

def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StbpError(f"{p}: unreadable ({err})") from None


def _check_run(run_dir: Path) -> dict[str, Any]:
    """The run's summary, if the run is complete and worth shipping."""
    if not run_dir.is_dir():
        raise StbpError(f"{run_dir}: no such run directory")
    if not (run_dir / "summary.json").is_file():
        raise StbpError(f"{run_dir}: no summary.json — the run is incomplete (still training, or "
                        f"stopped); finish it (stbp train --resume --out {run_dir}) before shipping it")
    for f in ("best.pt", "config.toml", "metrics.jsonl"):
        if not (run_dir / f).is_file():
            raise StbpError(f"{run_dir}: no {f} — not a complete run folder of `stbp train`")
    summary = _read_json(run_dir / "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("test_acc"), (int, float)):
        raise StbpError(f"{run_dir / 'summary.json'}: no test accuracy; nothing to ship")
    if summary.get("collapsed"):
        raise StbpError(f"{run_dir}: the run collapsed (summary.json: collapsed); not shipping it")
    return summary


def _portable(cfg: dict[str, Any], data_path: str | None) -> dict[str, Any]:
    """The config without the maintainer's paths: a folder dataset's absolute ``path`` becomes
    ``data_path``, else the path relative to the current folder when inside it, else its last two
    parts (``bench/windows``: where ``stbp scenes --out bench`` writes them)."""
    data = cfg["data"]
    if "path" not in data or data.get("path") is None:
        return cfg
    if data_path is None:
        p = Path(data["path"])
        try:
            data_path = str(p.relative_to(Path.cwd()))
        except ValueError:
            data_path = str(Path(*p.parts[-2:]))
    return {**cfg, "data": {**data, "path": data_path}}


def _folder_splits(cfg: dict[str, Any]) -> set[str] | None:
    """The split folders (train/val/test) of the image folder a run trained on, read where it
    trained (``None``: not a folder dataset, or the folder is gone)."""
    data = cfg["data"]
    if data["dataset"] != "folder" or not data.get("path"):
        return None
    from stbp.data.folder import folder_layout

    try:
        return set(folder_layout(data["path"]))
    except StbpError:
        return None


def _splits(summary: dict[str, Any], cfg: dict[str, Any], limits: Any,
            layout: set[str] | None = None) -> dict[str, Any]:
    data = ", ".join(f"{k} = {v!r}" for k, v in cfg["data"].items() if k != "classes")
    if layout is not None and {"train", "val", "test"} <= layout:
        source = ("the folder's own train/, val/ and test/ splits ([data] validation, test and "
                  "split_seed do not apply)")
    elif layout is not None and {"train", "test"} <= layout:
        source = ("the folder's own train/ and test/; the validation split is held out of train/ "
                  "as [data] validation says")
    else:
        source = ("the validation split is held out of the training set as [data] validation "
                  "says, the test split is the dataset's own (a folder's test/ or its [data] test "
                  "share)")
    how = f"[data] {data}: {source}"
    for key, what in (("limit_train", "training"), ("limit_eval", "validation and test")):
        n = limits.get(key) if isinstance(limits, dict) else None
        if n:
            how += f"; --{key.replace('_', '-')} {n}: only the first {n} {what} samples"
    return {"train": summary.get("train_size"), "val": summary.get("val_size"),
            "test": summary.get("test_size"), "how": how}


def _describe(cfg: dict[str, Any]) -> str:
    enc = cfg["encoding"]
    return f"{describe_model(cfg)}, T = {enc['steps']} ({enc['kind']})"


def ship(run_dir: str | os.PathLike, name: str, *, command: str, commit: str, machine: str,
         notes: str = "", folder: str | os.PathLike | None = None, data_path: str | None = None,
         force: bool = False) -> dict[str, Any]:
    """Write the best model of the finished run ``run_dir`` as ``NAME.pt`` and its card
    ``NAME.json`` into ``folder`` (default: :func:`directory`), each atomically; returns the card.

    ``command`` is the exact command that trained it, ``commit`` the code's commit, ``machine``
    where it ran. Refuses an incomplete or collapsed run, a bad name, and (without ``force``) a
    name already shipped.
    """
    run_dir = Path(run_dir)
    if not isinstance(name, str) or not _NAME.match(name):
        raise StbpError(f"model name {name!r}: use lowercase letters, digits, '-', '_' and '.'")
    summary = _check_run(run_dir)
    out = directory(folder)
    if not out.is_dir():
        raise StbpError(f"{out}: no such folder")
    if not force and ((out / f"{name}.pt").exists() or (out / f"{name}.json").exists()):
        raise StbpError(f"{out / name}.pt/.json: exist; pass --force to replace model {name!r}")
    run = open_run(run_dir, "best")
    ckpt = run.ckpt
    from stbp.config import differences, load_config

    diffs = differences(run.cfg, load_config(config=run_dir / "config.toml"))
    if diffs:
        raise StbpError(f"{run_dir}: config.toml and best.pt disagree ({'; '.join(diffs)})")
    if ckpt["epoch"] != summary.get("best_epoch"):
        raise StbpError(f"{run_dir}: best.pt holds epoch {ckpt['epoch']} but summary.json's best "
                        f"epoch is {summary.get('best_epoch')}; the folder is inconsistent")
    shipped = {"format": ckpt["format"], "config": _portable(run.cfg, data_path), "model": ckpt["model"],
               "epoch": ckpt["epoch"], "val_acc": ckpt.get("val_acc"), "limits": ckpt.get("limits")}
    buf = io.BytesIO()
    import torch

    torch.save(shipped, buf)
    data = buf.getvalue()
    info = _card(run_dir, name, summary, shipped, _folder_splits(run.cfg), command=command,
                 commit=commit, machine=machine, notes=notes, sha256=_sha256(data))
    atomic_write(out / f"{name}.pt", data)
    atomic_write(out / f"{name}.json", json.dumps(info, indent=2, allow_nan=False) + "\n")
    back = trained(name, folder=out)  # read back as a user will: same weights
    if any(not torch.equal(back.model.state_dict()[k], v) for k, v in ckpt["model"].items()):
        raise StbpError(f"{out / name}.pt: the weights read back differ from {run_dir / 'best.pt'}")
    return info


def _card(run_dir: Path, name: str, summary: dict[str, Any], shipped: dict[str, Any],
          layout: set[str] | None, **given: str) -> dict[str, Any]:
    from stbp.plots import read_history

    cfg = shipped["config"]
    history = [{k: rec.get(k) for k in _HISTORY_KEYS} for rec in read_history(run_dir)]
    finished = datetime.fromtimestamp((run_dir / "summary.json").stat().st_mtime, timezone.utc)
    return strict_json({
        "format": CARD_FORMAT,
        "name": name,
        "dataset": cfg["data"]["dataset"],
        "model": _describe(cfg),
        "splits": _splits(summary, cfg, shipped["limits"], layout),
        "command": given["command"],
        "seed": summary.get("seed", cfg["train"]["seed"]),
        "commit": given["commit"],
        "epochs": summary.get("epochs", len(history)),
        "best_epoch": summary.get("best_epoch"),
        "val_acc": summary.get("best_val_acc"),
        "test_acc": summary.get("test_acc"),
        "wall_time_s": summary.get("seconds"),
        "machine": given["machine"],
        "threads": summary.get("threads"),
        "processes": summary.get("processes"),
        "device": summary.get("device"),
        "torch": summary.get("torch"),
        "date": finished.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notes": given["notes"],
        "evaluation": "accuracies in %; the validation and test spike trains are drawn from fixed "
                      "seeds (stbp.seeds.EVAL_SEED with the run's seed, and seed + 1), as `stbp eval` "
                      "draws them; test_acc is the test accuracy of the best-validation epoch",
        "history": history,
        "sha256": given["sha256"],
    })
