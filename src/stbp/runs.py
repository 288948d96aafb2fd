"""A run folder as the application reads it back: the network a config describes, checkpoints,
trained runs, and the seeded evaluation used by ``stbp train``, ``eval``, ``plot``,
``reproduce`` and ``detect``.

A checkpoint is a dict (tensors and plain data only) with ``format`` = :data:`CHECKPOINT_FORMAT`,
the resolved ``config``, the ``model`` weights and the ``epoch`` (``last.pt`` also holds the
optimizer, scheduler and history needed to resume; see :mod:`stbp.train`).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stbp import budget, seeds
from stbp.config import dataset_info, validate
from stbp.data.splits import Split, load_splits
from stbp.errors import StbpError
from stbp.functional.lif import LIFParams
from stbp.kernels import runtime
from stbp.loss import predict
from stbp.models import SpikingNet, build

__all__ = ["CHECKPOINT_FORMAT", "build_model", "describe_model", "model_shapes", "autocast", "resolve_device",
           "evaluate", "load_checkpoint", "model_from_checkpoint", "load_run", "eval_run",
           "saved_limit_eval", "strict_json", "eval_options", "Trained", "open_run", "open_checkpoint",
           "eval_trained"]

CHECKPOINT_FORMAT = "stbp-checkpoint-v1"
#: a checkpoint may unpack to at most twice its size plus this (stbp stores tensors uncompressed)
UNPACK_SLACK = 64 * 2**20


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as None: strict JSON (RFC 8259)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def build_model(cfg: dict[str, Any]) -> SpikingNet:
    """The network described by a validated config's [model] and [neuron] tables."""
    model = dict(cfg["model"])
    kind = model.pop("kind")
    ds = dataset_info(cfg["data"])
    if ds.classes is None:
        raise StbpError("the folder dataset's classes are not known yet; resolve the config first "
                        "(stbp.config.resolve_dataset)")
    if kind == "cnn":
        model.update(in_channels=ds.input[0], image_size=ds.input[1], classes=ds.classes)
    return build(kind, seed=cfg["train"]["seed"], neuron=LIFParams(**cfg["neuron"]), **model)


def describe_model(cfg: dict[str, Any]) -> str:
    """The network a validated config describes, in the paper's notation: "MLP 784-800-10",
    "CNN 28x28-15C5-P2-40C5-P2-300-10" (a 'valid' convolution is written C5v)."""
    m = cfg["model"]
    what = "" if m.get("spiking", True) else "non-spiking "
    if m.get("spiking", True) and m.get("readout") == "current":
        what = "current-readout "
    if m["kind"] == "mlp":
        return what + "MLP " + "-".join(str(s) for s in m["sizes"])
    k, chans, hidden = m.get("kernel_size", 5), m.get("channels", [15, 40]), m.get("hidden", [300])
    ds = dataset_info(cfg["data"])
    return what + "CNN " + "-".join(
        ["x".join(str(d) for d in ds.input[1:])]
        + [f"{c}C{k}{'v' if m.get('padding') == 'valid' else ''}-P2" for c in chans]
        + [str(h) for h in hidden] + [str(ds.classes)]
    )


def model_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes of :func:`build_model` ``(cfg)``, from a model built on
    the ``meta`` device: nothing is allocated, however large the config says it is."""
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The mixed-precision context of ``[train] precision``: "bf16" runs the synapses (matmuls,
    convs) in bfloat16 — spikes are exact in it — while the neurons keep float32 state. On a
    CPU without native bfloat16 (:func:`stbp.kernels.runtime.native_bf16`) it warns once: torch's
    bfloat16 matmuls and convolutions are emulated there, several times slower than float32."""
    kind = torch.device(device).type
    if precision == "bf16" and kind == "cpu" and not runtime.native_bf16():
        runtime.warn_once("[train] precision = 'bf16' on a CPU without native bfloat16 (no "
                          "avx512_bf16 / amx_bf16 flag): its bfloat16 matmuls are emulated, several "
                          "times slower than float32 (stbp's own kernels keep float32 there); "
                          "precision = 'fp32' is the faster choice on this machine")
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16")


