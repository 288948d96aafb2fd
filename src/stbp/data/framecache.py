"""An on-disk cache of binned event frames: one ``.npz`` per (dataset, split, parameters) holding
the frames (``uint8``, one row per recording, bit-packed for binary frames), the labels and a
header with the cache ``version``, the ``key`` of what it was built from and a CRC of the
frames. A cache that does not match in every respect is ignored (and rebuilt by the caller)."""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_frame_cache", "write_frame_cache"]


def read_frame_cache(path: Path, key: str, labels: np.ndarray, row: int, version: int) -> np.ndarray | None:
    """The stored frames if ``path`` is an intact cache for ``key``; None otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            stored = z["frames"]
            cached_labels = z["labels"]
    except Exception:  # any failure to load means a corrupt or foreign file: rebuild it
        return None
    ok = (
        isinstance(meta, dict)
        and meta.get("version") == version
        and meta.get("key") == key
        and stored.dtype == np.uint8
        and stored.shape == (len(labels), row)
        and np.array_equal(cached_labels, labels)
        and meta.get("crc32") == zlib.crc32(stored)
    )
    return stored if ok else None


def write_frame_cache(path: Path, key: str, stored: np.ndarray, labels: np.ndarray, version: int,
                      *, dataset: str = "N-MNIST") -> None:
    """Store ``stored`` (one row per sample) and ``labels`` under ``key``, whole or not at all
    (a per-process ``.part`` file renamed into place); a failure to write is reported, not
    raised (the frames are used without a cache)."""
    meta = {"version": version, "key": key, "crc32": zlib.crc32(stored)}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, frames=stored, labels=labels,
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        os.replace(tmp, path)
    except (OSError, ValueError) as err:
        print(f"stbp: could not write the {dataset} frame cache {path} "
              f"({getattr(err, 'strerror', None) or err}); continuing without it", file=sys.stderr)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder cannot be read or is not one: nothing was written there
            pass
