"""A detection benchmark made of real MNIST digits: cluttered scenes with ground-truth boxes,
generated deterministically from a seed, and the two-class window set a detector trains on.

The paper's third experiment trains STBP to tell "object present" from "background" on a private
set. This module builds an open stand-in from real data:

- a **scene** is a ``size × size`` grayscale image (96 × 96 by default) holding 2–4 real MNIST
  digits, each scaled so that its 28 × 28 MNIST frame becomes an ``s × s`` square
  (``s`` in [24, 40] px), over clutter: Gaussian pixel noise and 4–8 *fragments* (random pieces
  of other real digits, placed clear of the digits). The ground-truth box of a digit is its
  scaled MNIST frame ``[x0, y0, x1, y1]`` (pixels, ``x1``/``y1`` exclusive) — a square around
  the digit, centred on its centre of mass as MNIST centres it;
- **windows** for the two-class task: *object* windows are squares around a digit with IoU ≥ 0.6
  with its box (side and centre jittered); *background* windows have IoU < 0.3 with every
  box — half random, half "hard" ones that cut through a digit. Each is cropped and resized
  (bilinear, antialiased) to ``window × window`` by :func:`crop_resize`, the same function the
  detector (:mod:`stbp.detect`) applies to its sliding windows.

Digits never cross splits: train scenes draw from MNIST training images 1–55,000, validation
scenes from 55,001–60,000 (the validation hold-out of every stbp MNIST run), test scenes from
the 10,000 test images only.

:func:`write_benchmark` writes ``scenes/<split>/NNNNN.png`` with ``scenes/<split>/boxes.json``,
``windows/<split>/{background,object}/*.png`` (or ``digit-0`` … ``digit-9`` in place of
``object`` with ``labels="digit"``; a dataset folder for
``stbp train --dataset folder:OUT/windows``) and ``benchmark.json`` (the settings and seed).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stbp.errors import StbpError

__all__ = ["SceneSpec", "Scene", "box_iou", "crop_resize", "rescale", "render_scene", "sample_windows",
           "make_split", "write_benchmark", "load_scenes", "SPLIT_SOURCES"]

#: scene split → the MNIST part (as :func:`stbp.data.mnist.load_mnist` splits it, with the last
#: 5,000 training images as validation) its digits come from, and whether that part is the test set
SPLIT_SOURCES = {"train": "train", "val": "val", "test": "test"}
#: how object windows are labelled: one class "object", or the digit ("digit-0" … "digit-9")
WINDOW_LABELS = ("object", "digit")
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SceneSpec:
    """How scenes and windows are drawn (every length in pixels)."""

    size: int = 96                              #: scene side
    digits: tuple[int, int] = (2, 4)            #: digits per scene, inclusive range
    scale: tuple[int, int] = (24, 40)           #: side of a digit's box (its scaled 28x28 frame)
    fragments: tuple[int, int] = (4, 8)         #: clutter pieces per scene
    fragment_size: tuple[int, int] = (6, 12)    #: side of a fragment crop, before scaling
    noise: float = 0.08                         #: std of the Gaussian pixel noise (intensity 0..1)
    max_overlap: float = 0.1                    #: largest IoU between two digits' boxes
    window: int = 28                            #: side the detector's input windows are resized to
    positives_per_digit: int = 2                #: object windows per digit (negatives: as many)
    positive_iou: float = 0.6                   #: an object window's least IoU with its digit
    negative_iou: float = 0.3                   #: a background window's IoU with every digit is below
    window_scales: tuple[int, ...] = field(default=(24, 32, 42))  #: the detector's window sides

    def check(self) -> SceneSpec:
        lo, hi = self.scale
        if not (8 <= lo <= hi < self.size):
            raise StbpError(f"scene digit scale {self.scale} must satisfy 8 <= min <= max < size "
                            f"{self.size}")
        if not (0 <= self.digits[0] <= self.digits[1]) or self.digits[1] < 1:
            raise StbpError(f"scene digits per scene {self.digits} must be 0 <= min <= max, max >= 1")
        if self.window < 8 or min(self.window_scales) > self.size:
            raise StbpError(f"window {self.window} / scales {self.window_scales} do not fit "
                            f"{self.size}x{self.size} scenes")
        return self


@dataclass
class Scene:
    """One scene: ``image`` uint8 ``[size, size]``, ``boxes`` int ``[K, 4]`` as
    ``[x0, y0, x1, y1]``, ``digits`` (class of each box) and ``sources`` (MNIST index of each)."""

    image: np.ndarray
    boxes: np.ndarray
    digits: list[int]
    sources: list[int]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``[N, 4]`` with every box in ``b`` ``[M, 4]`` → ``[N, M]``
    (boxes ``[x0, y0, x1, y1]``, ``x1``/``y1`` exclusive)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[N, H, W]`` or ``[N, C, H, W]`` float images to
    ``side × side``."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    flat = x[:, None] if x.dim() == 3 else x
    out = F.interpolate(flat, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0] if x.dim() == 3 else out


def rescale(image: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A uint8 image ``[H, W]`` or ``[C, H, W]`` resized to ``height × width`` as
    :func:`crop_resize` resizes a window (bilinear, antialiased, quantised to uint8) → uint8
    ``[C, height, width]`` (the levels of an image pyramid)."""
    img = torch.from_numpy(np.array(image, dtype=np.float32))
    img = img[None] if img.dim() == 2 else img
    if img.shape[-2:] == (height, width):
        return img.round_().clamp_(0, 255).to(torch.uint8)
    out = F.interpolate(img[None], size=(height, width), mode="bilinear", align_corners=False,
                        antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def crop_resize(image: np.ndarray | torch.Tensor, boxes: np.ndarray, window: int) -> torch.Tensor:
    """Square crops ``boxes`` ``[K, 4]`` of a uint8 image ``[H, W]`` (or ``[C, H, W]``), each
    resized to ``window × window`` and quantised to uint8 as a saved PNG would be → uint8
    ``[K, window, window]`` (or ``[K, C, window, window]``).

    Crops of one side are resized together; the training windows and the detector's sliding
    windows both come from here, so the network sees the same kind of input in both.
    """
    img = torch.from_numpy(np.array(image, dtype=np.float32))
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    out = torch.empty(len(boxes), *img.shape[:-2], window, window, dtype=torch.uint8)
    sides = boxes[:, 2] - boxes[:, 0]
    for side in np.unique(sides):
        rows = np.nonzero(sides == side)[0]
        crops = torch.stack([img[..., b[1]:b[3], b[0]:b[2]] for b in boxes[rows]])
        resized = crops if int(side) == window else _resize(crops, window)
        out[torch.from_numpy(rows)] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _scaled_digit(digit: np.ndarray, side: int) -> np.ndarray:
    x = torch.from_numpy(digit.astype(np.float32) / 255.0)[None]
    return _resize(x, side)[0].clamp_(0, 1).numpy()


def render_scene(pool: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 spec: SceneSpec, offset: int = 0) -> Scene:
    """Draw one scene from a pool of MNIST digits (uint8 ``[N, 28, 28]``) with ``rng``.

    ``offset`` is the MNIST index of ``pool[0]`` (recorded in :attr:`Scene.sources`).
    """
    size = spec.size
    canvas = np.zeros((size, size), np.float32)
    boxes: list[list[int]] = []
    digits, sources = [], []
    for _ in range(int(rng.integers(spec.digits[0], spec.digits[1] + 1))):
        for _try in range(50):
            side = int(rng.integers(spec.scale[0], spec.scale[1] + 1))
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = [x0, y0, x0 + side, y0 + side]
            if not boxes or box_iou([box], boxes).max() <= spec.max_overlap:
                break
        else:
            continue
        k = int(rng.integers(len(pool)))
        patch = _scaled_digit(pool[k], side)
        np.maximum(canvas[y0:y0 + side, x0:x0 + side], patch, out=canvas[y0:y0 + side, x0:x0 + side])
        boxes.append(box)
        digits.append(int(labels[k]))
        sources.append(offset + k)
    for _ in range(int(rng.integers(spec.fragments[0], spec.fragments[1] + 1))):
        k = int(rng.integers(len(pool)))
        ink = np.argwhere(pool[k] > 64)
        if not len(ink):
            continue
        f = int(rng.integers(spec.fragment_size[0], spec.fragment_size[1] + 1))
        cy, cx = ink[int(rng.integers(len(ink)))]
        y0 = int(np.clip(cy - f // 2, 0, 28 - f))
        x0 = int(np.clip(cx - f // 2, 0, 28 - f))
        scale = rng.uniform(spec.scale[0], spec.scale[1]) / 28.0
        side = max(2, int(round(f * scale)))
        piece = _scaled_digit(np.ascontiguousarray(pool[k, y0:y0 + f, x0:x0 + f]), side)
        for _try in range(30):
            px, py = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            fbox = [px, py, px + side, py + side]
            if not boxes or box_iou([fbox], boxes).max() == 0:
                np.maximum(canvas[py:py + side, px:px + side], piece, out=canvas[py:py + side, px:px + side])
                break
    canvas += rng.normal(0.0, spec.noise, size=canvas.shape).astype(np.float32)
    image = np.rint(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
    return Scene(image, np.asarray(boxes, dtype=np.int64).reshape(-1, 4), digits, sources)


def _square_in(cx: float, cy: float, side: int, size: int) -> list[int]:
    side = int(min(max(side, 2), size))
    x0 = int(np.clip(round(cx - side / 2), 0, size - side))
    y0 = int(np.clip(round(cy - side / 2), 0, size - side))
    return [x0, y0, x0 + side, y0 + side]


def sample_windows(scene: Scene, rng: np.random.Generator, spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Object and background window boxes ``[K, 4]`` of one scene (as many of each).

    Object: side = box side × U(0.85, 1.2), centre moved by up to 12 % of the side, IoU ≥
    ``positive_iou``. Background: IoU < ``negative_iou`` with every box; half anywhere (sides
    over the detector's window scales), half cutting through a digit.
    """
    size = spec.size
    pos: list[list[int]] = []
    for box in scene.boxes:
        side0 = box[2] - box[0]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        for _ in range(spec.positives_per_digit):
            for _try in range(30):
                side = int(round(side0 * rng.uniform(0.85, 1.2)))
                dx, dy = rng.uniform(-0.12, 0.12, size=2) * side0
                cand = _square_in(cx + dx, cy + dy, side, size)
                if box_iou([cand], [box])[0, 0] >= spec.positive_iou:
                    pos.append(cand)
                    break
    neg: list[list[int]] = []
    lo, hi = min(spec.window_scales), max(spec.window_scales)
    want = max(len(pos), spec.positives_per_digit)
    for _ in range(want * 30):
        if len(neg) >= want:
            break
        hard = (len(neg) % 2 == 1) and len(scene.boxes) > 0
        if hard:
            box = scene.boxes[int(rng.integers(len(scene.boxes)))]
            side0 = box[2] - box[0]
            side = int(round(side0 * rng.uniform(0.8, 1.25)))
            ang = rng.uniform(0, 2 * np.pi)
            dist = rng.uniform(0.45, 0.8) * side0
            cand = _square_in((box[0] + box[2]) / 2 + dist * np.cos(ang),
                              (box[1] + box[3]) / 2 + dist * np.sin(ang), side, size)
        else:
            side = int(rng.integers(lo, min(hi, size) + 1))
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            cand = [x0, y0, x0 + side, y0 + side]
        if not len(scene.boxes) or box_iou([cand], scene.boxes).max() < spec.negative_iou:
            neg.append(cand)
    return np.asarray(pos, np.int64).reshape(-1, 4), np.asarray(neg, np.int64).reshape(-1, 4)


def make_split(pool: np.ndarray, labels: np.ndarray, count: int, seed: int, split: str,
               spec: SceneSpec, offset: int = 0) -> list[Scene]:
    """``count`` scenes of ``split``; scene i depends only on (seed, split, i)."""
    spec.check()
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split], i])
        out.append(render_scene(pool, labels, rng, spec, offset))
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")


def write_benchmark(
    out: str | os.PathLike,
    mnist: dict[str, Any],
    *,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    spec: SceneSpec | None = None,
    labels: str = "object",
) -> dict[str, Any]:
    """Generate the benchmark into the new folder ``out`` (written to ``out.part`` first and
    renamed, so ``out`` is either complete or absent). ``mnist`` holds ``"train"``, ``"val"`` and
    ``"test"`` with ``.images`` uint8 ``[N, 28, 28]`` and ``.labels``, as
    :func:`stbp.data.mnist.load_mnist` returns them (validation = the last 5,000 training images):
    train scenes use only ``train`` digits, validation scenes ``val`` digits, test scenes ``test``
    digits. ``labels = "digit"`` files each object window under its digit (``digit-0`` …
    ``digit-9``) instead of ``object`` — the same windows, for a detector that also names the
    digit. Returns the description written to ``benchmark.json``."""
    spec = (spec or SceneSpec()).check()
    if labels not in WINDOW_LABELS:
        raise StbpError(f"window labels must be one of {', '.join(WINDOW_LABELS)}, got {labels!r}")
    classes = ["object"] if labels == "object" else [f"digit-{d}" for d in range(10)]
    counts = {"train": 3000, "val": 100, "test": 100, **(counts or {})}
    for split, n in counts.items():
        if split not in SPLIT_SOURCES or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise StbpError(f"scene count {split} = {n!r}: expected an integer >= 1 for train, val, test")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StbpError(f"--out {out}: exists and is not an empty directory")
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {"seed": seed, "spec": asdict(spec), "labels": labels, "splits": {}}
    rng_windows = {}
    for split, part in SPLIT_SOURCES.items():
        images = np.asarray(mnist[part].images)
        digit_labels = np.asarray(mnist[part].labels)
        if not len(images):
            raise StbpError(f"MNIST {part} split is empty; the {split} scenes need its digits")
        # MNIST index of the first image: validation images follow the training ones in the file
        lo = len(mnist["train"]) if part == "val" else 0
        hi = lo + len(images)
        part = "test" if part == "test" else "train"  # the MNIST file the digits come from
        scenes = make_split(images, digit_labels, counts[split], seed, split, spec, lo)
        sdir = tmp / "scenes" / split
        sdir.mkdir(parents=True)
        records = []
        n_pos = n_neg = 0
        for c in ("background", *classes):
            (tmp / "windows" / split / c).mkdir(parents=True)
        rng_windows[split] = np.random.default_rng([seed, _SPLIT_STREAM[split], 1 << 20])
        for i, sc in enumerate(scenes):
            name = f"{i:05d}.png"
            _write_png(sdir / name, sc.image)
            records.append({"image": name, "boxes": sc.boxes.tolist(), "digits": sc.digits,
                            "mnist_index": sc.sources})
            pos, neg = sample_windows(sc, rng_windows[split], spec)
            # an object window's digit: the box it overlaps most (IoU >= 0.6 with one box rules
            # out IoU >= 0.6 with another, since boxes overlap by IoU <= 0.1)
            owner = box_iou(pos, sc.boxes).argmax(axis=1) if len(pos) else np.zeros(0, np.int64)
            names = [classes[0] if labels == "object" else f"digit-{sc.digits[k]}" for k in owner]
            for kind, bxs in (("object", pos), ("background", neg)):
                crops = crop_resize(sc.image, bxs, spec.window).numpy()
                for j, crop in enumerate(crops):
                    cls = names[j] if kind == "object" else "background"
                    _write_png(tmp / "windows" / split / cls / f"{i:05d}-{j:02d}.png", crop)
            n_pos, n_neg = n_pos + len(pos), n_neg + len(neg)
        (sdir / "boxes.json").write_text(json.dumps({"split": split, "mnist_part": part,
                                                     "mnist_range": [lo, hi], "scenes": records}) + "\n")
        summary["splits"][split] = {"scenes": len(scenes), "digits": sum(len(s.digits) for s in scenes),
                                    "object_windows": n_pos, "background_windows": n_neg,
                                    "mnist_part": part, "mnist_range": [lo, hi]}
    (tmp / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    if out.is_dir():
        out.rmdir()
    os.replace(tmp, out)
    return summary


def _is_box(b: Any) -> bool:
    return (isinstance(b, list) and len(b) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) for v in b)
            and b[2] > b[0] and b[3] > b[1])


def load_scenes(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The ground truth of a scene folder (``scenes/<split>`` as written by
    :func:`write_benchmark`): ``[{"image": Path, "boxes": [[x0, y0, x1, y1], …], …}]``."""
    folder = Path(folder)
    path = folder / "boxes.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        splits = sorted(p.parent.name for p in folder.glob("*/boxes.json")) if folder.is_dir() else []
        hint = (f"; it holds the split folders {', '.join(splits)}: give one, e.g. {folder / splits[-1]}"
                if splits else " (write one with `stbp scenes`)")
        raise StbpError(f"scene folder {folder}: no boxes.json{hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StbpError(f"{path}: unreadable ({err})") from None
    scenes = data.get("scenes") if isinstance(data, dict) else None
    if not isinstance(scenes, list):
        raise StbpError(f"{path}: expected an object with a 'scenes' list")
    out = []
    for i, rec in enumerate(scenes):
        ok = (isinstance(rec, dict) and isinstance(rec.get("image"), str)
              and isinstance(rec.get("boxes"), list) and all(_is_box(b) for b in rec["boxes"]))
        boxes = rec["boxes"] if ok else None
        if not ok or Path(rec["image"]).name != rec["image"]:
            raise StbpError(f"{path}: scene {i} must be {{'image': NAME, 'boxes': [[x0, y0, x1, y1], ...]}} "
                            "with integer boxes, x1 > x0, y1 > y0, and a plain file name")
        out.append({**rec, "image": folder / rec["image"], "boxes": boxes})
    return out

