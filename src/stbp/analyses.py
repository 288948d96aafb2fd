"""The paper's analyses as a grid of settings on the MNIST MLP preset (what ``stbp reproduce``
trains and reports).

Wu et al. (2018) argue that (1) the temporal-domain (TD) error path of STBP matters — training
with the spatial domain only ("SD only", our ``neuron.temporal = false``) is worse — and (2)
that the choice of approximated derivative h1–h4 matters little. Groups (each compares settings
that differ from the ``mnist-mlp`` preset in one thing):

- ``td``: SD+TD (STBP) vs SD only;
- ``surrogate``: h1 rectangular, h2 polynomial (the preset), h3 sigmoid, h4 gaussian, a = 1;
- ``width``: h1 with a = 0.25, 0.5, 1, 2;
- ``reset``: E4' (reset to zero, the preset) vs the paper's E4, f(o) = τ·exp(−o/τ);
- ``steps``: T = 5, 10, 20, 30.

Settings that resolve to the same configuration (e.g. h1 at a = 1 in two groups) are one run.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PRESET", "MANIFEST", "Setting", "GROUPS", "Budget", "FULL", "QUICK", "Run", "slug",
           "configs", "plan", "label", "machine"]

PRESET = "mnist-mlp"
MANIFEST = "reproduce.json"


@dataclass(frozen=True)
class Setting:
    """One row of a group: a label and the ``--set`` overrides applied to the preset."""

    label: str
    overrides: tuple[str, ...] = ()


#: key -> (title, what it tests, settings). The first setting of a group is its reference.
GROUPS: dict[str, tuple[str, str, tuple[Setting, ...]]] = {
    "td": (
        "Temporal-domain error path: SD+TD (STBP) vs SD only",
        "SD only drops both temporal terms of E6–E7 (u^t and o^t enter step t+1 detached).",
        (Setting("SD+TD (STBP)"), Setting("SD only", ("neuron.temporal=false",))),
    ),
    "surrogate": (
        "Approximated derivative h1–h4 (a = 1)",
        "The curve that replaces dg/du in the backward (paper Eqs. 23–26).",
        (
            Setting("h1 rectangular", ("neuron.surrogate=rectangular",)),
            Setting("h2 polynomial"),
            Setting("h3 sigmoid", ("neuron.surrogate=sigmoid",)),
            Setting("h4 gaussian", ("neuron.surrogate=gaussian",)),
        ),
    ),
    "width": (
        "Width a of h1 (rectangular)",
        "h1 = (1/a)·1[|u − V_th| < a/2]: a narrower window passes gradient to fewer neurons.",
        tuple(
            Setting(f"h1, a = {a:g}", ("neuron.surrogate=rectangular",)
                    + (() if a == 1 else (f"neuron.width={a}",)))
            for a in (0.25, 0.5, 1.0, 2.0)
        ),
    ),
    "reset": (
        "Reset form: E4' (reset to zero) vs the paper's E4",
        "E4': f(o) = τ(1 − o); E4: f(o) = τ·exp(−o/τ). They differ in the reset's gradient.",
        (Setting("E4' f = τ(1−o) (preset)"), Setting("E4 f = τ·exp(−o/τ)", ("neuron.reset=paper",))),
    ),
    "steps": (
        "Time window T",
        "The number of time steps each digit is presented for (Bernoulli rate coding).",
        tuple(Setting(f"T = {t}", () if t == 30 else (f"encoding.steps={t}",))
              for t in (5, 10, 20, 30)),
    ),
}


@dataclass(frozen=True)
class Budget:
    """What each run trains on: epochs, and optional limits on the data (``None`` = all)."""

    epochs: int
    limit_train: int | None = None
    limit_eval: int | None = None

    def describe(self) -> str:
        train = f"the first {self.limit_train:,} training images" if self.limit_train else (
            "all 55,000 training images")
        ev = f"the first {self.limit_eval:,} validation and test images" if self.limit_eval else (
            "all 5,000 validation and 10,000 test images")
        return f"{self.epochs} epoch{'s' if self.epochs > 1 else ''} on {train}, evaluated on {ev}"


#: the committed report (docs/reproduce/): full data, a shortened schedule (see the README)
FULL = Budget(epochs=5)
#: `--quick`: minutes on 2 cores
QUICK = Budget(epochs=2, limit_train=4000, limit_eval=1000)


@dataclass(frozen=True)
class Run:
    slug: str  # names the configuration, e.g. "base", "surrogate-rectangular_width-0.5"
    overrides: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.slug}/seed{self.seed}"


def slug(overrides: tuple[str, ...]) -> str:
    """The name of a configuration, e.g. "base", "surrogate-rectangular_width-0.5"."""
    if not overrides:
        return "base"
    parts = []
    for item in sorted(overrides):
        key, _, value = item.partition("=")
        parts.append(f"{key.split('.')[-1]}-{value}")
    return "_".join(parts)


def configs() -> dict[str, tuple[str, ...]]:
    """slug -> overrides of every distinct configuration in :data:`GROUPS`."""
    out: dict[str, tuple[str, ...]] = {}
    for _, _, settings in GROUPS.values():
        for s in settings:
            out.setdefault(slug(s.overrides), tuple(sorted(s.overrides)))
    return out


def plan(seeds: list[int]) -> list[Run]:
    """Every run to train: all configurations for the first seed, then the next seed, …"""
    grid = configs()
    return [Run(name, ov, seed) for seed in seeds for name, ov in grid.items()]


def machine() -> str:
    """The CPU, core count and OS, for the report."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def label(name: str) -> str:
    """The row label of configuration ``name`` (its slug)."""
    for _, _, settings in GROUPS.values():
        for s in settings:
            if slug(s.overrides) == name:
                return s.label if name != "base" else "base (preset)"
    return name
