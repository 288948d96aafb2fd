"""Run configuration: presets (TOML files shipped with stbp), user files and overrides.

A configuration has five tables — ``[data]``, ``[model]``, ``[neuron]``, ``[encoding]`` and
``[train]`` — each checked against :data:`SCHEMA` so that a typo or a bad value fails with one
message naming the file, the key and what is wrong.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from stbp import checks
from stbp.data import registry
from stbp.data.registry import dataset_info
from stbp.errors import StbpError
from stbp.functional.lif import LIFParams
from stbp.models import PADDINGS, READOUTS, conv_stage_sides

__all__ = ["load_config", "preset_names", "preset_path", "to_toml", "merge", "parse_override",
           "dataset_info", "with_dataset", "resolve_dataset", "validate", "differences"]


class _DataSchema(Mapping):
    """The ``[data]`` table's keys, read from the dataset registry (:mod:`stbp.data.registry`)
    each time: ``dataset``, the keys every dataset takes, and each registered dataset's own."""

    def _keys(self) -> dict[str, tuple[Any, bool]]:
        out: dict[str, tuple[Any, bool]] = {"dataset": (checks.one_of(*registry.names()), True)}
        out.update({k: (key.check, False) for k, key in registry.COMMON_KEYS.items()})
        for spec in registry.specs():
            for k, key in spec.keys.items():
                out.setdefault(k, (key.check, False))
        return out

    def __getitem__(self, key: str) -> tuple[Any, bool]:
        return self._keys()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


#: table -> key -> (check, required)
SCHEMA: dict[str, dict[str, tuple[Any, bool]]] = {
    "data": _DataSchema(),  # type: ignore[dict-item]
    "model": {
        "kind": (checks.one_of("mlp", "cnn"), True),
        "sizes": (checks.int_list, False),
        "channels": (checks.int_list, False),
        "hidden": (checks.int_list, False),
        "kernel_size": (checks.positive_int, False),
        "padding": (checks.one_of(*PADDINGS), False),
        "init": (checks.one_of("paper", "default"), False),
        "spiking": (checks.boolean, False),
        "readout": (checks.one_of(*READOUTS), False),
    },
    # the values' form here; their meaning (ranges, names) is checked once, by LIFParams
    "neuron": {
        "decay": (checks.number, True),
        "threshold": (checks.number, True),
        "surrogate": (checks.string, False),
        "width": (checks.number, False),
        "reset": (checks.string, False),
        "temporal": (checks.boolean, False),
        "backend": (checks.string, False),
    },
    "encoding": {
        "kind": (checks.one_of("bernoulli", "direct", "events"), False),
        "steps": (checks.positive_int, True),
    },
    "train": {
        "epochs": (checks.positive_int, True),
        "batch_size": (checks.positive_int, True),
        "eval_batch_size": (checks.positive_int, False),
        "optimizer": (checks.one_of("adam", "adamw", "sgd"), False),
        "lr": (checks.positive_number, True),
        "momentum": (checks.nonneg_number, False),
        "weight_decay": (checks.nonneg_number, False),
        "ema": (checks.number_in(0.0, 1.0, high_open=True), False),
        "schedule": (checks.one_of("none", "cosine", "step"), False),
        "step_epochs": (checks.positive_int, False),
        "step_gamma": (checks.positive_number, False),
        "loss": (checks.one_of("mse", "cross_entropy"), False),
        "ce_scale": (checks.positive_number, False),
        "seed": (checks.nonneg_int, False),
        "precision": (checks.one_of("fp32", "bf16"), False),
        "device": (checks.one_of("auto", "cpu", "cuda"), False),
    },
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"init": "paper", "spiking": True},
    "neuron": LIFParams.defaults(),
    "encoding": {"kind": "bernoulli"},
    "train": {
        "eval_batch_size": 1000, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0, "ema": 0.0,
        "schedule": "cosine", "step_epochs": 30, "step_gamma": 0.1, "loss": "mse", "ce_scale": 10.0,
        "seed": 0, "precision": "fp32", "device": "auto",
    },
}


def preset_names() -> list[str]:
    """Names of the presets shipped with stbp."""
    folder = resources.files("stbp") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_path(name: str) -> Path:
    if name not in preset_names():
        raise StbpError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return Path(str(resources.files("stbp") / "presets" / f"{name}.toml"))


