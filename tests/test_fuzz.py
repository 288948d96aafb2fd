"""Fuzzing the parsers of external files: configs (TOML), checkpoints (bytes, bit flips, crafted
pickles), IDX headers, the N-MNIST frame cache, NIR files, images, scene boxes and
/proc/cpuinfo."""

from __future__ import annotations

import io
import json
import math
import os
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbp.config import SCHEMA, load_config, validate
from stbp.errors import StbpError
from stbp.train import load_checkpoint

values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 1000), st.floats(allow_nan=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 2**63, 2**64, 10**20, -(2**64), 2**63 - 1]),
    st.integers(-(2**80), 2**80), st.text(max_size=8),
    st.lists(st.one_of(st.integers(-3, 900), st.integers(2**62, 2**70)), max_size=4),
)
tables = st.dictionaries(
    st.sampled_from([*SCHEMA, "junk"]),
    st.one_of(values, st.dictionaries(
        st.sampled_from([k for t in SCHEMA.values() for k in t] + ["zzz"]), values, max_size=6)),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(tables)
def test_fuzz_config_tables(cfg):
    try:
        out = validate(cfg, "fuzz")
    except StbpError:
        return
    assert set(out) == set(SCHEMA)
    _assert_sane(out)


def _assert_sane(value):
    """What validation lets through: finite numbers, integers within 64 bits."""
    if isinstance(value, dict):
        for v in value.values():
            _assert_sane(v)
    elif isinstance(value, list):
        for v in value:
            _assert_sane(v)
    elif isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, int) and not isinstance(value, bool):
        assert -(2**63) < value < 2**63, value


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["train.seed", "train.lr", "data.shift", "encoding.steps", "neuron.decay",
                        "neuron.threshold", "train.batch_size", "model.sizes", "train.momentum"]),
       st.sampled_from(["nan", "inf", "-inf", "+inf", str(2**63), str(2**64), "1e400", "10" * 12,
                        "[784, 18446744073709551616, 10]", "[784, nan, 10]", "-0.0", "1e-400"]))
def test_fuzz_overrides_with_nan_inf_and_huge_integers(key, value):
    try:
        cfg = load_config("mnist-mlp", overrides=[f"{key}={value}"])
    except StbpError:
        return
    _assert_sane(cfg)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=string.printable, max_size=120))
def test_fuzz_config_text(tmp_path, text):
    f = tmp_path / "f.toml"
    f.write_text(text)
    try:
        load_config("mnist-mlp", f)
    except StbpError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzz_checkpoint_bytes(tmp_path, data):
    f = tmp_path / "c.pt"
    f.write_bytes(data)
    with pytest.raises(StbpError):
        load_checkpoint(f)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000), st.integers(0, 255))
def test_fuzz_checkpoint_bitflips(tmp_path, pos, byte):
    buf = io.BytesIO()
    torch.save({"format": "stbp-checkpoint-v1", "config": {}, "model": {"w": torch.ones(3)},
                "epoch": 1}, buf)
    data = bytearray(buf.getvalue())
    data[pos % len(data)] = byte
    f = tmp_path / "c.pt"
    f.write_bytes(bytes(data))
    try:
        ckpt = load_checkpoint(f)
    except StbpError:
        return
    assert ckpt["format"] == "stbp-checkpoint-v1"


def test_a_checkpoint_whose_zip_names_an_unknown_version_is_one_clear_error_or_loads(tmp_path):
    """A flipped byte found by the fuzzer: the central directory's "version needed to extract"
    raised to 6.4 makes Python's zipfile raise NotImplementedError — load_checkpoint answers
    with a StbpError naming the file, or (torch's reader does not care) the checkpoint."""
    buf = io.BytesIO()
    torch.save({"format": "stbp-checkpoint-v1", "config": {}, "model": {"w": torch.ones(3)},
                "epoch": 1}, buf)
    data = bytearray(buf.getvalue())
    at = data.index(b"PK\x01\x02")  # the first central directory entry
    data[at + 6:at + 8] = (64).to_bytes(2, "little")  # version needed to extract: 6.4
    f = tmp_path / "c.pt"
    f.write_bytes(bytes(data))
    with pytest.raises(NotImplementedError):
        import zipfile

        zipfile.ZipFile(f)
    try:
        ckpt = load_checkpoint(f)
    except StbpError as err:
        assert str(f) in str(err)
        return
    assert ckpt["format"] == "stbp-checkpoint-v1"


_MARKER_PAYLOADS = [
    lambda m: (Path.write_text, (m, "ran")),
    lambda m: (os.system, (f"touch {m}",)),
    lambda m: (eval, (f"open({str(m)!r}, 'w').close()",)),
    lambda m: (exec, (f"open({str(m)!r}, 'w').close()",)),
]


@pytest.mark.parametrize("payload", range(len(_MARKER_PAYLOADS)))
@pytest.mark.parametrize("where", ["top", "config", "model"])
def test_a_crafted_checkpoint_payload_never_runs(tmp_path, payload, where):
    """A checkpoint whose pickle would write a marker file when unpickled: with weights_only=True
    it is refused and the marker never appears (a regression to weights_only=False fails here)."""
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return _MARKER_PAYLOADS[payload](marker)

    ckpt = {"format": "stbp-checkpoint-v1", "config": {}, "model": {"w": torch.ones(2)}, "epoch": 1}
    if where == "top":
        ckpt["extra"] = Payload()
    elif where == "config":
        ckpt["config"] = {"train": Payload()}
    else:
        ckpt["model"]["w"] = Payload()
    path = tmp_path / "best.pt"
    torch.save(ckpt, path)
    with pytest.raises(StbpError):
        load_checkpoint(path)
    from stbp.runs import load_run

    with pytest.raises(StbpError):
        load_run(tmp_path)
    assert not marker.exists()


