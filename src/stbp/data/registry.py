"""The dataset registry: what ``[data] dataset = NAME`` (or ``--dataset NAME``) means.

Each dataset module declares one :class:`DatasetSpec` and calls :func:`register` at import:
its own ``[data]`` keys (checks and defaults), the input it feeds a network (shape, classes),
how its files are found (``locate``) and how they become train / validation / test splits
(``load``). The config (:mod:`stbp.config`), the splits (:mod:`stbp.data.splits`) and the
command line ask this registry; none of them names a dataset. Every module of the ``stbp.data``
package is imported on the first lookup, so a new ``stbp/data/NAME.py`` that registers itself is
the only file to add. A dataset defined elsewhere (a test, your own package) calls
:func:`register` itself.

The keys every dataset takes are in :data:`COMMON_KEYS` (``validation``, ``shift``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stbp import checks
from stbp.errors import StbpError

__all__ = ["Key", "DatasetInfo", "DatasetSpec", "LoadOptions", "COMMON_KEYS", "AUGMENT_KEYS", "register",
           "unregister", "registered", "get", "names", "specs", "dataset_info", "key_check",
           "dataset_forms"]


@dataclass(frozen=True)
class Key:
    """A ``[data]`` key: its check (a predicate whose docstring says what it expects, see
    :mod:`stbp.checks`) and its default (``None``: optional, absent unless given)."""

    check: checks.Check
    default: Any = None


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset feeds a network: ``input`` shape (C, H, W), number of ``classes`` (None
    while unknown, e.g. a folder's classes before it is read) and ``train_size``, the number of
    training samples (None if known only once read)."""

    input: tuple[int, int, int]
    classes: int | None
    train_size: int | None = None


@dataclass(frozen=True)
class LoadOptions:
    """What :attr:`DatasetSpec.load` gets besides the ``[data]`` table: ``steps`` (T, for data
    binned in time) and whether to show a ``progress`` bar while building caches."""

    steps: int
    progress: bool = False


#: the [data] keys every dataset takes; a dataset's own ``validation`` default wins
COMMON_KEYS: dict[str, Key] = {
    "validation": Key(checks.count_or_fraction),
    "shift": Key(checks.nonneg_int, 0),
}

#: [data] keys of image datasets that the trainer augments (:mod:`stbp.augment`): random
#: rotation (degrees) and scaling of training images, off unless set
AUGMENT_KEYS: dict[str, Key] = {
    "rotate": Key(checks.number_in(0, 180, doc="a number of degrees in [0, 180]"), 0.0),
    "scale": Key(checks.number_in(0, 1, high_open=True), 0.0),
}