def resolve_device(name: str) -> torch.device:
    """``[train] device``: "cpu", "cuda", or "auto" (a CUDA GPU when torch finds one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StbpError("[train] device = 'cuda', but torch finds no CUDA GPU "
                        "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    return torch.device(name)


def eval_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` that a config sets (batch size, encoding,
    precision): how the trainer, ``stbp eval``, ``plot`` and the shipped models evaluate."""
    return {"batch_size": cfg["train"]["eval_batch_size"], "encoding_kind": cfg["encoding"]["kind"],
            "precision": cfg["train"]["precision"]}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    steps: int,
    *,
    seed: int,
    batch_size: int = 1000,
    encoding_kind: str = "bernoulli",
    precision: str = "fp32",
    output_spikes: Tensor | None = None,
    groups: Tensor | None = None,
) -> float:
    """Accuracy (in %) of ``model`` on ``split`` with fixed (seeded) input spike trains.

    ``output_spikes``, a zero tensor ``[classes]``, receives each output neuron's spike count.
    ``groups``, an integer tensor ``[classes]``: a prediction is right when it falls in the
    label's group (e.g. digit-0 … digit-9 as "object" against "background": the two-class
    accuracy of a detector that names the digit).
    """
    if len(split) == 0:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    gen = seeds.generator(seeds.EVAL_SEED, seed)
    correct = 0
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        x = split.inputs(idx, steps=steps, kind=encoding_kind, generator=gen).to(device)
        with autocast(precision, device):
            out = model(x)
        pred, labels = predict(out).cpu(), split.labels[idx]
        if groups is not None:
            pred, labels = groups[pred], groups[labels]
        correct += int((pred == labels).sum())
        if output_spikes is not None:
            output_spikes += out.float().sum((0, 1)).cpu()
    return 100.0 * correct / len(split)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a stbp checkpoint (tensors and plain data only; nothing is executed)."""
    path = Path(path)
    if not path.is_file():
        raise StbpError(f"checkpoint {path}: no such file")
    _check_unpacked_size(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise StbpError(f"checkpoint {path}: unreadable or corrupt ({err.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise StbpError(f"checkpoint {path}: not a stbp checkpoint")
    for key in ("config", "model", "epoch"):
        if key not in ckpt:
            raise StbpError(f"checkpoint {path}: missing {key!r}")
    return ckpt


def _check_unpacked_size(path: Path) -> None:
    """Refuse a checkpoint (a zip archive) whose entries unpack to far more than the file: a
    few compressed megabytes must not become gigabytes in memory."""
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        # not a zip, or one Python cannot list (an unknown version or compression, which
        # zipfile reports as NotImplementedError; the legacy format holds its bytes as they
        # are): torch.load judges
        return
    size = path.stat().st_size
    unpacked = sum(e.file_size for e in entries)
    packed = sum(1 for e in entries if e.compress_type != zipfile.ZIP_STORED)
    have = budget.available_bytes()
    if unpacked > 2 * size + UNPACK_SLACK or (have is not None and unpacked > have):
        raise StbpError(
            f"checkpoint {path}: its {len(entries)} entries ({packed} compressed) unpack to "
            f"{budget.gib(unpacked)} from a {budget.gib(size)} file; stbp writes checkpoints "
            "uncompressed — refusing a file that could exhaust memory")


def _check_weights(ckpt: dict[str, Any], cfg: dict[str, Any], path: Path) -> None:
    """The stored tensors must be exactly the parameters the saved config describes (checked
    before the network is built: a config claiming 10^11 neurons builds nothing)."""
    stored = ckpt["model"]
    if not isinstance(stored, dict) or not all(isinstance(v, Tensor) for v in stored.values()):
        raise StbpError(f"checkpoint {path}: 'model' is not a table of tensors")
    expected = model_shapes(cfg)
    for key in sorted(set(expected) | set(stored)):
        want = expected.get(key)
        have = tuple(stored[key].shape) if key in stored else None
        if want != have:
            raise StbpError(
                f"checkpoint {path}: weights do not fit the saved config: {key} is "
                + (f"stored as {list(have)}" if have is not None else "missing")
                + (f", the config's network needs {list(want)}" if want is not None
                   else ", which the config's network does not have"))


def model_from_checkpoint(ckpt: dict[str, Any], path: Path) -> tuple[SpikingNet, dict]:
    cfg = validate(ckpt["config"], f"{path} (saved config)")
    _check_weights(ckpt, cfg, path)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise StbpError(f"checkpoint {path}: weights do not fit the saved model ({err})") from None
    return model, cfg


@dataclass
class Trained:
    """A trained network read back — a run folder's checkpoint (:func:`open_run`) or a model
    shipped with the package (:func:`stbp.pretrained.trained`) — as ``stbp eval``, ``plot``,
    ``export`` and ``detect`` use it, whichever it is."""

    model: SpikingNet
    cfg: dict[str, Any]
    ckpt: dict[str, Any]
    path: Path  # the checkpoint file
    name: str  # the run folder's name, or the shipped model's
    source: str  # how it was named, for messages: "--run DIR" or "--pretrained NAME"
    data_dir: str | os.PathLike | None = None  # the data to evaluate on (None: the usual lookup)
    run_dir: Path | None = None  # the run folder (None for a shipped model)

    @property
    def limit_eval(self) -> int | None:
        """The ``--limit-eval`` it was trained with (:func:`saved_limit_eval`)."""
        return saved_limit_eval(self.run_dir, self.ckpt)


def open_checkpoint(path: str | os.PathLike, *, name: str, source: str,
                    data_dir: str | os.PathLike | None = None, run_dir: Path | None = None) -> Trained:
    """The network of one checkpoint file, checked and built, and the data folder
    to use: ``data_dir`` if given, else the one it was trained on if that still exists (else
    ``None``: the usual lookup)."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    model, cfg = model_from_checkpoint(ckpt, path)
    saved = ckpt.get("data_dir")
    if data_dir is None and isinstance(saved, str) and Path(saved).is_dir():
        data_dir = saved  # the data the run was trained on
    return Trained(model, cfg, ckpt, path, name, source, data_dir, run_dir)


