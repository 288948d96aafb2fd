"""The N-MNIST file format: one recording (``.bin``) as 5 bytes per event — x, y, polarity and a
23-bit timestamp in µs, with ``y = 240`` marking a timestamp overflow (see :mod:`stbp.data.nmnist`
for the dataset: layouts, checksums, frames and the frame cache)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stbp.data.events import EVENT_DTYPE
from stbp.errors import StbpError

__all__ = ["OVERFLOW_Y", "OVERFLOW_US", "parse_nmnist", "read_nmnist"]

OVERFLOW_Y = 240
OVERFLOW_US = 1 << 13


def parse_nmnist(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode one N-MNIST recording into events (:data:`EVENT_DTYPE`); see the module docstring.

    Raises :class:`StbpError` naming ``source`` for empty data, a length that is not a multiple
    of 5, coordinates outside 0..33 (other than the overflow marker) or decreasing timestamps.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StbpError(f"{source}: expected bytes, got {type(data).__name__}")
    n = len(data)
    if n == 0:
        raise StbpError(f"{source}: no events (empty recording)")
    if n % 5:
        raise StbpError(
            f"{source}: {n} bytes is not a multiple of 5 (N-MNIST stores 5 bytes per event); "
            "the file is truncated or not an N-MNIST recording"
        )
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 5)
    x, y = raw[:, 0], raw[:, 1]
    t = (
        ((raw[:, 2] & 0x7F).astype(np.int64) << 16)
        | (raw[:, 3].astype(np.int64) << 8)
        | raw[:, 4].astype(np.int64)
    )
    p = raw[:, 2] >= 0x80
    marker = y == OVERFLOW_Y
    index = None  # event index in the file of each kept event (None: all kept)
    if marker.any():
        t += OVERFLOW_US * np.cumsum(marker, dtype=np.int64)
        index = np.flatnonzero(~marker)
        if index.size == 0:
            raise StbpError(f"{source}: no events (only {n // 5} timestamp-overflow markers)")
        x, y, t, p = x[index], y[index], t[index], p[index]
    bad = np.flatnonzero((x > 33) | (y > 33))
    if bad.size:
        i = int(bad[0])
        where = i if index is None else int(index[i])
        raise StbpError(
            f"{source}: event {where} is at x={int(x[i])}, y={int(y[i])}, outside the 34x34 "
            f"N-MNIST sensor (x and y must be 0..33; y = {OVERFLOW_Y} marks a timestamp overflow); "
            f"{bad.size} such event(s): the file is corrupt or not an N-MNIST recording"
        )
    back = np.flatnonzero(t[1:] < t[:-1])
    if back.size:
        i = int(back[0]) + 1
        where = i if index is None else int(index[i])
        raise StbpError(
            f"{source}: timestamps go backwards at event {where} ({int(t[i - 1])} -> {int(t[i])} µs): "
            "the file is corrupt or not an N-MNIST recording"
        )
    events = np.empty(len(t), dtype=EVENT_DTYPE)
    events["x"] = x
    events["y"] = y
    events["t"] = t
    events["p"] = p
    return events


def read_nmnist(path: str | os.PathLike) -> np.ndarray:
    """Read and decode one N-MNIST ``.bin`` recording (:func:`parse_nmnist`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise StbpError(f"{path}: cannot read ({err.strerror or err})") from None
    return parse_nmnist(data, str(path))
