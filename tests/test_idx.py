"""IDX parsing: round trips, every malformed case, and a fuzz run."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stbp.data.idx import parse_idx, read_idx, write_idx
from stbp.errors import StbpError


def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def test_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "raw").write_bytes(_idx(arr))
    assert np.array_equal(read_idx(tmp_path / "raw"), arr)
    assert not list(tmp_path.glob("*.part"))


def test_big_endian_types():
    data = bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + np.array([1, -2, 3], ">i4").tobytes()
    assert parse_idx(data).tolist() == [1, -2, 3]


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "not an IDX file"),
        (b"\x01\x00\x08\x01" + bytes(8), "bad magic"),
        (b"\x00\x00\x42\x01" + bytes(8), "unknown IDX data type"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (_idx(np.zeros((4, 5)))[:-3], "truncated IDX data"),
        (_idx(np.zeros((4, 5))) + b"xx", "trailing bytes"),
    ],
)
def test_malformed(data, message):
    with pytest.raises(StbpError, match=message):
        parse_idx(data, "f")


def test_corrupt_gzip_and_checksum(tmp_path):
    good = gzip.compress(_idx(np.ones((3, 3))))
    (tmp_path / "trunc.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(StbpError, match="trunc.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "trunc.gz")
    (tmp_path / "ok.gz").write_bytes(good)
    with pytest.raises(StbpError, match="checksum mismatch"):
        read_idx(tmp_path / "ok.gz", sha256="0" * 64)
    with pytest.raises(StbpError, match="cannot read"):
        read_idx(tmp_path / "missing.gz")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data):
    try:
        arr = parse_idx(data)
    except StbpError:
        return
    assert arr.size * arr.dtype.itemsize == len(data) - 4 - 4 * data[3]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3), st.lists(st.integers(0, 4), min_size=3, max_size=3), st.binary(max_size=40))
def test_fuzz_headers(ndim, dims, body):
    head = bytes([0, 0, 0x08, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims[:ndim])
    try:
        arr = parse_idx(head + body)
    except StbpError:
        return
    assert arr.shape == tuple(dims[:ndim])
