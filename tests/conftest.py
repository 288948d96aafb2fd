"""Shared fixtures. Real data comes from $STBP_DATA (a root holding mnist/, as ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stbp.data.mnist import MNIST_FILES


def _mnist_dir() -> Path | None:
    root = os.environ.get("STBP_DATA")
    if not root:
        return None
    folder = Path(root) / "mnist"
    ok = all((folder / n).is_file() or (folder / (n + ".gz")).is_file() for n in MNIST_FILES)
    return folder if ok else None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    folder = _mnist_dir()
    if folder is None:
        pytest.skip(
            "real MNIST is absent: set STBP_DATA to a folder holding mnist/ with the four IDX files"
        )
    return folder


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from stbp.data import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache or the network from a test."""
    monkeypatch.setenv("STBP_CACHE", str(tmp_path / "cache"))
