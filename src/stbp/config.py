"""Run configuration: presets (TOML files shipped with stbp), user files and overrides.

A configuration has five tables — ``[data]``, ``[model]``, ``[neuron]``, ``[encoding]`` and
``[train]`` — each checked against :data:`SCHEMA` so that a typo or a bad value fails with one
message naming the file, the key and what is wrong.
"""

from __future__ import annotations

import copy
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from stbp.errors import StbpError
from stbp.functional.lif import BACKENDS, RESETS
from stbp.functional.surrogate import SURROGATES, get_surrogate

__all__ = ["load_config", "preset_names", "preset_path", "to_toml", "merge", "parse_override",
           "dataset_info", "with_dataset"]


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos_num(v: Any) -> bool:
    return _num(v) and v > 0


def _nonneg_num(v: Any) -> bool:
    return _num(v) and v >= 0


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(_pos_int(x) for x in v)


def _one_of(*options: str):
    def check(v: Any) -> bool:
        return v in options

    check.__doc__ = "one of: " + ", ".join(options)
    return check


def _surrogate_name(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        get_surrogate(v)
    except StbpError:
        return False
    return True


_surrogate_name.__doc__ = "one of: " + ", ".join(SURROGATES)
_pos_int.__doc__ = "an integer > 0"
_nonneg_int.__doc__ = "an integer >= 0"
_pos_num.__doc__ = "a number > 0"
_nonneg_num.__doc__ = "a number >= 0"
_int_list.__doc__ = "a non-empty list of integers > 0"


def _decay(v: Any) -> bool:
    return _num(v) and 0 < v <= 1


_decay.__doc__ = "a number in (0, 1]"


def _validation(v: Any) -> bool:
    return _pos_int(v) or (_num(v) and isinstance(v, float) and 0 < v < 1)


_validation.__doc__ = "a count of samples (an integer > 0) or a fraction in (0, 1)"


def _rotate(v: Any) -> bool:
    return _num(v) and 0 <= v <= 180


_rotate.__doc__ = "a number of degrees in [0, 180]"


def _scale(v: Any) -> bool:
    return _num(v) and 0 <= v < 1


_scale.__doc__ = "a number in [0, 1)"


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


_bool.__doc__ = "true or false"


def _str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


_str.__doc__ = "a non-empty string"


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 2 and all(_str(x) for x in v)


_str_list.__doc__ = "a list of at least 2 non-empty strings"

#: table -> key -> (check, required)
SCHEMA: dict[str, dict[str, tuple[Any, bool]]] = {
    "data": {
        "dataset": (_one_of("mnist", "nmnist", "folder"), True),
        "validation": (_validation, False),
        "shift": (_nonneg_int, False),
        # images (mnist, folder) only: random rotation (degrees) and scaling, training only
        "rotate": (_rotate, False),
        "scale": (_scale, False),
        # event data (nmnist) only:
        "frames": (_one_of("binary", "count"), False),
        "time_window": (_nonneg_int, False),
        "first_saccade": (_bool, False),
        "verify": (_bool, False),
        # your own images (folder) only:
        "path": (_str, False),
        "size": (_pos_int, False),
        "color": (_one_of("gray", "rgb"), False),
        "test": (_validation, False),
        "split_seed": (_nonneg_int, False),
        "classes": (_str_list, False),
    },
    "model": {
        "kind": (_one_of("mlp", "cnn"), True),
        "sizes": (_int_list, False),
        "channels": (_int_list, False),
        "hidden": (_int_list, False),
        "kernel_size": (_pos_int, False),
        "init": (_one_of("paper", "default"), False),
        "spiking": (_bool, False),
    },
    "neuron": {
        "decay": (_decay, True),
        "threshold": (_pos_num, True),
        "surrogate": (_surrogate_name, False),
        "width": (_pos_num, False),
        "reset": (_one_of(*RESETS), False),
        "temporal": (_bool, False),
        "backend": (_one_of(*BACKENDS), False),
    },
    "encoding": {
        "kind": (_one_of("bernoulli", "direct", "events"), False),
        "steps": (_pos_int, True),
    },
    "train": {
        "epochs": (_pos_int, True),
        "batch_size": (_pos_int, True),
        "eval_batch_size": (_pos_int, False),
        "optimizer": (_one_of("adam", "adamw", "sgd"), False),
        "lr": (_pos_num, True),
        "momentum": (_nonneg_num, False),
        "weight_decay": (_nonneg_num, False),
        "schedule": (_one_of("none", "cosine", "step"), False),
        "step_epochs": (_pos_int, False),
        "step_gamma": (_pos_num, False),
        "loss": (_one_of("mse", "cross_entropy"), False),
        "ce_scale": (_pos_num, False),
        "seed": (_nonneg_int, False),
        "precision": (_one_of("fp32", "bf16"), False),
        "device": (_one_of("auto", "cpu", "cuda"), False),
    },
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"shift": 0},
    "model": {"init": "paper", "spiking": True},
    "neuron": {"surrogate": "rectangular", "width": 1.0, "reset": "zero", "temporal": True,
               "backend": "auto"},
    "encoding": {"kind": "bernoulli"},
    "train": {
        "eval_batch_size": 1000, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0,
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


#: What each dataset feeds the network: input shape (C, H, W), number of classes, training samples
#: (None: known only once the folder is read, as for the N-MNIST subset). A folder dataset's
#: shape comes from its [data] size/color/classes (:func:`dataset_info`).
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"input": (1, 28, 28), "classes": 10, "train_images": 60000},
    "nmnist": {"input": (2, 34, 34), "classes": 10, "train_images": None},
}

