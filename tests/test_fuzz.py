"""Fuzzing the parsers of external files: configs (TOML), checkpoints, images and scene boxes."""

from __future__ import annotations

import io
import json
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stbp.config import SCHEMA, load_config, validate
from stbp.errors import StbpError
from stbp.train import load_checkpoint

values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 1000), st.floats(allow_nan=True),
    st.text(max_size=8), st.lists(st.integers(-3, 900), max_size=4),
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
