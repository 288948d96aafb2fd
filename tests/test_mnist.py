"""Real MNIST through $STBP_DATA, the source order, and the PyPI-mirror conversion path."""

from __future__ import annotations

import gzip
import io
import pickle
import shutil

import numpy as np
import pytest
import torch

from stbp.data import MNIST, locate_mnist
from stbp.data.mnist import MNIST_FILES, _mnist_from_pickle
from stbp.errors import StbpError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_splits(mnist):
    assert [len(mnist[s]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    train_y = torch.cat([mnist["train"].labels, mnist["val"].labels])
    assert torch.bincount(train_y).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist["test"].labels).tolist() == TEST_COUNTS
    assert mnist["train"].labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist["train"].images.dtype == torch.uint8
    assert mnist["train"].images.shape[1:] == (28, 28)


def test_dataset_items(mnist_dir):
    ds = MNIST(mnist_dir, "val")
    x, y = ds[0]
    assert len(ds) == 5000 and x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int)
    with pytest.raises(StbpError, match="unknown MNIST split"):
        MNIST(mnist_dir, "dev")


def test_source_order(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STBP_DATA", str(mnist_dir.parent))
    assert locate_mnist() == mnist_dir
    assert locate_mnist(mnist_dir.parent) == mnist_dir  # a root holding mnist/ also works
    monkeypatch.setenv("STBP_DATA", str(mnist_dir))  # STBP_DATA pointing at mnist/ itself
    assert locate_mnist(download=False) == mnist_dir
    monkeypatch.delenv("STBP_DATA")
    with pytest.raises(StbpError, match="MNIST not found"):
        locate_mnist(download=False)
    with pytest.raises(StbpError, match="no such directory"):
        locate_mnist(tmp_path / "nope")
    with pytest.raises(StbpError, match="missing MNIST file"):
        locate_mnist(tmp_path)


def test_corrupted_copy_is_refused(mnist_dir, tmp_path):
    bad = tmp_path / "mnist"
    shutil.copytree(mnist_dir, bad)
    name = "t10k-labels-idx1-ubyte"
    path = bad / name if (bad / name).exists() else bad / (name + ".gz")
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    flipped = data[:-1] + bytes([(data[-1] + 1) % 10])
    path.unlink()
    (bad / name).write_bytes(flipped)
    from stbp.data import load_mnist

    with pytest.raises(StbpError, match="checksum mismatch"):
        load_mnist(bad)


def _pickled(obj) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=2))


def test_mirror_pickle_wrong_content_is_deleted(tmp_path):
    rng = np.random.default_rng(0)
    split = (rng.random((4, 784), dtype=np.float32), np.arange(4, dtype=np.int64))
    with pytest.raises(StbpError, match="checksum mismatch"):
        _mnist_from_pickle(_pickled((split, split, split)), tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(tuple(MNIST_FILES))]


def test_mirror_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    with pytest.raises(StbpError, match="forbidden global"):
        _mnist_from_pickle(_pickled(Evil()), tmp_path)
    assert (tmp_path / "victim").is_dir()
    with pytest.raises(StbpError, match="could not be read"):
        _mnist_from_pickle(b"not gzip", tmp_path)
    with pytest.raises(StbpError, match="could not be read"):
        _mnist_from_pickle(gzip.compress(io.BytesIO(b"\x80\x02K\x01.").read()), tmp_path)
