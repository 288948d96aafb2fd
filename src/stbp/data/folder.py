"""Your own image dataset: a folder with one subfolder of PNG/JPEG images per class.

This is how the paper's third experiment — a private two-class object-detection set (object
present / background) — is reproduced on any data: ``stbp train --dataset folder:PATH``.

Two layouts are accepted (class names are the subfolder names; labels follow their sorted order,
or the order of ``[data] classes`` when given):

- ``PATH/<class>/*.png|*.jpg|*.jpeg`` — one pool, split by a seeded shuffle (``[data] split_seed``)
  into test (the last ``[data] test`` of the shuffled images) and, from the rest, validation
  (the last ``[data] validation``) and training;
- ``PATH/train/<class>/…``, ``PATH/test/<class>/…`` and optionally ``PATH/val/<class>/…`` —
  splits given by the user (``stbp scenes`` writes this layout); without ``val/`` the validation
  split is the last ``[data] validation`` of the shuffled training images.

Every image is converted to grayscale (``color = "gray"``) or RGB and resized (bilinear) to
``size × size``; an unreadable, empty or zero-size image fails with a message naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stbp import checks
from stbp.data.registry import AUGMENT_KEYS, DatasetInfo, DatasetSpec, Key, LoadOptions, register
from stbp.data.splits import ImageSplit
from stbp.errors import StbpError

__all__ = ["IMAGE_SUFFIXES", "COLORS", "read_image", "list_classes", "folder_layout", "load_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COLORS = {"gray": ("L", 1), "rgb": ("RGB", 3)}
SPLIT_FOLDERS = ("train", "val", "test")


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise StbpError("reading images needs Pillow: pip install pillow") from None
    return Image


def read_image(path: str | os.PathLike, *, size: int | None = None, color: str = "gray") -> np.ndarray:
    """One image as ``uint8 [C, H, W]`` (C = 1 for gray, 3 for RGB), resized to ``size × size``
    (bilinear) when ``size`` is given. Raises :class:`StbpError` naming the file if it is
    missing, empty, zero-size or not a readable PNG/JPEG."""
    Image = _pil()
    path = Path(path)
    if color not in COLORS:
        raise StbpError(f"color must be one of {', '.join(COLORS)}, got {color!r}")
    mode, _ = COLORS[color]
    try:
        nbytes = path.stat().st_size
    except OSError as err:
        raise StbpError(f"image {path}: cannot read ({err.strerror or err})") from None
    if nbytes == 0:
        raise StbpError(f"image {path}: empty file (0 bytes), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd but readable files
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format not in ("PNG", "JPEG", "MPO"):
                    raise StbpError(f"image {path}: a {img.format} file; expected PNG or JPEG")
                img.load()
                if img.width == 0 or img.height == 0:
                    raise StbpError(f"image {path}: zero size ({img.width}x{img.height})")
                img = img.convert(mode)
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
    except StbpError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise StbpError(f"image {path}: unreadable or not a PNG/JPEG image ({err})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_layout(root: str | os.PathLike) -> dict[str, Path]:
    """The split folders of ``root``: ``{"all": root}`` for one pool of class subfolders, or
    ``{"train": …, "test": …[, "val": …]}`` when ``root`` holds ``train/`` and ``test/``."""
    root = Path(root)
    if not root.exists():
        raise StbpError(f"dataset folder {root}: no such directory")
    if not root.is_dir():
        raise StbpError(f"dataset folder {root}: not a directory (give a folder with one subfolder "
                        "of images per class)")
    subs = set(_subfolders(root))
    if {"train", "test"} <= subs:
        return {name: root / name for name in SPLIT_FOLDERS if name in subs}
    if subs & set(SPLIT_FOLDERS) and not subs - set(SPLIT_FOLDERS):
        missing = sorted({"train", "test"} - subs)
        raise StbpError(f"dataset folder {root}: has {', '.join(sorted(subs))}/ but no "
                        f"{', '.join(missing)}/; give train/ and test/ (and optionally val/), or "
                        "put the class subfolders directly in the folder")
    return {"all": root}


def list_classes(root: str | os.PathLike, classes: list[str] | None = None) -> list[str]:
    """The class names of a dataset folder (sorted subfolder names, or ``classes`` checked to
    exist), each with at least one image; at least two classes."""
    layout = folder_layout(root)
    first = layout["train"] if "train" in layout else layout["all"]
    found = _subfolders(first)
    if classes is None:
        classes = found
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise StbpError(f"dataset folder {first}: no class subfolder(s) {', '.join(missing)} "
                            f"(found: {', '.join(found) or 'none'})")
        if len(set(classes)) != len(classes):
            raise StbpError(f"[data] classes = {classes} names a class twice")
    if not classes:
        raise StbpError(f"dataset folder {first}: no class subfolders; expected one subfolder of "
                        "PNG/JPEG images per class, e.g. object/ and background/")
    for split, folder in layout.items():
        for c in classes:
            sub = folder / c
            if not sub.is_dir() or not _images_in(sub):
                what = "no such class folder" if not sub.is_dir() else "no PNG/JPEG images"
                where = "" if split == "all" else " in every split"
                raise StbpError(f"dataset folder {sub}: {what} (every class needs images{where})")
    if len(classes) < 2:
        raise StbpError(f"dataset folder {first}: only one class ({classes[0]}); a classifier needs "
                        "at least two class subfolders, e.g. object/ and background/")
    return list(classes)


def _read_split(folder: Path, classes: list[str], size: int, color: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, c in enumerate(classes):
        for path in _images_in(folder / c):
            images.append(read_image(path, size=size, color=color))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)) if images else torch.zeros(0, COLORS[color][1], size, size,
                                                                        dtype=torch.uint8)
    return x, torch.tensor(labels, dtype=torch.long)


def _count(value: int | float, n: int, what: str, source: str) -> int:
    count = value if isinstance(value, int) else int(round(value * n))
    if not 0 < count < n:
        raise StbpError(
            f"[data] {what} = {value!r} leaves {n - count} of the {n} images in {source} for "
            f"training and {count} for {what}; give a smaller count or a fraction such as 0.1"
        )
    return count


def load_folder(
    root: str | os.PathLike,
    *,
    size: int,
    color: str = "gray",
    classes: list[str] | None = None,
    validation: int | float = 0.1,
    test: int | float = 0.2,
    split_seed: int = 0,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Read a dataset folder: ``{"train", "val", "test"}`` → (images ``uint8 [N, C, size, size]``,
    labels ``int64 [N]``), and the class names (label i = ``classes[i]``)."""
    root = Path(root)
    classes = list_classes(root, classes)
    layout = folder_layout(root)
    gen = torch.Generator().manual_seed(split_seed)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if "all" in layout:
        x, y = _read_split(root, classes, size, color)
        order = torch.randperm(len(y), generator=gen)
        n_test = _count(test, len(y), "test", str(root))
        rest, test_idx = order[: len(y) - n_test], order[len(y) - n_test:]
        out["test"] = (x[test_idx], y[test_idx])
    else:
        x, y = _read_split(layout["train"], classes, size, color)
        rest = torch.randperm(len(y), generator=gen)
        out["test"] = _read_split(layout["test"], classes, size, color)
    if "val" in layout:
        out["val"] = _read_split(layout["val"], classes, size, color)
        train_idx = rest  # shuffled, so that --limit-train N takes a mix of classes
    else:
        n_val = _count(validation, len(rest), "validation", str(layout.get("train", root)))
        train_idx, val_idx = rest[: len(rest) - n_val], rest[len(rest) - n_val:]
        out["val"] = (x[val_idx], y[val_idx])
    out["train"] = (x[train_idx], y[train_idx])
    missing = sorted(set(range(len(classes))) - set(out["train"][1].tolist()))
    if missing:
        raise StbpError(f"dataset folder {root}: the training split has no image of class(es) "
                        f"{', '.join(classes[i] for i in missing)}; add images or lower [data] "
                        "test/validation")
    return {k: out[k] for k in SPLIT_FOLDERS}, classes


