"""What the trainer feeds a network: train / validation / test splits that yield ``[T, B, ...]``.

Two kinds of split share one interface (``len``, ``labels``, ``subset``, ``inputs``):

- :class:`ImageSplit` — intensity images (MNIST), turned into T steps of input by an encoding
  (:mod:`stbp.encoding`: Bernoulli rate coding as in the paper, or analog "direct" input);
- :class:`FrameSplit` — event recordings (N-MNIST) already binned into T frames
  (:func:`stbp.data.nmnist.load_frames`); the frames are the input spikes.

:func:`load_splits` builds the three splits a config's ``[data]`` table describes. The validation
split is the *last* ``validation`` training samples (MNIST: images 55,001–60,000; N-MNIST: the
recordings with the highest sample indices), never trained on. Which dataset is read, from
where and how it is split is the dataset's own declaration (:mod:`stbp.data.registry`).
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
from stbp.data import registry
from stbp.errors import StbpError

__all__ = ["ImageSplit", "FrameSplit", "Split", "load_splits", "locate", "validation_count"]


@dataclass
class ImageSplit:
    """Images ``uint8 [N, H, W]`` (or ``[N, C, H, W]``) with labels; encoded per batch."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> ImageSplit:
        return self if n is None else ImageSplit(self.images[:n], self.labels[:n])

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


def locate(cfg: dict[str, Any], data_dir: str | os.PathLike | None = None) -> Path:
    """The folder the configured dataset is read from (checked; nothing is loaded yet)."""
    data = cfg["data"]
    return registry.get(data["dataset"]).locate(data, data_dir)


def load_splits(
    cfg: dict[str, Any], data_dir: str | os.PathLike | None = None, *, progress: bool = False
) -> tuple[dict[str, Split], Path]:
    """``{"train", "val", "test"}`` splits for a validated config, and the folder they came from
    (the dataset's :class:`~stbp.data.registry.DatasetSpec` locates and loads them)."""
    data = cfg["data"]
    spec = registry.get(data["dataset"])
    folder = spec.locate(data, data_dir)
    splits = spec.load(data, folder, registry.LoadOptions(steps=cfg["encoding"]["steps"],
                                                          progress=progress))
    return {k: splits[k] for k in ("train", "val", "test")}, folder