def open_run(run_dir: str | os.PathLike, checkpoint: str = "best",
             data_dir: str | os.PathLike | None = None) -> Trained:
    """A run directory's best (or last) model as :class:`Trained`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StbpError(f"--run {run_dir}: no such directory")
    if checkpoint not in ("best", "last"):
        raise StbpError(f"--checkpoint must be 'best' or 'last', got {checkpoint!r}")
    return open_checkpoint(run_dir / f"{checkpoint}.pt", name=run_dir.name, source=f"--run {run_dir}",
                           data_dir=data_dir, run_dir=run_dir)


def load_run(
    run_dir: str | os.PathLike, checkpoint: str = "best", data_dir: str | os.PathLike | None = None
) -> tuple[SpikingNet, dict[str, Any], dict[str, Any], str | os.PathLike | None]:
    """A run directory's model (best or last checkpoint), its config, the checkpoint, and the
    data folder to use: ``data_dir`` if given, else the one the run was trained on if it still
    exists (else ``None``: the usual lookup). :func:`open_run` returns the same as one object."""
    t = open_run(run_dir, checkpoint, data_dir)
    return t.model, t.cfg, t.ckpt, t.data_dir


def saved_limit_eval(run_dir: str | os.PathLike | None, ckpt: dict[str, Any] | None = None) -> int | None:
    """The ``--limit-eval`` a run was trained with (from its checkpoint, else the run folder's
    ``last.pt``; a shipped model has no folder: ``run_dir`` None)."""
    limits = (ckpt or {}).get("limits")
    if not isinstance(limits, dict) and run_dir is not None and (Path(run_dir) / "last.pt").is_file():
        limits = load_checkpoint(Path(run_dir) / "last.pt").get("limits")
    value = limits.get("limit_eval") if isinstance(limits, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def limit_rule(given: int | None, saved: int | None) -> tuple[int | None, str]:
    """One rule for ``stbp eval`` and ``stbp plot``: the run's own ``--limit-eval`` applies
    unless ``--limit-eval`` is given. The limit used and a sentence saying where it comes from."""
    if given is not None:
        return given, f"--limit-eval {given} (given)"
    if saved is not None:
        return saved, (f"the run's own --limit-eval {saved} (as in training; pass --limit-eval N "
                       "to change)")
    return None, "the full splits (the run was trained on them; pass --limit-eval N to change)"


def eval_run(
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    checkpoint: str = "best",
    limit_eval: int | None = None,
) -> dict[str, Any]:
    """Re-evaluate a run's best (or last) model on the validation and test splits — the first
    ``limit_eval`` samples of each, by default the run's own ``--limit-eval`` (:func:`limit_rule`).

    The result also holds the firing statistics on the test split (:mod:`stbp.stats`): each
    layer's mean rate and synaptic operations per sample, next to a same-shape ANN's MACs.
    """
    return eval_trained(open_run(run_dir, checkpoint, data_dir), limit_eval=limit_eval)


def trained_splits(trained: Trained) -> dict[str, Split]:
    """The train/val/test splits a :class:`Trained` network is evaluated on (its ``data_dir``,
    else the usual lookup); a missing image folder is named as the network's own data."""
    try:
        return load_splits(trained.cfg, trained.data_dir)[0]
    except StbpError as err:
        data = trained.cfg["data"]
        if data["dataset"] != "folder" or trained.data_dir is not None:
            raise
        raise StbpError(f"{err}; {trained.source} was trained on the image folder {data['path']!r} "
                        "(its config's [data] path, relative to where you run this): make it as it "
                        "was made (the model card's or run's command) or give --data-dir FOLDER") from None


def eval_trained(trained: Trained, *, limit_eval: int | None = None) -> dict[str, Any]:
    """:func:`eval_run` of a :class:`Trained` network (a run's, or a shipped model's)."""
    from stbp.stats import FiringMonitor

    if limit_eval is not None and limit_eval < 1:
        raise StbpError(f"--limit-eval must be >= 1, got {limit_eval}")
    model, cfg, ckpt = trained.model, trained.cfg, trained.ckpt
    budget.check(cfg, train=False)
    limit_eval, rule = limit_rule(limit_eval, trained.limit_eval)
    data = trained_splits(trained)
    steps, seed = cfg["encoding"]["steps"], cfg["train"]["seed"]
    ev = eval_options(cfg)
    val, test = data["val"].subset(limit_eval), data["test"].subset(limit_eval)
    val_acc = evaluate(model, val, steps, seed=seed, **ev)
    with FiringMonitor(model) as monitor:
        test_acc = evaluate(model, test, steps, seed=seed + 1, **ev)
    return strict_json({
        "checkpoint": str(trained.path),
        "epoch": ckpt["epoch"],
        "val_acc": round(val_acc, 2),
        "test_acc": round(test_acc, 2),
        "val_size": len(val),
        "test_size": len(test),
        "limit_eval": limit_eval,
        "evaluated_on": rule,
        "firing": monitor.summary(),  # on the test split: rate per layer, SynOps per sample
    })
