"""Files written whole or not at all: a temporary ``NAME.part`` beside the target, flushed to
disk (fsync), then renamed over it. If anything fails on the way the ``.part`` file is removed
and the target is left as it was; a reader never sees half a file.

A failure of the file system (a read-only folder, a full disk) is raised as one
:class:`~stbp.errors.StbpError` naming the file and the OS error (``cannot write PATH (No space
left on device)``) — also when it reaches us wrapped, as torch.save's ``RuntimeError``.

Used for run folders (config, metrics, summary, checkpoints), figures, reports and detections.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from stbp.errors import StbpError

__all__ = ["atomic_open", "atomic_write", "atomic_save", "os_error"]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path.part`` for writing (``"wb"`` or ``"w"``, text as UTF-8); on a clean exit it
    is fsynced and renamed to ``path``; on an error it is removed and ``path`` is untouched."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a new file: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as err:
        cause = os_error(err)
        if cause is None or isinstance(err, StbpError):
            raise
        raise StbpError(f"cannot write {path} ({cause.strerror or cause})") from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - a folder that lets us write but not remove
            pass


def os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err`` (itself, or what it was raised from or during), if any."""
    for _ in range(8):
        if err is None or isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text, as UTF-8, or bytes) to ``path`` whole or not at all."""
    with atomic_open(path, "wb") as fh:
        fh.write(data if isinstance(data, bytes) else data.encode("utf-8"))
    return Path(path)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, whole or not at all (a checkpoint is never half written)."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)