#: [data] keys that apply to each dataset, with the defaults of the dataset-specific ones.
DATA_KEYS: dict[str, dict[str, Any]] = {
    "mnist": {"validation": 5000, "rotate": 0.0, "scale": 0.0},
    "nmnist": {"validation": 5000, "frames": "binary", "time_window": 0, "first_saccade": False,
               "verify": True},
    "folder": {"validation": 0.1, "path": None, "size": 28, "color": "gray", "test": 0.2,
               "split_seed": 0, "classes": None, "rotate": 0.0, "scale": 0.0},
}
_COMMON_DATA_KEYS = {"dataset", "validation", "shift"}

#: [model] keys that apply to each kind of network.
MODEL_KEYS = {
    "mlp": {"kind", "sizes", "init", "spiking"},
    "cnn": {"kind", "channels", "hidden", "kernel_size", "init", "spiking"},
}


def dataset_info(data: dict[str, Any]) -> dict[str, Any]:
    """Input shape (C, H, W), number of classes (None while a folder's classes are unresolved)
    and training-set size (None if known only once read) of a validated [data] table."""
    if data["dataset"] != "folder":
        return DATASETS[data["dataset"]]
    channels = 3 if data["color"] == "rgb" else 1
    classes = data.get("classes")
    return {"input": (channels, data["size"], data["size"]),
            "classes": len(classes) if classes else None, "train_images": None}


def _check_model(cfg: dict[str, Any], source: str) -> None:
    """Cross-key checks: the network's shape must fit the dataset's images and classes."""
    model, data = cfg["model"], cfg["data"]
    extra = sorted(set(data) - _COMMON_DATA_KEYS - set(DATA_KEYS[data["dataset"]]))
    if extra:
        raise StbpError(
            f"config {source}: [data] {', '.join(extra)} do(es) not apply to dataset = "
            f"{data['dataset']!r}"
        )
    if data["dataset"] == "folder" and not data.get("path"):
        raise StbpError(
            f"config {source}: dataset = 'folder' needs [data] path = \"FOLDER\" (one subfolder of "
            "PNG/JPEG images per class), or use --dataset folder:FOLDER"
        )
    ds = dataset_info(data)
    events = data["dataset"] == "nmnist"
    if (cfg["encoding"]["kind"] == "events") != events:
        raise StbpError(
            f"config {source}: [encoding] kind = {cfg['encoding']['kind']!r} does not fit dataset = "
            f"{data['dataset']!r}: " + ("event recordings are their own spikes; use kind = 'events'"
                                        if events else "use 'bernoulli' or 'direct' for images")
        )
    kind = model["kind"]
    extra = sorted(set(model) - MODEL_KEYS[kind])
    if extra:
        raise StbpError(
            f"config {source}: [model] {', '.join(extra)} do(es) not apply to kind = {kind!r}; "
            f"it takes {', '.join(sorted(MODEL_KEYS[kind] - {'kind'}))}"
        )
    if isinstance(data["validation"], int) and ds["train_images"] and not (
        data["validation"] < ds["train_images"]
    ):
        raise StbpError(
            f"config {source}: [data] validation = {data['validation']} must be smaller than the "
            f"{ds['train_images']} {data['dataset']} training images"
        )
    c, h, w = ds["input"]
    if kind == "mlp":
        sizes = model.get("sizes")
        if sizes is None or len(sizes) < 2:
            raise StbpError(
                f"config {source}: [model] kind = 'mlp' needs sizes = [in, ..., out] with at "
                f"least 2 entries, e.g. [{c * h * w}, 800, {ds['classes'] or 2}]"
            )
        if sizes[0] != c * h * w:
            raise StbpError(
                f"config {source}: [model] sizes = {sizes} must start with {c * h * w}: "
                f"{data['dataset']} images have {c}x{h}x{w} = {c * h * w} pixels"
            )
        if ds["classes"] is not None and sizes[-1] != ds["classes"]:
            raise StbpError(
                f"config {source}: [model] sizes = {sizes} must end with {ds['classes']}, the "
                f"number of {data['dataset']} classes"
            )
    else:
        kernel = model.get("kernel_size", 5)
        if kernel % 2 == 0:
            raise StbpError(
                f"config {source}: [model] kernel_size = {kernel} must be odd ('same' padding)"
            )
        pools = len(model.get("channels", [15, 40]))
        if h >> pools < 1:
            raise StbpError(
                f"config {source}: [model] channels has {pools} conv+pool stages; {h}x{w} "
                f"{data['dataset']} images allow at most {h.bit_length() - 1}"
            )


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
    # dataset-specific defaults (None: optional, absent unless given)
    specific = {k: v for k, v in DATA_KEYS[out["data"]["dataset"]].items() if v is not None}
    out["data"] = {**specific, **out["data"]}
    _check_model(out, source)
    return out


def with_dataset(cfg: dict[str, Any], dataset: str) -> dict[str, Any]:
    """``--dataset``: ``"mnist"``, ``"nmnist"`` or ``"folder:PATH"`` in place of a (raw) config's
    dataset; [data] keys that belong to the previous dataset only are dropped."""
    name, sep, path = dataset.partition(":")
    if name not in DATA_KEYS or (name == "folder") != bool(sep) or (sep and not path):
        raise StbpError(f"--dataset {dataset!r}: expected mnist, nmnist or folder:PATH (a folder "
                        "with one subfolder of PNG/JPEG images per class)")
    data = dict(cfg.get("data", {})) if isinstance(cfg.get("data"), dict) else {}
    keep = _COMMON_DATA_KEYS | set(DATA_KEYS[name])
    data = {k: v for k, v in data.items() if k in keep}
    if data.get("dataset") != name and "validation" in data:
        del data["validation"]  # a count of MNIST images means nothing for another dataset
    data["dataset"] = name
    if name == "folder":
        data["path"] = path
    out = copy.deepcopy(cfg)
    out["data"] = data
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
