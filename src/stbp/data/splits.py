"""What the trainer feeds a network: train / validation / test splits that yield ``[T, B, ...]``.

Two kinds of split share one interface (``len``, ``labels``, ``subset``, ``inputs``):

- :class:`ImageSplit` — intensity images (MNIST), turned into T steps of input by an encoding
  (:mod:`stbp.encoding`: Bernoulli rate coding as in the paper, or analog "direct" input);
- :class:`FrameSplit` — event recordings (N-MNIST) already binned into T frames
  (:func:`stbp.data.nmnist.load_frames`); the frames are the input spikes.

:func:`load_splits` builds the three splits a config's ``[data]`` table describes. The validation
split is the *last* ``validation`` training samples (MNIST: images 55,001–60,000; N-MNIST: the
recordings with the highest sample indices), never trained on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stbp import encoding
from stbp.augment import random_affine, random_shift
from stbp.data.mnist import MNISTSplit
from stbp.errors import StbpError

__all__ = ["ImageSplit", "FrameSplit", "Split", "load_splits", "locate", "validation_count",
           "resolve_dataset"]


@dataclass
class ImageSplit(MNISTSplit):
    """Images ``uint8 [N, H, W]`` (or ``[N, C, H, W]``) with labels; encoded per batch."""

    def inputs(
        self,
        idx: Tensor,
        *,
        steps: int,
        kind: str = "bernoulli",
        generator: torch.Generator | None = None,
        shift: int = 0,
        shift_generator: torch.Generator | None = None,
        rotate: float = 0.0,
        scale: float = 0.0,
    ) -> Tensor:
        """Input ``[T, B, C, H, W]`` of samples ``idx``: scaled to [0, 1], randomly rotated and
        scaled (:func:`stbp.augment.random_affine`), shifted, encoded; the augmentations draw
        from ``shift_generator``.

        Bernoulli spikes come as ``uint8`` (one byte each; stbp's layers take them directly),
        analog ("direct") input as float32."""
        x = self.images[idx]
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.to(torch.float32).div_(255.0)
        if rotate or scale:
            x = random_affine(x, rotate, scale, generator=shift_generator)
        if shift:
            x = random_shift(x, shift, generator=shift_generator)
        return encoding.encode(kind, x, steps, generator=generator, spike_dtype=torch.uint8)


@dataclass
class FrameSplit:
    """Binned event recordings with labels; the frames are the input spikes.

    ``frames`` is ``uint8 [N, T, P, H, W]``, or — when ``shape = (T, P, H, W)`` is given — binary
    frames bit-packed per recording, ``uint8 [N, T·P·H·W / 8]`` (8× less memory; a batch is
    unpacked when it is drawn).
    """

    frames: Tensor
    labels: Tensor
    shape: tuple[int, int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> FrameSplit:
        return self if n is None else FrameSplit(self.frames[:n], self.labels[:n], self.shape)

    def take(self, idx: Tensor) -> FrameSplit:
        """The recordings ``idx``, in that order."""
        return FrameSplit(self.frames[idx], self.labels[idx], self.shape)

    def unpacked(self, idx: Tensor) -> Tensor:
        """Frames ``uint8 [len(idx), T, P, H, W]`` of recordings ``idx``."""
        rows = self.frames[idx]
        if self.shape is None:
            return rows
        bits = np.unpackbits(rows.numpy(), axis=1, count=math.prod(self.shape))
        return torch.from_numpy(bits).reshape(len(rows), *self.shape)

    def inputs(
        self,
        idx: Tensor,
        *,
        steps: int,
        kind: str = "events",
        generator: torch.Generator | None = None,
        shift: int = 0,
        shift_generator: torch.Generator | None = None,
    ) -> Tensor:
        """Input ``[T, B, P, H, W]`` (``uint8`` event counts, 0/1 for binary frames: stbp's
        layers take them directly, the first fully connected layer event-driven) of recordings
        ``idx``; ``shift`` translates every frame of a recording by the same random offset.
        ``generator`` is unused (no encoding)."""
        del generator
        if kind != "events":
            raise StbpError(f"[encoding] kind = {kind!r} does not apply to event frames; use 'events'")
        x = self.unpacked(idx)
        if x.shape[1] != steps:
            raise StbpError(f"the frames have {x.shape[1]} time bins, but T = {steps} was asked")
        if shift:
            b, t, p, h, w = x.shape
            x = random_shift(x.reshape(b, t * p, h, w), shift, generator=shift_generator)
            x = x.reshape(b, t, p, h, w)
        return x.transpose(0, 1)


Split = ImageSplit | FrameSplit


def validation_count(validation: int | float, n_train: int, source: str) -> int:
    """The number of held-out samples: ``validation`` itself (an integer) or that fraction of
    ``n_train`` (a float in (0, 1)); at least one sample must remain for training."""
    count = validation if isinstance(validation, int) else int(round(validation * n_train))
    if not 0 < count < n_train:
        raise StbpError(
            f"[data] validation = {validation!r} leaves {n_train - count} of the {n_train} training "
            f"samples in {source} for training and {count} for validation; give a smaller count "
            f"or a fraction such as 0.1"
        )
    return count


def resolve_dataset(cfg: dict[str, Any], data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """A folder dataset's config with its path made absolute (``data_dir``, if given, replaces
    it) and its class names filled in from the folder (a validated copy); other configs as they
    are. A run saves the resolved config, so its network's shape is known without the data."""
    data = cfg["data"]
    if data["dataset"] != "folder":
        return cfg
    from stbp.config import validate
    from stbp.data.folder import list_classes

    path = Path(data_dir if data_dir is not None else data["path"]).resolve()
    classes = list_classes(path, data.get("classes"))
    out = {**cfg, "data": {**data, "path": str(path), "classes": classes}}
    return validate(out, f"[data] path = {str(path)!r} with classes {classes}")


