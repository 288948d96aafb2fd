"""Event-camera data: the event record layout and binning of events into frames.

Events are a numpy structured array with the dtype :data:`EVENT_DTYPE` — fields ``x``, ``y``
(pixel), ``t`` (timestamp, µs) and ``p`` (polarity, ``True`` = ON) — the layout of
``tonic.io.events_struct``, so tonic's transforms apply to them unchanged. Sensor sizes are given
in tonic's ``(W, H, P)`` order; frames come out as ``[steps, P, H, W]``, as tonic's ``ToFrame``.

Binning (:func:`to_frames`), with ``t0`` the first and ``t1`` the last event's timestamp:

* ``time_window=None`` (default) — tonic's ``ToFrame(sensor_size, n_time_bins=steps)``: bin
  width ``w = (t1 - t0) // steps``, bin ``i`` = ``[t0 + i·w, t0 + (i + 1)·w)``. As in tonic, the
  last ``(t1 - t0) mod steps`` µs (fewer than ``steps``; at least the last event) fall outside
  every bin and are dropped.
* Recordings shorter than ``steps`` µs (``w`` would be 0, where tonic returns all-zero frames):
  here the bin width is taken as 1 µs, so every event lands in bin ``t - t0`` (all below
  ``steps``): nothing is dropped and a one-event recording gives one event in bin 0.
* ``time_window=W`` — bins of ``W`` µs from ``t0``: bin ``i`` = ``[t0 + i·W, t0 + (i + 1)·W)``;
  events at or after ``t0 + steps·W`` are dropped; bins after the end of a short recording are
  zero. (Unlike tonic's ``ToFrame(time_window=W)``, the number of frames is always ``steps``.)

Each frame counts the events per (bin, polarity, y, x); ``binary=True`` clips the counts to 1,
otherwise counts saturate at 255 (the output is uint8).
"""

from __future__ import annotations

import numbers

import numpy as np

from stbp.checks import require_positive_int
from stbp.errors import StbpError

__all__ = ["EVENT_DTYPE", "FIRST_SACCADE_US", "first_saccade", "to_frames"]

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])
FIRST_SACCADE_US = 100_000


def _fields(events) -> np.ndarray:
    if not isinstance(events, np.ndarray) or events.dtype.names is None:
        raise StbpError(
            f"events must be a numpy structured array with fields x, y, t, p, got {type(events).__name__}"
            + (f" of dtype {events.dtype}" if isinstance(events, np.ndarray) else "")
        )
    missing = [f for f in ("x", "y", "t", "p") if f not in events.dtype.names]
    if missing:
        raise StbpError(f"events lack the field(s) {', '.join(missing)} (have {events.dtype.names})")
    if events.ndim != 1:
        raise StbpError(f"events must be a 1-d array, got shape {events.shape}")
    return events


def first_saccade(events: np.ndarray) -> np.ndarray:
    """The events of N-MNIST's first saccade: those with ``t < 100_000`` µs (as tonic's
    ``NMNIST(first_saccade_only=True)``; timestamps start near 0 in every recording)."""
    events = _fields(events)
    return events[events["t"] < FIRST_SACCADE_US]


def to_frames(
    events: np.ndarray,
    steps: int,
    *,
    sensor_size: tuple[int, int, int] = (34, 34, 2),
    time_window: int | None = None,
    binary: bool = True,
) -> np.ndarray:
    """Bin ``events`` into ``steps`` frames ``[steps, P, H, W]`` uint8 (see the module docstring).

    ``sensor_size`` is ``(W, H, P)``; every event must lie inside it (``0 <= x < W``,
    ``0 <= y < H``, ``0 <= p < P``) and timestamps must not decrease. No events give all-zero
    frames.
    """
    steps = require_positive_int(steps, "steps")
    if time_window is not None:
        time_window = require_positive_int(time_window, "time_window")
    if (
        not isinstance(sensor_size, (tuple, list))
        or len(sensor_size) != 3
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                   for s in sensor_size)
    ):
        raise StbpError(f"sensor_size must be three integers >= 1 (W, H, P), got {sensor_size!r}")
    width, height, pols = (int(s) for s in sensor_size)
    events = _fields(events)
    cells = pols * height * width
    if len(events) == 0:
        return np.zeros((steps, pols, height, width), dtype=np.uint8)

    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    p = events["p"].astype(np.int64)
    t = events["t"].astype(np.int64)
    for name, values, size in (("x", x, width), ("y", y, height), ("p", p, pols)):
        bad = np.flatnonzero((values < 0) | (values >= size))
        if bad.size:
            i = int(bad[0])
            raise StbpError(
                f"event {i} has {name} = {int(values[i])}, outside the sensor (sensor_size "
                f"{(width, height, pols)} allows {name} in 0..{size - 1}); {bad.size} such event(s)"
            )
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise StbpError(
            f"event timestamps go backwards at event {i} ({int(t[i - 1])} -> {int(t[i])} µs); "
            "events must be sorted by time"
        )

    rel = t - t[0]
    w = time_window if time_window is not None else max((int(t[-1]) - int(t[0])) // steps, 1)
    bins = rel // w
    keep = bins < steps
    flat = ((bins * pols + p) * height + y) * width + x
    counts = np.bincount(flat[keep], minlength=steps * cells)
    if binary:
        out = (counts > 0).astype(np.uint8)
    else:
        out = np.minimum(counts, 255).astype(np.uint8)
    return out.reshape(steps, pols, height, width)
