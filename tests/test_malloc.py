"""stbp.malloc: large blocks kept in the heap, so a training loop stops faulting pages in."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

_PROBE = """
import json
import numpy as np
from stbp.malloc import apply_from_env
applied = apply_from_env()
def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS")) / 1024
before = rss_mb()
a = np.ones(64 << 18, np.float32)  # 64 MiB: above glibc's largest mmap threshold
del a
kept = rss_mb() - before  # what the process still holds after freeing it
b = np.ones(64 << 18, np.float32)
grown = rss_mb() - before  # a second block of the size: reused, or mapped afresh
print(json.dumps({"applied": applied, "kept": kept, "grown": grown}))
"""


def _probe(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "STBP_MALLOC"}
    if env_value is not None:
        env["STBP_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator settings are glibc's; elsewhere they are not applied")
def test_large_blocks_stay_in_the_heap_for_reuse():
    tuned = _probe(None)
    plain = _probe("default")
    assert tuned["applied"] and not plain["applied"]
    assert plain["kept"] < 16  # glibc unmaps a freed 64 MiB block at once ...
    assert tuned["kept"] > 48  # ... stbp's setting keeps it for the next step
    assert tuned["grown"] < 80  # and the next block of that size reuses it


def test_a_bad_stbp_malloc_is_one_clear_error(monkeypatch, capsys):
    from stbp import cli

    monkeypatch.setenv("STBP_MALLOC", "jemalloc")
    assert cli.main(["train", "--preset", "mnist-mlp", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "STBP_MALLOC='jemalloc'" in err and "'heap'" in err and "'default'" in err