def locate(cfg: dict[str, Any], data_dir: str | os.PathLike | None = None) -> Path:
    """The folder the configured dataset is read from (checked; nothing is loaded yet)."""
    dataset = cfg["data"]["dataset"]
    if dataset == "folder":
        from stbp.data.folder import folder_layout

        folder = Path(data_dir if data_dir is not None else cfg["data"]["path"])
        folder_layout(folder)
        return folder
    if dataset == "mnist":
        from stbp.data.mnist import locate_mnist

        return locate_mnist(data_dir)
    from stbp.data.nmnist import locate_nmnist

    return locate_nmnist(data_dir)


def _by_index(root: Path, split: str) -> Tensor:
    """Positions of ``split``'s recordings sorted by their sample index (the file name's number,
    which is the MNIST index of the digit), so that 'the last N' is not 'the last classes'."""
    from stbp.data.nmnist import list_recordings

    names = [Path(name).stem for name, _ in list_recordings(root, split)]
    keys = [(int(s), s) if s.isdigit() else (float("inf"), s) for s in names]
    return torch.tensor(sorted(range(len(keys)), key=keys.__getitem__), dtype=torch.long)


def load_splits(
    cfg: dict[str, Any], data_dir: str | os.PathLike | None = None, *, progress: bool = False
) -> tuple[dict[str, Split], Path]:
    """``{"train", "val", "test"}`` splits for a validated config, and the folder they came from."""
    data = cfg["data"]
    folder = locate(cfg, data_dir)
    if data["dataset"] == "folder":
        from stbp.data.folder import load_folder

        raw, _ = load_folder(folder, size=data["size"], color=data["color"],
                             classes=data.get("classes"), validation=data["validation"],
                             test=data["test"], split_seed=data["split_seed"])
        return {k: ImageSplit(x, y) for k, (x, y) in raw.items()}, folder
    if data["dataset"] == "mnist":
        from stbp.config import DATASETS
        from stbp.data.mnist import load_mnist

        n_val = validation_count(data["validation"], DATASETS["mnist"]["train_images"], str(folder))
        raw = load_mnist(folder, validation=n_val)
        return {k: ImageSplit(v.images, v.labels) for k, v in raw.items()}, folder

    from stbp.data.nmnist import SENSOR_SIZE, load_frames

    steps = cfg["encoding"]["steps"]
    binary = data["frames"] == "binary"
    w, h, p = SENSOR_SIZE
    shape = (steps, p, h, w) if binary else None  # binary frames stay bit-packed in memory
    opts = dict(steps=steps, binary=binary, packed=binary,
                time_window=data["time_window"] or None, first_saccade=data["first_saccade"],
                verify=data["verify"], progress=progress)
    out: dict[str, Split] = {}
    for split in ("train", "test"):
        frames, labels = load_frames(folder, split, **opts)
        order = _by_index(folder, split)
        if len(order) != len(labels):
            raise StbpError(f"{folder}: the {split} recordings changed while being read")
        out[split] = FrameSplit(frames, labels, shape).take(order)
    train = out.pop("train")
    n_val = validation_count(data["validation"], len(train), f"{folder} (Train)")
    cut = len(train) - n_val
    out["train"] = train.take(torch.arange(cut))
    out["val"] = train.take(torch.arange(cut, len(train)))
    return {k: out[k] for k in ("train", "val", "test")}, folder
