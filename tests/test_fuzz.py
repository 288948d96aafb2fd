"""Fuzzing the parsers of external files: configs (TOML) and checkpoints."""

from __future__ import annotations

import io
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
