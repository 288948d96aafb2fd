"""One writer per run folder: a lock file ``FOLDER/.lock`` held by a live process.

``stbp train`` (new runs and ``--resume``) and ``stbp reproduce`` hold the lock of their output
folder while they write it; a second process that wants the same folder is refused with one line
naming the process that holds it. The lock is an OS file lock (``fcntl.flock``) on that file: the
kernel drops it when its process ends, however it ends (``kill -9`` included), so a lock left by
a killed process is stale by construction and the next run takes it over (and says so). The
file records the holder's pid, host and start time, for the message only.

Where ``fcntl`` is missing (Windows) the file itself is the lock: created exclusively, holding
the pid; a file whose process no longer runs is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from stbp.errors import StbpError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "LOCK_NAME", "holder"]

LOCK_NAME = ".lock"


def holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What the lock file of ``folder`` says about its holder (pid, host, since, command), or
    None if there is none or it is unreadable. It does not say whether the lock is held."""
    try:
        info = json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """``with RunLock(folder, what="--out"):`` — hold ``folder``'s lock (creating the folder if
    needed) or raise :class:`StbpError` naming the process that holds it. A folder this lock
    created is removed again on release if it is still empty (a run refused before it wrote
    anything leaves nothing behind)."""

    def __init__(self, folder: str | os.PathLike, *, what: str = "--out",
                 log: Any = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._fd: int | None = None
        self._created = False
        self.took_over: dict[str, Any] | None = None

    # -- acquiring
    def acquire(self) -> RunLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise StbpError(f"{self.what} {self.folder}: exists and is not a directory")
        if not self.folder.exists():
            try:
                self.folder.mkdir(parents=True)
                self._created = True
            except FileExistsError:
                pass
            except OSError as err:
                raise StbpError(f"{self.what} {self.folder}: cannot create the folder "
                                f"({err.strerror or err})") from None
        before = holder(self.folder)
        try:
            if fcntl is not None:
                self._flock()
            else:  # pragma: no cover - Windows
                self._exclusive_file()
        except BaseException:
            self._remove_created()
            raise
        if before and before.get("pid") != os.getpid():
            self.took_over = before
            self.log(f"stbp: {self.folder}: taking over the stale lock of process "
                     f"{before.get('pid')} (no longer running)")
        self._write_info()
        return self

    def _refuse(self, info: dict[str, Any] | None) -> StbpError:
        who = "another process"
        if info:
            who = f"process {info.get('pid')}"
            if info.get("host") and info.get("host") != socket.gethostname():
                who += f" on {info['host']}"
            if info.get("since"):
                who += f" (since {info['since']})"
        return StbpError(f"{self.what} {self.folder}: in use by {who}, which holds "
                         f"{self.path}; wait for it to finish or use another folder")

    def _flock(self) -> None:
        for _ in range(20):  # the file may be replaced under us by a releasing holder: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise StbpError(f"{self.what} {self.folder}: cannot write the lock file "
                                f"{self.path} ({err.strerror or err})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._refuse(holder(self.folder)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)  # we locked a file its holder had just removed: try again
        raise self._refuse(holder(self.folder))  # pragma: no cover - pathological churn

    def _exclusive_file(self) -> None:  # pragma: no cover - Windows
        for _ in range(3):
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                return
            except FileExistsError:
                info = holder(self.folder)
                if info and _alive(info.get("pid")):
                    raise self._refuse(info) from None
                self.path.unlink(missing_ok=True)
        raise self._refuse(holder(self.folder))

    def _write_info(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:200]}
        data = (json.dumps(info) + "\n").encode()
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass  # the lock holds without its note (a full disk)

    # -- releasing
    def _remove_created(self) -> None:
        if self._created:
            try:
                self.folder.rmdir()  # only if empty
            except OSError:
                pass
            self._created = False

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: the next one starts afresh
        except OSError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = None
        self._remove_created()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