def _no_resolve(data: dict[str, Any], data_dir: str | os.PathLike | None) -> dict[str, Any]:
    del data_dir
    return data


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset, as the config, the trainer and the command line see it.

    - ``name``: the value of ``[data] dataset``; ``summary``: one line for ``--help``;
    - ``keys``: its own ``[data]`` keys (besides :data:`COMMON_KEYS`; give ``validation`` here to
      set its default);
    - ``info(data) -> DatasetInfo``: input shape, classes, training-set size for a ``[data]``
      table (with defaults filled);
    - ``locate(data, data_dir) -> Path``: the folder it is read from (checked; nothing loaded);
    - ``load(data, folder, options) -> {"train", "val", "test"}``: the splits
      (:class:`stbp.data.splits.ImageSplit` or ``FrameSplit``, or anything with their interface);
    - ``encodings``: the ``[encoding] kind`` values that apply (``("events",)``: recordings that
      are their own spikes);
    - ``argument``: the ``[data]`` key that ``--dataset NAME:VALUE`` sets (a folder's ``path``),
      ``argument_help`` what that value is;
    - ``resolve(data, data_dir) -> data``: settings only known from the files (a folder's class
      names, made part of the saved config); ``check(data)``: cross-key checks, raising
      :class:`~stbp.errors.StbpError`.
    """

    name: str
    summary: str
    keys: Mapping[str, Key]
    info: Callable[[Mapping[str, Any]], DatasetInfo]
    locate: Callable[[Mapping[str, Any], str | os.PathLike | None], Path]
    load: Callable[[Mapping[str, Any], Path, LoadOptions], dict[str, Any]]
    encodings: tuple[str, ...] = ("bernoulli", "direct")
    argument: str | None = None
    argument_help: str = ""
    resolve: Callable[[dict[str, Any], str | os.PathLike | None], dict[str, Any]] = _no_resolve
    check: Callable[[Mapping[str, Any]], None] | None = None
    defaults: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise StbpError(f"dataset name {self.name!r}: use letters, digits, '-' and '_'")
        if "dataset" in self.keys:
            raise StbpError(f"dataset {self.name!r}: 'dataset' is not a key of its own")
        if self.argument is not None and self.argument not in self.keys:
            raise StbpError(f"dataset {self.name!r}: argument {self.argument!r} is not one of its keys")
        if not self.encodings:
            raise StbpError(f"dataset {self.name!r}: no [encoding] kind applies")
        defaults = {k: key.default for k, key in COMMON_KEYS.items() if key.default is not None}
        defaults.update({k: key.default for k, key in self.keys.items() if key.default is not None})
        object.__setattr__(self, "defaults", defaults)

    @property
    def events(self) -> bool:
        """True for recordings that are their own spikes (``[encoding] kind = "events"``)."""
        return self.encodings == ("events",)

    def key_names(self) -> set[str]:
        """Every ``[data]`` key this dataset takes, ``dataset`` included."""
        return {"dataset", *COMMON_KEYS, *self.keys}


_SPECS: dict[str, DatasetSpec] = {}
_DISCOVERED = False


def _discover() -> None:
    """Import every module of the ``stbp.data`` package once: built-in datasets register
    themselves when their module is imported."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import stbp.data as package

    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{mod.name}")


def register(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    """Make ``spec`` known under ``spec.name`` (``replace=True`` to redefine one)."""
    if not isinstance(spec, DatasetSpec):
        raise StbpError(f"register() takes a DatasetSpec, got {type(spec).__name__}")
    if spec.name in _SPECS and not replace and _SPECS[spec.name] is not spec:
        raise StbpError(f"dataset {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Forget the dataset ``name`` (e.g. a test's toy dataset)."""
    _SPECS.pop(name, None)


@contextmanager
def registered(spec: DatasetSpec) -> Iterator[DatasetSpec]:
    """``with registered(spec):`` — the dataset is known inside the block only."""
    _discover()
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def specs() -> list[DatasetSpec]:
    """Every registered dataset: plain names first, then those taking ``NAME:VALUE``; by name."""
    _discover()
    return sorted(_SPECS.values(), key=lambda s: (s.argument is not None, s.name))


def names() -> list[str]:
    """The registered dataset names, in the order of :func:`specs`."""
    return [s.name for s in specs()]


def get(name: str) -> DatasetSpec:
    """The dataset ``name``; a StbpError listing the known ones if there is none."""
    _discover()
    if name not in _SPECS:
        raise StbpError(f"unknown dataset {name!r}; expected one of: {', '.join(names())}")
    return _SPECS[name]


def dataset_info(data: Mapping[str, Any]) -> DatasetInfo:
    """Input shape, classes and training-set size of a validated ``[data]`` table."""
    return get(data["dataset"]).info(data)


def key_check(key: str) -> checks.Check | None:
    """The check of a ``[data]`` key as declared by the first dataset that takes it (None if no
    dataset does); a dataset's own check applies to its own config."""
    if key in COMMON_KEYS:
        return COMMON_KEYS[key].check
    for spec in specs():
        if key in spec.keys:
            return spec.keys[key].check
    return None


def dataset_forms() -> str:
    """How ``--dataset`` is spelled, e.g. "mnist, nmnist or folder:PATH (a folder with …)"."""
    forms, notes = [], []
    for spec in specs():
        if spec.argument is None:
            forms.append(spec.name)
        else:
            forms.append(f"{spec.name}:{spec.argument.upper()}")
            if spec.argument_help:
                notes.append(spec.argument_help)
    text = ", ".join(forms[:-1]) + (" or " if len(forms) > 1 else "") + forms[-1]
    return text + (f" ({'; '.join(notes)})" if notes else "")
