"""The shared helpers: files written whole or not at all (stbp.io), seeded streams (stbp.seeds),
setting checks (stbp.checks)."""

from __future__ import annotations

import pytest
import torch

from stbp import checks, seeds
from stbp.errors import StbpError
from stbp.io import atomic_open, atomic_save, atomic_write


def test_atomic_write_and_save(tmp_path):
    path = tmp_path / "a.txt"
    assert atomic_write(path, "héllo\n") == path and path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    assert not list(tmp_path.glob("*.part"))


def test_a_failed_write_leaves_the_old_file_and_no_part(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as fh:
        fh.write("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old" and not list(tmp_path.glob("*.part"))
    with pytest.raises((AttributeError, TypeError)):
        atomic_save(lambda: 0, path)  # a local lambda cannot be pickled
    assert path.read_text() == "old" and not list(tmp_path.glob("*.part"))
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(path, "a"):
            pass


def test_seeded_generators():
    a = torch.rand(4, generator=seeds.generator(3, 1, 2))
    assert torch.equal(a, torch.rand(4, generator=seeds.generator(3, 1, 2)))
    assert not torch.equal(a, torch.rand(4, generator=seeds.generator(3, 2, 1)))
    assert seeds.seed_of(1, 2) == 1_000_003 + 2 and seeds.seed_of() == 0
    assert seeds.EVAL_SEED == 2_000_003  # fixed: runs of a seed see the same test spikes


def test_checks():
    assert checks.positive_int(3) and not checks.positive_int(True) and not checks.positive_int(0)
    assert checks.count_or_fraction(0.5) and not checks.count_or_fraction(1.0)
    decay = checks.number_in(0, 1, low_open=True)
    assert decay(1) and not decay(0) and decay.__doc__ == "a number in (0, 1]"
    assert checks.one_of("a", "b").__doc__ == "one of: a, b" and not checks.one_of("a")(["a"])
    assert checks.require_positive_int(5, "n") == 5
    with pytest.raises(StbpError, match="steps must be an integer >= 1, got 0"):
        checks.require_positive_int(0, "steps")
