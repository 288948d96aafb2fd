"""Boxes found in an image: greedy non-maximum suppression, box voting, and the VOC matching
and average precision of a set of detections against the ground truth.

Pure NumPy on ``[K, 4]`` boxes ``[x0, y0, x1, y1]`` (pixels, exclusive ends); IoU is
:func:`stbp.data.scenes.box_iou`. :class:`stbp.detect.Detector` runs them on its scored windows.
"""

from __future__ import annotations

import numpy as np

from stbp.data.scenes import box_iou
from stbp.errors import StbpError

__all__ = ["suppress", "nms", "box_vote", "match", "average_precision"]


def suppress(boxes: np.ndarray, scores: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression: (the indices of the kept boxes, best score first — ties:
    the lower index first —, and for every box the index of the kept box that suppressed it,
    its own for a kept box). A box is dropped if its IoU with a kept box exceeds ``iou``; it
    belongs to the first (best) kept box that drops it."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise StbpError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep: list[int] = []
    owner = np.full(len(scores), -1, dtype=np.int64)
    for i in order:  # the overlaps of each kept box only: O(kept x boxes), not boxes^2
        if owner[i] >= 0:
            continue
        keep.append(int(i))
        owner[(owner < 0) & (box_iou(boxes[i], boxes)[0] > iou)] = i
        owner[i] = i
    return np.asarray(keep, dtype=np.int64), owner


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first (ties: the
    lower index first); a box is dropped if its IoU with a kept box exceeds ``iou``."""
    return suppress(boxes, scores, iou)[0]


def box_vote(boxes: np.ndarray, scores: np.ndarray, keep: np.ndarray,
             owner: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine the boxes ``keep`` that :func:`suppress` kept: each becomes the score-weighted
    mean of the boxes it suppressed (``owner`` says which; itself included; rounded to pixels),
    and keeps its own score. Only its own group counts, so a box is not pulled towards a
    neighbouring object's windows. Returns (boxes ``[K, 4]`` int64, scores ``[K]``, support
    ``[K]``: the mean score of each group, which ranks boxes whose scores tie — a spiking
    network's rates saturate, so many windows may score exactly 1 — the better-supported first).
    Negative scores weigh nothing."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    if not len(keep):
        return np.zeros((0, 4), np.int64), np.zeros(0), np.zeros(0)
    owner = np.asarray(owner, dtype=np.int64).reshape(-1)
    out_boxes, support = [], []
    for k in keep:
        members = owner == k
        w = np.clip(scores[members], 0, None)
        if w.sum() > 0:
            box = (boxes[members] * w[:, None]).sum(axis=0) / w.sum()
        else:
            box = boxes[k]
        out_boxes.append(np.rint(box).astype(np.int64))
        support.append(scores[members].mean())
    return np.stack(out_boxes), scores[keep], np.asarray(support)


def match(detections: list[tuple[int, float, list[int]]], truths: list[np.ndarray],
          iou: float = 0.5) -> tuple[list[int], list[int | None]]:
    """VOC matching: detections ranked by score (ties: the order given); each is matched to the
    not-yet-matched ground-truth box of its image with the highest IoU, if that IoU is ≥ ``iou``.
    Returns the ranking (indices into ``detections``) and, per rank, the matched box's index
    (None for a false positive)."""
    order = sorted(range(len(detections)), key=lambda k: -detections[k][1])
    matched = [np.zeros(len(t), bool) for t in truths]
    hits: list[int | None] = []
    for k in order:
        img, _, box = detections[k]
        gts = truths[img]
        hit = None
        if len(gts):
            ious = box_iou([box], gts)[0]
            ious[matched[img]] = -1
            j = int(np.argmax(ious))
            if ious[j] >= iou:
                matched[img][j] = True
                hit = j
        hits.append(hit)
    return order, hits


def average_precision(detections: list[tuple[int, float, list[int]]],
                      truths: list[np.ndarray], iou: float = 0.5) -> float:
    """VOC all-point average precision. ``detections``: (image index, score, box); ``truths``:
    the ground-truth boxes ``[K, 4]`` of each image; detections are matched by :func:`match`.
    NaN if there is no ground-truth box."""
    n_truth = sum(len(t) for t in truths)
    if n_truth == 0:
        return float("nan")
    order, hits = match(detections, truths, iou)
    tp = np.asarray([h is not None for h in hits], dtype=np.float64)
    ctp = np.cumsum(tp)
    recall = ctp / n_truth
    precision = ctp / np.arange(1, len(order) + 1)
    # all-point interpolation: precision made monotone from the right, summed over recall steps
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