# --------------------------------------------------------------------------- the dataset


def _info(data: Mapping[str, Any]) -> DatasetInfo:
    classes = data.get("classes")
    size = data["size"]
    return DatasetInfo(input=(COLORS[data["color"]][1], size, size),
                       classes=len(classes) if classes else None)


def _check(data: Mapping[str, Any]) -> None:
    if not data.get("path"):
        raise StbpError("dataset = 'folder' needs [data] path = \"FOLDER\" (one subfolder of "
                        "PNG/JPEG images per class), or use --dataset folder:FOLDER")


def _locate(data: Mapping[str, Any], data_dir: str | os.PathLike | None) -> Path:
    folder = Path(data_dir if data_dir is not None else data["path"])
    folder_layout(folder)
    return folder


def _resolve(data: dict[str, Any], data_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The path made absolute (``data_dir``, if given, replaces it), the class names read."""
    path = Path(data_dir if data_dir is not None else data["path"]).resolve()
    return {**data, "path": str(path), "classes": list_classes(path, data.get("classes"))}


def _load(data: Mapping[str, Any], folder: Path, options: LoadOptions) -> dict[str, ImageSplit]:
    del options
    raw, _ = load_folder(folder, size=data["size"], color=data["color"],
                         classes=data.get("classes"), validation=data["validation"],
                         test=data["test"], split_seed=data["split_seed"])
    return {k: ImageSplit(x, y) for k, (x, y) in raw.items()}


register(DatasetSpec(
    name="folder",
    summary="your own images, one subfolder of PNG/JPEG files per class",
    keys={
        "validation": Key(checks.count_or_fraction, 0.1),
        "path": Key(checks.string),
        "size": Key(checks.positive_int, 28),
        "color": Key(checks.one_of(*COLORS), "gray"),
        "test": Key(checks.count_or_fraction, 0.2),
        "split_seed": Key(checks.nonneg_int, 0),
        "classes": Key(checks.string_list),
        **AUGMENT_KEYS,
    },
    info=_info,
    locate=_locate,
    load=_load,
    argument="path",
    argument_help="a folder with one subfolder of PNG/JPEG images per class",
    resolve=_resolve,
    check=_check,
))
