"""Reader for the IDX format (LeCun's MNIST files), gzip-compressed or raw."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from stbp.errors import StbpError

__all__ = ["read_idx", "parse_idx", "write_idx", "load_bytes"]

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(np.uint8): 0x08}


def load_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``, decompressed if it is gzip (detected by its magic bytes)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise StbpError(f"{path}: cannot read ({err.strerror or err})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise StbpError(f"{path}: corrupt or truncated gzip data ({err})") from None
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an IDX byte string into an array of its stated shape and type."""
    if len(data) < 4:
        raise StbpError(f"{name}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise StbpError(f"{name}: not an IDX file (bad magic number {data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in _DTYPES:
        raise StbpError(f"{name}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise StbpError(f"{name}: IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise StbpError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[code]
    expected = dtype.itemsize * math.prod(shape)  # Python integers: huge dims cannot overflow
    body = len(data) - header
    if body < expected:
        raise StbpError(
            f"{name}: truncated IDX data: shape {shape} needs {expected} bytes, file has {body}"
        )
    if body > expected:
        raise StbpError(
            f"{name}: {body - expected} unexpected trailing bytes after the IDX data of shape {shape}"
        )
    try:  # numpy refuses a shape whose nonzero dims overflow its sizes, even with a zero dim
        arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    except ValueError as err:
        raise StbpError(f"{name}: IDX shape {shape} cannot be an array ({err})") from None
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw); if ``sha256`` is given, verify the decompressed content."""
    data = load_bytes(path)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise StbpError(
                f"{path}: checksum mismatch (sha256 of the content is {digest}, expected {sha256}); "
                "the file is corrupt or not the expected file"
            )
    return parse_idx(data, str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed if ``path`` ends in .gz), atomically."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise StbpError(f"write_idx supports uint8 arrays only, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    payload = header + array.tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6)
    tmp.write_bytes(payload)
    os.replace(tmp, path)