def preset_description(name: str) -> str:
    first = preset_path(name).read_text().splitlines()[0]
    return first.lstrip("# ").strip()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StbpError(f"config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise StbpError(f"config {path}: cannot read ({err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StbpError(f"config {path}: not valid TOML ({err})") from None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Table-wise merge: keys in ``over`` replace those in ``base``."""
    out = copy.deepcopy(base)
    for table, values in over.items():
        if isinstance(values, dict) and isinstance(out.get(table), dict):
            out[table].update(copy.deepcopy(values))
        else:
            out[table] = copy.deepcopy(values)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.lr=0.001"`` → ``{"train": {"lr": 0.001}}`` (the value is read as TOML)."""
    key, sep, value = text.partition("=")
    table, dot, name = key.strip().partition(".")
    if not sep or not dot or not table or not name:
        raise StbpError(f"--set {text!r}: expected TABLE.KEY=VALUE, e.g. train.lr=0.001")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word, e.g. surrogate=gaussian
    return {table: {name: parsed}}


#: [model] keys that apply to each kind of network.
MODEL_KEYS = {
    "mlp": {"kind", "sizes", "init", "spiking", "readout"},
    "cnn": {"kind", "channels", "hidden", "kernel_size", "padding", "init", "spiking", "readout"},
}


def _check_data(cfg: dict[str, Any], source: str) -> None:
    """Cross-key checks of [data] against its dataset's declaration (:mod:`stbp.data.registry`):
    keys that apply, the dataset's own checks, and an encoding that fits the data."""
    data = cfg["data"]
    spec = registry.get(data["dataset"])
    extra = sorted(set(data) - spec.key_names())
    if extra:
        raise StbpError(
            f"config {source}: [data] {', '.join(extra)} do(es) not apply to dataset = "
            f"{data['dataset']!r}"
        )
    for key, value in data.items():
        check = spec.keys[key].check if key in spec.keys else None
        if check is not None and not check(value):
            raise StbpError(f"config {source}: [data] {key} = {value!r} is invalid; expected "
                            f"{check.__doc__}")
    if spec.check is not None:
        try:
            spec.check(data)
        except StbpError as err:
            raise StbpError(f"config {source}: {err}") from None
    kind = cfg["encoding"]["kind"]
    if kind not in spec.encodings:
        use = " or ".join(f"'{e}'" for e in spec.encodings)
        hint = ("event recordings are their own spikes; use kind = 'events'" if spec.events
                else f"use {use}" + (" for images" if {"bernoulli", "direct"} >= set(spec.encodings)
                                     else ""))
        raise StbpError(f"config {source}: [encoding] kind = {kind!r} does not fit dataset = "
                        f"{data['dataset']!r}: {hint}")


def _check_model(cfg: dict[str, Any], source: str) -> None:
    """Cross-key checks: the network's shape must fit the dataset's images and classes."""
    model, data = cfg["model"], cfg["data"]
    ds = dataset_info(data)
    kind = model["kind"]
    extra = sorted(set(model) - MODEL_KEYS[kind])
    if extra:
        raise StbpError(
            f"config {source}: [model] {', '.join(extra)} do(es) not apply to kind = {kind!r}; "
            f"it takes {', '.join(sorted(MODEL_KEYS[kind] - {'kind'}))}"
        )
    if isinstance(data["validation"], int) and ds.train_size and not (
        data["validation"] < ds.train_size
    ):
        raise StbpError(
            f"config {source}: [data] validation = {data['validation']} must be smaller than the "
            f"{ds.train_size} {data['dataset']} training images"
        )
    c, h, w = ds.input
    if data.get("shift", 0) >= min(h, w):
        raise StbpError(
            f"config {source}: [data] shift = {data['shift']} must be smaller than the {h}x{w} "
            f"{data['dataset']} images (a random shift of up to that many pixels)"
        )
    if kind == "mlp":
        sizes = model.get("sizes")
        if sizes is None or len(sizes) < 2:
            raise StbpError(
                f"config {source}: [model] kind = 'mlp' needs sizes = [in, ..., out] with at "
                f"least 2 entries, e.g. [{c * h * w}, 800, {ds.classes or 2}]"
            )
        if sizes[0] != c * h * w:
            raise StbpError(
                f"config {source}: [model] sizes = {sizes} must start with {c * h * w}: "
                f"{data['dataset']} images have {c}x{h}x{w} = {c * h * w} pixels"
            )
        if ds.classes is not None and sizes[-1] != ds.classes:
            raise StbpError(
                f"config {source}: [model] sizes = {sizes} must end with {ds.classes}, the "
                f"number of {data['dataset']} classes"
            )
    else:
        kernel, padding = model.get("kernel_size", 5), model.get("padding", "same")
        if kernel % 2 == 0 and padding == "same":
            raise StbpError(
                f"config {source}: [model] kernel_size = {kernel} must be odd ('same' padding)"
            )
        pools = len(model.get("channels", [15, 40]))
        fit = 0
        while fit < pools and _stages_fit(min(h, w), fit + 1, kernel, padding):
            fit += 1
        if fit < pools:
            raise StbpError(
                f"config {source}: [model] channels has {pools} conv+pool stages; {h}x{w} "
                f"{data['dataset']} images allow at most {fit} with {kernel}x{kernel} "
                f"{padding!r} convolutions")


def _stages_fit(side: int, stages: int, kernel: int, padding: str) -> bool:
    try:
        conv_stage_sides(side, stages, kernel, padding)
    except StbpError:
        return False
    return True


def validate(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """Check every table and key against :data:`SCHEMA`; return the config with defaults filled."""
    if not isinstance(cfg, dict):
        raise StbpError(f"config {source}: expected tables, got {type(cfg).__name__}")
    for table in cfg:
        if table not in SCHEMA:
            raise StbpError(
                f"config {source}: unknown table [{table}]; expected {', '.join(SCHEMA)}"
            )
    out: dict[str, Any] = {}
    for table, keys in SCHEMA.items():
        values = cfg.get(table, {})
        if not isinstance(values, dict):
            raise StbpError(f"config {source}: [{table}] must be a table")
        for key, value in values.items():
            if key not in keys:
                raise StbpError(
                    f"config {source}: unknown key {key!r} in [{table}]; expected one of "
                    f"{', '.join(keys)}"
                )
            check, _ = keys[key]
            if not check(value):
                raise StbpError(
                    f"config {source}: [{table}] {key} = {value!r} is invalid; expected "
                    f"{check.__doc__}"
                )
        for key, (_, required) in keys.items():
            if required and key not in values:
                raise StbpError(f"config {source}: [{table}] is missing the required key {key!r}")
        out[table] = {**DEFAULTS.get(table, {}), **values}
    # the dataset's defaults (its own keys and the common ones; absent if it has none)
    out["data"] = {**registry.get(out["data"]["dataset"]).defaults, **out["data"]}
    try:  # the neuron's settings, checked where they are defined
        LIFParams(**out["neuron"])
    except StbpError as err:
        raise StbpError(f"config {source}: [neuron] {err}") from None
    _check_data(out, source)
    _check_model(out, source)
    return out


def with_dataset(cfg: dict[str, Any], dataset: str) -> dict[str, Any]:
    """``--dataset``: a registered dataset's name (e.g. ``"mnist"``), or ``"NAME:VALUE"`` for one
    that takes an argument (``"folder:PATH"``), in place of a (raw) config's dataset; [data] keys
    that belong to the previous dataset only are dropped."""
    name, sep, value = dataset.partition(":")
    spec = registry.get(name) if name in registry.names() else None
    if spec is None or (spec.argument is not None) != bool(sep) or (sep and not value):
        raise StbpError(f"--dataset {dataset!r}: expected {registry.dataset_forms()}")
    data = dict(cfg.get("data", {})) if isinstance(cfg.get("data"), dict) else {}
    data = {k: v for k, v in data.items() if k in spec.key_names()}
    if data.get("dataset") != name and "validation" in data:
        del data["validation"]  # a count of MNIST images means nothing for another dataset
    data["dataset"] = name
    if spec.argument is not None:
        data[spec.argument] = value
    out = copy.deepcopy(cfg)
    out["data"] = data
    return out


def resolve_dataset(cfg: dict[str, Any], data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The config with what only the dataset's files tell filled in (a folder dataset: its path
    made absolute — ``data_dir``, if given, replaces it — and its class names), validated again;
    other configs as they are. A run saves the resolved config, so its network's shape is known
    without the data."""
    data = cfg["data"]
    resolved = registry.get(data["dataset"]).resolve(dict(data), data_dir)
    if resolved == data:
        return cfg
    changed = ", ".join(f"{k} = {resolved[k]!r}" for k in resolved if resolved[k] != data.get(k))
    return validate({**cfg, "data": resolved}, f"[data] {changed}")


def differences(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``"table.key = given differs from the run's saved"`` for every setting that differs."""
    out = []
    for table in sorted(set(saved) | set(given)):
        a, b = saved.get(table, {}), given.get(table, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{table}.{key} = {b.get(key)!r} differs from the run's {a.get(key)!r}")
    return out


def load_config(
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """A validated configuration: a preset, then a user file on top, then ``--dataset``, then
    ``--set`` overrides."""
    if preset is None and config is None:
        raise StbpError("give --preset NAME or --config FILE (see `stbp presets`)")
    cfg: dict[str, Any] = {}
    sources = []
    if preset is not None:
        cfg = _read_toml(preset_path(preset))
        sources.append(f"preset {preset}")
    if config is not None:
        cfg = merge(cfg, _read_toml(Path(config)))
        sources.append(str(config))
    if dataset is not None:
        cfg = with_dataset(cfg, dataset)
        sources.append(f"--dataset {dataset}")
    for item in overrides or []:
        cfg = merge(cfg, parse_override(item))
        sources.append(f"--set {item}")
    return validate(cfg, " + ".join(sources))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise StbpError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: dict[str, Any]) -> str:
    """Write a (validated, flat-tabled) config as TOML."""
    lines = []
    for table, values in cfg.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