# ---- IDX headers (stbp.data.idx.parse_idx), the frame cache, NIR files

@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(0, 2**32 - 1), min_size=6, max_size=6),
       st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]), st.binary(max_size=64))
def test_fuzz_idx_headers_with_huge_dims(ndim, dims, code, body):
    from stbp.data.idx import parse_idx

    data = bytes([0, 0, code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims[:ndim]) + body
    try:
        arr = parse_idx(data)
    except StbpError:
        return
    assert arr.shape == tuple(dims[:ndim]) and arr.nbytes == len(body)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_fuzz_frame_cache_files(tmp_path, data):
    import numpy as np

    from stbp.data.framecache import read_frame_cache

    path = tmp_path / "c.npz"
    path.write_bytes(data)
    got = read_frame_cache(path, "k", np.zeros(2, np.int64), 3, 1)
    assert got is None or got.shape == (2, 3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["file", "missing-parent", "dir"]), st.integers(1, 4))
def test_fuzz_frame_cache_in_unwritable_places(tmp_path, where, rows):
    import numpy as np

    from stbp.data.framecache import read_frame_cache, write_frame_cache

    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.npz").mkdir(exist_ok=True)
    path = {"file": tmp_path / "file" / "c.npz", "missing-parent": tmp_path / "file" / "a" / "c.npz",
            "dir": tmp_path / "dir.npz"}[where]
    frames, labels = np.zeros((rows, 3), np.uint8), np.zeros(rows, np.int64)
    write_frame_cache(path, "k", frames, labels, 1)  # a warning, never an exception
    assert read_frame_cache(path, "k", labels, 3, 1) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzz_nir_bytes(tmp_path, data):
    from stbp.export import read_nir

    f = tmp_path / "x.nir"
    f.write_bytes(data)
    with pytest.raises(StbpError):
        read_nir(f)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 2**31), min_size=1, max_size=4), st.sampled_from(["f4", "f8", "i8"]))
def test_fuzz_nir_declared_shapes(tmp_path, shape, dtype):
    """An HDF5 file may declare any shape in a few bytes: read_nir reads it only if it fits."""
    import h5py

    from stbp.export import from_nir, read_nir

    limit = 2**24  # 16 MiB: what fits is read (quickly), the rest refused unread

    f = tmp_path / "x.nir"
    with h5py.File(f, "w") as h:
        h.create_group("node/nodes/0").create_dataset(
            "weight", shape=tuple(shape), dtype=dtype, chunks=tuple(min(s, 16) for s in shape))
    size = math.prod(shape) * (4 if dtype == "f4" else 8)
    try:
        graph = read_nir(f, max_bytes=limit)
    except StbpError as err:
        assert (size > limit) == ("more than the 16 MiB allowed" in str(err)), (size, str(err))
        return
    assert size <= limit
    with pytest.raises(StbpError):
        from_nir(graph)


# ---- images (stbp.data.folder.read_image) and scene ground truth (stbp.data.scenes.load_scenes)

def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(torch.arange(48, dtype=torch.uint8).reshape(6, 8).numpy()).save(buf, format="PNG")
    return buf.getvalue()


_PNG = _png_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_fuzz_image_bytes(tmp_path, data):
    from stbp.data.folder import read_image

    f = tmp_path / "x.png"
    f.write_bytes(data)
    with pytest.raises(StbpError):
        read_image(f)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["gray", "rgb"]))
def test_fuzz_image_bitflips(tmp_path, pos, byte, color):
    from stbp.data.folder import read_image

    data = bytearray(_PNG)
    data[pos % len(data)] = byte
    f = tmp_path / "x.png"
    f.write_bytes(bytes(data))
    try:
        x = read_image(f, size=5, color=color)
    except StbpError:
        return
    assert x.shape == ((1 if color == "gray" else 3), 5, 5) and x.dtype.name == "uint8"


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=False),
              st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.sampled_from(["scenes", "image", "boxes", "x"]), inner,
                                            max_size=4)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=60)))
def test_fuzz_scene_ground_truth(tmp_path, text):
    from stbp.data.scenes import load_scenes

    (tmp_path / "boxes.json").write_text(text)
    try:
        scenes = load_scenes(tmp_path)
    except StbpError:
        return
    for s in scenes:
        assert all(len(b) == 4 and b[2] > b[0] and b[3] > b[1] for b in s["boxes"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=400), st.lists(st.sampled_from(
    ["flags", "Features", ":", "\t", " ", "\n", "avx512_bf16", "bf16", "amx_bf16", "processor",
     "\x00", "\xff", "é"]), max_size=40).map("".join).map(str.encode)))
def test_fuzz_cpuinfo(tmp_path, data):
    """/proc/cpuinfo as the bfloat16 check reads it: any bytes give a set of flags (those of
    the first "flags"/"Features" line, or none), never an error."""
    from stbp.kernels.runtime import cpu_flags

    path = tmp_path / "cpuinfo"
    path.write_bytes(data)
    flags = cpu_flags.__wrapped__(str(path))  # uncached: a file per example
    assert isinstance(flags, frozenset) and all(isinstance(f, str) and f for f in flags)
    text = data.decode("ascii", errors="replace")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # text mode's newlines
    first = next((line for line in lines if line.partition(":")[0].strip() in ("flags", "Features")),
                 None)
    assert flags == (frozenset(first.partition(":")[2].split()) if first else frozenset())
