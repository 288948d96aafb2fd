"""A run folder as the application reads it back: the network a config describes, checkpoints,
trained runs, and the seeded evaluation used by ``stbp train``, ``eval``, ``plot``,
``reproduce`` and ``detect``.

A checkpoint is a dict (tensors and plain data only) with ``format`` = :data:`CHECKPOINT_FORMAT`,
the resolved ``config``, the ``model`` weights and the ``epoch`` (``last.pt`` also holds the
optimizer, scheduler and history needed to resume; see :mod:`stbp.train`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stbp import seeds
from stbp.config import dataset_info, validate
from stbp.data.splits import Split
from stbp.errors import StbpError
from stbp.loss import predict
from stbp.models import SpikingNet, build

__all__ = ["CHECKPOINT_FORMAT", "build_model", "autocast", "resolve_device", "evaluate",
           "load_checkpoint", "model_from_checkpoint", "load_run"]

CHECKPOINT_FORMAT = "stbp-checkpoint-v1"


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
    return build(kind, seed=cfg["train"]["seed"], **model, **cfg["neuron"])


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The mixed-precision context of ``[train] precision``: "bf16" runs the synapses (matmuls,
    convs) in bfloat16 — spikes are exact in it — while the neurons keep float32 state."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16")


def resolve_device(name: str) -> torch.device:
    """``[train] device``: "cpu", "cuda", or "auto" (a CUDA GPU when torch finds one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StbpError("[train] device = 'cuda', but torch finds no CUDA GPU "
                        "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    return torch.device(name)


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
) -> float:
    """Accuracy (in %) of ``model`` on ``split`` with fixed (seeded) input spike trains.

    ``output_spikes``, a zero tensor ``[classes]``, receives each output neuron's spike count.
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
        correct += int((predict(out).cpu() == split.labels[idx]).sum())
        if output_spikes is not None:
            output_spikes += out.float().sum((0, 1)).cpu()
    return 100.0 * correct / len(split)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a stbp checkpoint (tensors and plain data only; nothing is executed)."""
    path = Path(path)
    if not path.is_file():
        raise StbpError(f"checkpoint {path}: no such file")
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


def model_from_checkpoint(ckpt: dict[str, Any], path: Path) -> tuple[SpikingNet, dict]:
    cfg = validate(ckpt["config"], f"{path} (saved config)")
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise StbpError(f"checkpoint {path}: weights do not fit the saved model ({err})") from None
    return model, cfg


def load_run(
    run_dir: str | os.PathLike, checkpoint: str = "best", data_dir: str | os.PathLike | None = None
) -> tuple[SpikingNet, dict[str, Any], dict[str, Any], str | os.PathLike | None]:
    """A run directory's model (best or last checkpoint), its config, the checkpoint, and the
    data folder to use: ``data_dir`` if given, else the one the run was trained on if it still
    exists (else ``None``: the usual lookup)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StbpError(f"--run {run_dir}: no such directory")
    if checkpoint not in ("best", "last"):
        raise StbpError(f"--checkpoint must be 'best' or 'last', got {checkpoint!r}")
    path = run_dir / f"{checkpoint}.pt"
    ckpt = load_checkpoint(path)
    model, cfg = model_from_checkpoint(ckpt, path)
    saved = ckpt.get("data_dir")
    if data_dir is None and isinstance(saved, str) and Path(saved).is_dir():
        data_dir = saved  # the data the run was trained on
    return model, cfg, ckpt, data_dir
