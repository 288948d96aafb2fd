"""Shared fixtures. Real data comes from $STBP_DATA (a root holding mnist/ with the four IDX files)."""

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


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """Two short real-MNIST runs, an MLP 784-100-10 and a small CNN, for the tools that read
    run directories (eval, plot, export, reproduce's report)."""
    folder = _mnist_dir()
    if folder is None:
        pytest.skip(
            "real MNIST is absent: set STBP_DATA to a folder holding mnist/ with the four IDX files"
        )
    from stbp.config import load_config
    from stbp.train import train

    root = tmp_path_factory.mktemp("tiny_runs")
    mlp = load_config("mnist-mlp", overrides=["model.sizes=[784, 100, 10]", "data.shift=0",
                                              "train.epochs=2"])
    # small enough to train in seconds; V_th 0.25 and h2 so that its output layer fires
    cnn = load_config("mnist-cnn", overrides=["model.channels=[6, 12]", "model.hidden=[64]",
                                              "train.epochs=1", "encoding.steps=8", "data.shift=0",
                                              "neuron.threshold=0.25", "neuron.surrogate=polynomial"])
    train(mlp, root / "mlp", data_dir=folder, limit_train=800, limit_eval=300, progress=False)
    train(cnn, root / "cnn", data_dir=folder, limit_train=300, limit_eval=200, progress=False)
    return {"mlp": root / "mlp", "cnn": root / "cnn", "data": folder}


@pytest.fixture
def toy(tmp_path):
    """The toy dataset declared in tests/test_registry.py, registered for one test (its folder)."""
    from stbp.data import registry
    from test_registry import TOY

    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "toy.txt").write_text("toy\n")
    with registry.registered(TOY):
        yield tmp_path / "toy"
    assert "toy" not in registry.names()


@pytest.fixture
def benchmark(monkeypatch):
    """Load a script of benchmarks/ as a module: ``benchmark("peers")`` (its folder on the path,
    for the sibling modules a script imports)."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_bench", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
