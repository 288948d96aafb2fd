"""Data-parallel training on CPU processes with ``torch.distributed`` (gloo).

Every process draws the same global batch (same seeded generators) and runs its own slice of it;
:class:`torch.nn.parallel.DistributedDataParallel` averages the gradients, which are scaled so
that the average equals the gradient of the global batch's mean loss. So N processes follow the
loss trajectory of one process with the same global batch (to float rounding).

Two ways in: ``stbp train --nproc N`` spawns N local processes, or an external launcher such as
``torchrun --nproc-per-node N -m stbp.cli train …`` sets ``RANK``/``WORLD_SIZE`` and
:func:`current` joins that group.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Group", "current", "launch", "die_with_parent"]


@dataclass(frozen=True)
class Group:
    """This process's place in the data-parallel group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world)
        lo = self.rank * base + min(self.rank, extra)
        return slice(lo, lo + base + (1 if self.rank < extra else 0))

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def current() -> Group:
    """The group this process belongs to; joins a launcher's group (``torchrun``) if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent(parent: int) -> None:
    """End this process when its parent ``parent`` ends (a killed ``--nproc`` launcher must not
    leave workers writing its run folder): the kernel's parent-death signal on Linux, and a
    watcher thread everywhere (it also covers a parent that died before the signal was set)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread alone
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="stbp-parent-watch", daemon=True).start()


def _entry(rank: int, world: int, port: int, threads: int, fn: Callable, kwargs: dict,
           parent: int | None = None) -> None:
    if parent is not None:
        die_with_parent(parent)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(**kwargs)
    finally:
        dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Run ``fn(**kwargs)`` in ``nproc`` local processes joined in one gloo group.

    The CPU threads are split between them. An error in any process is raised here; the
    processes end with this one, however it ends (:func:`die_with_parent`).
    """
    import torch.multiprocessing as mp

    threads = max(1, torch.get_num_threads() // nproc)
    mp.start_processes(_entry, args=(nproc, _free_port(), threads, fn, kwargs, os.getpid()),
                       nprocs=nproc,
                       join=True, start_method="spawn")
