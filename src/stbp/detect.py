"""Object detection with a trained two-class (object / background) network: sliding windows,
non-maximum suppression, and the average precision of the result.

The paper's third experiment trains STBP to tell object windows from background. To turn that
classifier into a detector, :class:`Detector` slides square windows of a few sizes
(``scales``, pixels) over an image with a step of ``stride × side``, crops and resizes each to the
network's input size with :func:`stbp.data.scenes.crop_resize` (the function that made the
training windows), encodes them as the run was trained (Bernoulli rate coding or direct
input, fixed seed) and scores each window from the output firing rates:
``score = (max over object classes of rate − rate of the background class + 1) / 2``, in [0, 1]
for a spiking network. :func:`stbp.boxes.suppress` (NMS) then keeps the best-scoring window of every group
that overlaps by more than ``nms_iou`` (0.2 by default), and :func:`stbp.boxes.box_vote` (on by default)
refines each kept window: its box becomes the score-weighted mean of the windows it suppressed
(and itself), and NMS runs again over the voted boxes. A box keeps its own score; boxes whose
scores tie (a spiking network's rates saturate: many windows around a digit may score exactly
1) are ranked by the mean score of their group. The best window on a grid is often a few
pixels off the digit; voting centres it — for the spiking detector it is worth ~20 AP points
on the validation scenes, where these settings were chosen (docs/results.md).

Two ways to run the windows (``windows``): ``"each"`` as above (the reference), or ``"shared"``
for a network with unpadded convolutions: the image is rescaled once per window side so that
the window becomes the network's input size (:meth:`Detector.pyramid`) and the fully
convolutional form of the network (:mod:`stbp.fullconv`) scores every window of the level in
one pass, windows a multiple of the pooling stride apart. Two readouts (``readout``): the
output layer's firing rates, or its mean input current, squashed by a logistic of the margin in
thresholds (graded where rates tie). A network trained with ``[model] readout = "current"``
outputs currents either way.
:func:`stbp.boxes.average_precision` is the VOC all-point AP at an IoU threshold (0.5 for "mAP@0.5"; with
one object class, mAP = AP).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from stbp import seeds
from stbp.boxes import average_precision, box_vote, match, nms, suppress
from stbp.data.scenes import SceneSpec, crop_resize, rescale
from stbp.errors import StbpError
from stbp.fullconv import fully_convolutional
from stbp.io import atomic_write
from stbp.loss import firing_rate

if TYPE_CHECKING:
    from stbp.runs import Trained

__all__ = ["window_grid", "Detector", "Detection", "write_detections", "evaluate_scenes", "DEFAULT_SCALES",
           "DEFAULT_STRIDE", "DEFAULT_NMS_IOU"]

DEFAULT_SCALES: tuple[int, ...] = SceneSpec().window_scales
DEFAULT_STRIDE = 0.25
#: non-maximum suppression drops a box overlapping a better one by more than this IoU
DEFAULT_NMS_IOU = 0.2
#: how a :class:`Detector` runs its windows: "shared" (one fully convolutional pass per scale),
#: "each" (every window on its own: the reference), "auto" (shared where the network allows)
WINDOW_MODES = ("auto", "shared", "each")
#: what a window's score is made of: the output layer's firing rates, or its mean input currents
READOUTS = ("rate", "current")
_DETECT_SEED = 4_000_037


def _check_windows(scales: tuple[int, ...] | list[int], stride: float) -> None:
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise StbpError(f"window scales must be integers >= 1, got {scales!r}")
    if not 0 < stride <= 1:
        raise StbpError(f"window stride must be a fraction of the window side in (0, 1], got {stride!r}")


def window_grid(height: int, width: int, scales: tuple[int, ...] | list[int], stride: float) -> np.ndarray:
    """Square windows ``[K, 4]`` (``[x0, y0, x1, y1]``) of each side in ``scales`` that fits the
    image, every ``max(1, round(stride · side))`` pixels, the last row/column flush with the
    border."""
    _check_windows(scales, stride)
    boxes = []
    for side in sorted(set(scales)):
        if side > height or side > width:
            continue
        step = max(1, int(round(stride * side)))
        xs = sorted(set(range(0, width - side + 1, step)) | {width - side})
        ys = sorted(set(range(0, height - side + 1, step)) | {height - side})
        boxes += [[x, y, x + side, y + side] for y in ys for x in xs]
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


@dataclass
class Detection:
    """A box ``[x0, y0, x1, y1]`` (pixels, exclusive ends), its score and class name."""

    box: list[int]
    score: float
    label: str

    def to_json(self) -> dict[str, Any]:
        return {"box": self.box, "score": round(self.score, 6), "class": self.label}


class Detector:
    """A trained run's network used as a sliding-window detector (see the module docstring):
    ``windows`` "auto" (shared where the network allows it), "shared" or "each"; ``readout``
    "rate" or "current"."""

    def __init__(self, model: nn.Module, cfg: dict[str, Any], *, background: str = "background",
                 scales: tuple[int, ...] | list[int] = DEFAULT_SCALES, stride: float = DEFAULT_STRIDE,
                 vote: bool = True, batch_size: int = 1000, windows: str = "auto",
                 readout: str = "rate") -> None:
        data = cfg["data"]
        classes = data.get("classes") if data["dataset"] == "folder" else [str(i) for i in range(10)]
        if background not in classes:
            raise StbpError(f"the run's classes are {', '.join(classes)}; none is the background class "
                            f"{background!r} (a detector needs an object/background run, e.g. one "
                            "trained on `stbp scenes` windows; see --background)")
        _check_windows(list(scales), stride)
        self.model = model.eval()
        self.cfg = cfg
        self.classes = list(classes)
        self.background = self.classes.index(background)
        self.scales, self.stride, self.vote = tuple(scales), float(stride), bool(vote)
        self.size = data["size"] if data["dataset"] == "folder" else 28
        self.color = data.get("color", "gray")
        self.batch_size = batch_size
        if windows not in WINDOW_MODES:
            raise StbpError(f"windows must be one of {', '.join(WINDOW_MODES)}, got {windows!r}")
        shareable = cfg["model"]["kind"] == "cnn" and cfg["model"].get("padding") == "valid"
        if windows == "shared" and not shareable:
            raise StbpError("shared windows need a CNN with unpadded convolutions ([model] padding = "
                            "\"valid\"): a padded convolution sees zeros at every window's border, which "
                            "one pass over the image cannot reproduce; use windows 'each'")
        #: "shared": every window of a scale from one pass over the rescaled image
        #: (:mod:`stbp.fullconv`); "each": every window cropped, resized and run on its own
        self.windows = "shared" if windows == "auto" and shareable else (
            "each" if windows == "auto" else windows)
        # shared windows step by a multiple of the network's pooling stride: the nearest to
        # ``stride`` (a fraction of the network's input side), at least one
        self.shared = fully_convolutional(self.model) if self.windows == "shared" else None
        if self.shared is not None and (step := max(1, round(stride * self.size / self.shared.stride))) > 1:
            self.shared = fully_convolutional(self.model, step)
        if readout not in READOUTS:
            raise StbpError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        self.readout = readout

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, *, checkpoint: str = "best", **kwargs) -> Detector:
        """The detector of a run directory written by ``stbp train`` (its best-validation model)."""
        from stbp.runs import open_run

        return cls.from_trained(open_run(run_dir, checkpoint), **kwargs)

    @classmethod
    def from_trained(cls, trained: Trained, **kwargs) -> Detector:
        """The detector of a :class:`~stbp.runs.Trained` network: a run's, or a shipped model's
        (``stbp.pretrained.trained("detect-cnn")``)."""
        cfg = trained.cfg
        if cfg["data"]["dataset"] != "folder" or cfg["encoding"]["kind"] == "events":
            raise StbpError(f"{trained.source}: trained on {cfg['data']['dataset']}; a detector needs a "
                            "run trained on an image folder of object and background windows "
                            "(stbp train --dataset folder:PATH)")
        return cls(trained.model, cfg, **kwargs)

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """An image as the network expects it: uint8 ``[C, H, W]`` at its own size; an image
        smaller than the smallest window is an error."""
        from stbp.data.folder import read_image

        img = read_image(path, color=self.color)
        h, w = img.shape[-2:]
        if min(h, w) < min(self.scales):
            raise StbpError(f"image {path}: {w}x{h} is smaller than the smallest window "
                            f"({min(self.scales)}x{min(self.scales)}); use smaller --scales")
        return img

    @torch.no_grad()
    def score_windows(self, image: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window of ``image`` (uint8 ``[C, H, W]``): boxes ``[K, 4]``, scores ``[K]`` and the
        index of the best object class ``[K]`` (windows 'shared' or 'each', see the class)."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[None]
        if self.shared is not None:
            boxes, rate = self._shared_rates(image, seed)
        else:
            boxes, rate = self._each_rates(image, seed)
        if not len(boxes):
            return boxes, np.zeros(0), np.zeros(0, np.int64)
        objects = [i for i in range(len(self.classes)) if i != self.background]
        best = np.asarray(objects)[np.argmax(rate[:, objects], axis=1)]
        margin = rate[np.arange(len(rate)), best] - rate[:, self.background]
        if self.readout == "rate":
            score = (margin + 1) / 2
        else:  # the margin of the mean input currents, in thresholds, squashed into (0, 1)
            score = 1 / (1 + np.exp(-margin / self.cfg["neuron"]["threshold"]))
        return boxes, score.astype(np.float64), best

    def _output(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The per-window output ``[B, classes, ...]`` the score is made of: the output layer's
        firing rate (``readout="rate"``), or its input current (E1 + bias) averaged over the T
        steps (``"current"``: graded where the rate saturates)."""
        from stbp.runs import autocast

        with autocast(self.cfg["train"]["precision"]):
            if self.readout == "rate":
                return firing_rate(net(x)).float()
            hidden = net[:-1](x)  # float spikes of the last hidden layer [T, B, ...]
            current = net[-1].synapse(hidden.flatten(0, 1)).unflatten(0, hidden.shape[:2])
        return current.float().mean(0)

    def _each_rates(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The reference: every window of :func:`window_grid` cropped, resized to the network's
        input (:func:`crop_resize`), encoded and run on its own → boxes, output rates ``[K, classes]``."""
        from stbp.data.splits import ImageSplit

        boxes = window_grid(image.shape[-2], image.shape[-1], self.scales, self.stride)
        if not len(boxes):
            return boxes, np.zeros((0, len(self.classes)))
        windows = ImageSplit(crop_resize(image, boxes, self.size), torch.zeros(len(boxes), dtype=torch.long))
        steps, kind = self.cfg["encoding"]["steps"], self.cfg["encoding"]["kind"]
        gen = seeds.generator(_DETECT_SEED, seed)
        rates = []
        for start in range(0, len(boxes), self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, len(boxes)))
            x = windows.inputs(idx, steps=steps, kind=kind, generator=gen)
            rates.append(self._output(self.model, x))
        return boxes, torch.cat(rates).numpy()

    def pyramid(self, image: np.ndarray) -> list[tuple[int, torch.Tensor]]:
        """The image rescaled for each window side in ``scales`` that fits it, so that a window of
        that side becomes the network's input size: ``[(side, uint8 [C, h, w]), …]``."""
        h, w = image.shape[-2:]
        levels = []
        for side in sorted(set(self.scales)):
            if side > h or side > w:
                continue
            f = self.size / side
            levels.append((side, rescale(image, max(self.size, round(h * f)), max(self.size, round(w * f)))))
        return levels

    def _shared_rates(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Every window of every pyramid level from one pass of the fully convolutional network
        over the level (windows every ``shared.stride`` pixels of the level, i.e. every
        ``stride · side / size`` pixels of the image) → boxes in image pixels, rates ``[K, classes]``."""
        from stbp.encoding import encode

        assert self.shared is not None
        steps, kind = self.cfg["encoding"]["steps"], self.cfg["encoding"]["kind"]
        gen = seeds.generator(_DETECT_SEED, seed)
        h, w = image.shape[-2:]
        all_boxes, all_rates = [], []
        for side, level in self.pyramid(image):
            x = encode(kind, level[None].float().div_(255.0), steps, generator=gen,
                       spike_dtype=torch.uint8)
            rate = self._output(self.shared.net, x)[0]  # [classes, rows, cols]
            rows, cols = rate.shape[-2:]
            f = side / self.size
            ys = np.minimum(np.rint(np.arange(rows) * self.shared.stride * f), h - side).astype(np.int64)
            xs = np.minimum(np.rint(np.arange(cols) * self.shared.stride * f), w - side).astype(np.int64)
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            all_boxes.append(np.stack([xx, yy, xx + side, yy + side], -1).reshape(-1, 4))
            all_rates.append(rate.flatten(1).T.numpy())
        if not all_boxes:
            return np.zeros((0, 4), np.int64), np.zeros((0, len(self.classes)))
        return np.concatenate(all_boxes), np.concatenate(all_rates)

    def detect(self, image: np.ndarray, *, min_score: float = 0.5, nms_iou: float = DEFAULT_NMS_IOU,
               seed: int = 0) -> list[Detection]:
        """Boxes after non-maximum suppression (and :func:`box_vote`, unless ``vote=False``)
        with ``score >= min_score``, best first."""
        return self.select(*self.score_windows(image, seed=seed), min_score=min_score, nms_iou=nms_iou)

    def select(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, min_score: float = 0.5,
               nms_iou: float = DEFAULT_NMS_IOU, vote: bool | None = None) -> list[Detection]:
        """The detections among scored windows (:meth:`score_windows`): NMS, box voting
        (``vote``, default: the detector's setting) and NMS again over the voted boxes (no two
        overlap by more than ``nms_iou``), then ``score >= min_score``, best first (equal scores:
        the better-supported first)."""
        keep, owner = suppress(boxes, scores, nms_iou)
        labels = labels[keep]
        voted = self.vote if vote is None else vote
        if voted:
            boxes, scores, support = box_vote(boxes, scores, keep, owner)
        else:
            boxes, scores, support = boxes[keep], scores[keep], scores[keep]
        order = np.lexsort((np.arange(len(scores)), -support, -scores))
        if voted:  # voting moves boxes: suppress again, in rank order, so that no two of the
            # final boxes overlap by more than nms_iou
            order = order[nms(boxes[order], -np.arange(len(order), dtype=np.float64), nms_iou)]
        return [Detection(boxes[i].tolist(), float(scores[i]), self.classes[labels[i]])
                for i in order if scores[i] >= min_score]


#: an annotated image's shorter side is drawn at least this many pixels (nearest-neighbour)
ANNOTATE_MIN_SIDE = 480


def label_places(boxes: list[tuple[int, int, int, int]], size: tuple[int, int],
                 bounds: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Where each box's label (``size`` = width, height in pixels) goes: above the box's top-left
    corner (inside it when there is no room above), moved down past every label placed before
    so that no two overlap; within ``bounds`` (width, height) where possible."""
    w, h = size
    placed: list[tuple[int, int, int, int]] = []
    for x0, y0, _, _ in boxes:
        x = min(max(x0, 0), max(bounds[0] - w, 0))
        y = y0 - h if y0 - h >= 0 else y0
        while any(x < px1 and px0 < x + w and y < py1 and py0 < y + h
                  for px0, py0, px1, py1 in placed):
            y += h
        placed.append((x, y, x + w, y + h))
    return placed


def annotate(image: np.ndarray, detections: list[Detection]) -> bytes:
    """A PNG (bytes) of the image, enlarged to a readable size (shorter side at least
    :data:`ANNOTATE_MIN_SIDE`), with each detection drawn as a red box and its score on a dark
    label that overlaps no other label."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    arr = np.asarray(image)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    img = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    k = max(1, -(-ANNOTATE_MIN_SIDE // max(1, min(img.size))))
    img = img.resize((img.width * k, img.height * k), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(12, min(img.size) // 32))
    texts = [f"{d.label} {d.score:.2f}" if d.label not in ("object",) else f"{d.score:.2f}"
             for d in detections]
    width = max((int(draw.textlength(t, font=font)) for t in texts), default=0) + 6
    height = int(font.getbbox("0.9")[3]) + 6
    boxes = [tuple(v * k for v in d.box) for d in detections]
    line = max(2, k // 2)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 40, 40), width=line)
    for (lx0, ly0, lx1, ly1), text in zip(label_places(boxes, (width, height), img.size), texts,
                                          strict=True):
        draw.rectangle([lx0, ly0, lx1 - 1, ly1 - 1], fill=(40, 0, 0))
        draw.text((lx0 + 3, ly0 + 2), text, fill=(255, 255, 0), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_detections(detector: Detector, images: list[str | os.PathLike], out: str | os.PathLike, *,
                     min_score: float = 0.5, nms_iou: float = DEFAULT_NMS_IOU) -> list[dict[str, Any]]:
    """Detect in every image; write ``out/<name>.json`` (boxes, scores, classes) and
    ``out/<name>.png`` (annotated) for each. Every image is read and checked before anything is
    written, and each file is written whole (``.part`` then renamed)."""
    if not images:
        raise StbpError("stbp detect: give at least one IMAGE (or --scenes DIR to evaluate)")
    paths = [Path(p) for p in images]
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise StbpError(f"images {stems[p.stem]} and {p} would write the same {p.stem}.json; "
                            "rename one or run them separately")
        stems[p.stem] = p
    loaded = [detector.read(p) for p in paths]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StbpError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (path, img) in enumerate(zip(paths, loaded, strict=True)):
        dets = detector.detect(img, min_score=min_score, nms_iou=nms_iou, seed=i)
        record = {"image": str(path), "width": int(img.shape[-1]), "height": int(img.shape[-2]),
                  "detections": [d.to_json() for d in dets],
                  "settings": {"scales": list(detector.scales), "stride": detector.stride,
                               "windows": detector.windows, "readout": detector.readout,
                               "vote": detector.vote, "min_score": min_score, "nms_iou": nms_iou}}
        atomic_write(out / f"{path.stem}.json", (json.dumps(record, indent=2) + "\n").encode())
        atomic_write(out / f"{path.stem}.png", annotate(img, dets))
        results.append(record)
    return results


def evaluate_scenes(detector: Detector, scene_dir: str | os.PathLike, *, nms_iou: float = DEFAULT_NMS_IOU,
                    iou: float = 0.5, limit: int | None = None) -> dict[str, Any]:
    """AP at IoU ``iou`` of the detector on a scene folder with ``boxes.json`` (``stbp scenes``):
    every window scored, NMS (and box voting, as the detector is set), all remaining boxes ranked
    by score. ``ap_other`` is the AP with box voting switched the other way, from the same
    window scores."""
    from stbp.data.scenes import load_scenes

    scenes = load_scenes(scene_dir)[:limit]
    truths: list[np.ndarray] = []
    dets: dict[bool, list[tuple[int, float, list[int]]]] = {True: [], False: []}
    names: list[str] = []
    windows_scored = 0
    for i, rec in enumerate(scenes):
        img = detector.read(rec["image"])
        truths.append(np.asarray(rec["boxes"], np.int64).reshape(-1, 4))
        scored = detector.score_windows(img, seed=i)
        windows_scored += len(scored[0])
        for vote in (True, False):
            found = detector.select(*scored, min_score=0.0, nms_iou=nms_iou, vote=vote)
            dets[vote] += [(i, d.score, d.box) for d in found]
            if vote == detector.vote:
                names += [d.label for d in found]
    mine = dets[detector.vote]
    extra: dict[str, Any] = {}
    if all(isinstance(r.get("digits"), list) and len(r["digits"]) == len(r["boxes"]) for r in scenes) \
            and any(c.startswith("digit-") for c in detector.classes):
        # a detector that names the digit: how often a found digit (IoU >= iou) is named right
        order, hits = match(mine, truths, iou)
        pairs = [(names[k], scenes[mine[k][0]]["digits"][h]) for k, h in zip(order, hits, strict=True)
                 if h is not None]
        right = sum(n == f"digit-{d}" for n, d in pairs)
        extra["digit_accuracy"] = right / len(pairs) if pairs else float("nan")
        extra["digits_found"] = len(pairs)
    return {**extra, "ap": average_precision(mine, truths, iou),
            "ap_other": average_precision(dets[not detector.vote], truths, iou),
            "iou": iou, "scenes": len(scenes),
            "objects": int(sum(len(t) for t in truths)), "detections": len(mine), "nms_iou": nms_iou,
            "vote": detector.vote, "scales": list(detector.scales), "stride": detector.stride,
            "windows": detector.windows, "readout": detector.readout, "windows_scored": windows_scored}
