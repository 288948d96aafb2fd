"""Presets and config validation."""

from __future__ import annotations

import re

import pytest

from stbp.config import load_config, parse_override, preset_names, to_toml, validate
from stbp.errors import StbpError


def test_presets_load_and_round_trip(tmp_path):
    assert {"mnist-mlp", "mnist-cnn", "nmnist-mlp", "nmnist-cnn"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(to_toml(cfg))
        assert load_config(config=path) == cfg
    mlp = load_config("mnist-mlp")
    assert mlp["model"]["sizes"] == [784, 800, 10]
    assert mlp["encoding"]["steps"] == 30 and mlp["neuron"]["width"] == 1.0


def test_config_on_preset_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nlr = 0.002\n[neuron]\nsurrogate = 'gaussian'\n")
    cfg = load_config("mnist-mlp", f, ["train.epochs=3", "neuron.reset=paper"])
    assert cfg["train"]["lr"] == 0.002 and cfg["train"]["epochs"] == 3
    assert cfg["neuron"]["surrogate"] == "gaussian" and cfg["neuron"]["reset"] == "paper"
    assert parse_override("neuron.surrogate=sigmoid") == {"neuron": {"surrogate": "sigmoid"}}


@pytest.mark.parametrize(
    "text,message",
    [
        ("[trian]\n", "unknown table \\[trian\\]"),
        ("[train]\nlearning_rate = 1\n", "unknown key 'learning_rate' in \\[train\\]"),
        ("[train]\nlr = -1\n", "lr = -1 is invalid; expected a number > 0"),
        ("[train]\nepochs = 0\n", "epochs = 0 is invalid"),
        ("[train]\nbatch_size = 1.5\n", "batch_size = 1.5 is invalid"),
        ("[neuron]\ndecay = 0\n", "\\[neuron\\] decay must be in \\(0, 1\\], got 0"),
        ("[neuron]\nwidth = 0\n", "\\[neuron\\] surrogate width must be a finite number > 0"),
        ("[neuron]\nsurrogate = 'boxcar'\n", "\\[neuron\\] unknown surrogate 'boxcar'; choose one of"),
        ("[neuron]\nreset = 'soft'\n", "\\[neuron\\] unknown reset 'soft'"),
        ("[neuron]\nbackend = 'gpu'\n", "\\[neuron\\] unknown backend 'gpu'"),
        ("[neuron]\ndecay = 'fast'\n", "decay = 'fast' is invalid; expected a finite number"),
        ("[encoding]\nsteps = 0\n", "steps = 0 is invalid"),
        ("[model]\nkind = 'rnn'\n", "kind = 'rnn' is invalid"),
        ("[model]\nsizes = []\n", "sizes = \\[\\] is invalid"),
        ("[train]\nlr = \n", "not valid TOML"),
        ("train = 3\n", "\\[train\\] must be a table"),
    ],
)
def test_bad_config_values(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(StbpError, match=message) as info:
        load_config("mnist-mlp", f)
    assert "bad.toml" in str(info.value)


def test_missing_required_and_unknown_preset(tmp_path):
    with pytest.raises(StbpError, match="missing the required key 'decay'"):
        validate({"data": {"dataset": "mnist"}, "model": {"kind": "mlp", "sizes": [4, 2]},
                  "neuron": {"threshold": 1}, "encoding": {"steps": 3},
                  "train": {"epochs": 1, "batch_size": 2, "lr": 0.1}}, "x")
    with pytest.raises(StbpError, match="unknown preset 'mnist-rnn'; available: detect-cnn, mnist-cnn"):
        load_config("mnist-rnn")
    with pytest.raises(StbpError, match="no such file"):
        load_config(config=tmp_path / "none.toml")
    with pytest.raises(StbpError, match="expected TABLE.KEY=VALUE"):
        parse_override("lr=3")


def test_event_data_settings():
    cfg = load_config("nmnist-mlp")
    assert cfg["model"]["sizes"] == [2312, 800, 10]
    assert cfg["neuron"]["decay"] == 0.2 and cfg["neuron"]["threshold"] == 0.2  # the paper's
    assert cfg["data"]["frames"] == "binary" and cfg["data"]["validation"] == 0.1
    assert cfg["encoding"] == {"kind": "events", "steps": 30}
    # dataset-specific keys: defaults only where they apply
    assert "frames" not in load_config("mnist-mlp")["data"]
    no_window = load_config("nmnist-cnn", overrides=["data.time_window=1000"])
    assert no_window["data"]["time_window"] == 1000 and no_window["model"]["kind"] == "cnn"


@pytest.mark.parametrize(
    "preset,override,message",
    [
        ("mnist-mlp", "data.frames='binary'", "frames do(es) not apply to dataset = 'mnist'"),
        ("mnist-mlp", "encoding.kind='events'", "does not fit dataset = 'mnist'"),
        ("nmnist-mlp", "encoding.kind='bernoulli'", "event recordings are their own spikes"),
        ("nmnist-mlp", "model.sizes=[784, 800, 10]", "must start with 2312"),
        ("nmnist-mlp", "data.validation=1.5", "validation = 1.5 is invalid; expected a count"),
        ("nmnist-mlp", "data.validation=0.0", "validation = 0.0 is invalid"),
        ("nmnist-mlp", "data.frames='counts'", "frames = 'counts' is invalid; expected one of"),
        ("nmnist-mlp", "data.time_window=-5", "time_window = -5 is invalid"),
        ("nmnist-mlp", "data.verify=1", "verify = 1 is invalid; expected true or false"),
    ],
)
def test_bad_event_data_settings(preset, override, message):
    with pytest.raises(StbpError, match=re.escape(message)):
        load_config(preset, overrides=[override])
