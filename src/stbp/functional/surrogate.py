"""Approximated derivatives of the spike function (the paper's h1–h4, and a few extras).

The firing function o = g(u) = 1[u >= V_th] (E3) has a Dirac pulse as its derivative. STBP
replaces dg/du in the backward pass by a curve h of width ``a`` centred on the threshold
(Wu et al. 2018, Sec. 2.3, Eqs. 23–26). Every curve here integrates to 1, so the width
changes the shape but not the total gradient mass.

Each surrogate is a small object: :meth:`Surrogate.derivative` is h(x) with x = u − V_th, and
:meth:`Surrogate.primitive` is its integral (a smooth step from 0 to 1), used for plots and by
the smooth-spike check of the STBP backward. For the fused CPU kernels a surrogate names its
curve as a numba function (``curve``, from :mod:`stbp.kernels.curves`) with the two constants
it needs (:meth:`Surrogate.constants`); a surrogate without one runs on the eager path. A user
may pass their own subclass (with a curve of their own, it takes the fused path too), or any
callable ``h(x) -> Tensor``, wherever a surrogate name is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from stbp.errors import StbpError
from stbp.kernels import curves

__all__ = [
    "Surrogate",
    "Rectangular",
    "Polynomial",
    "Sigmoid",
    "Gaussian",
    "ATan",
    "FastSigmoid",
    "SURROGATES",
    "get_surrogate",
]


class Surrogate:
    """Base class: an approximated derivative h of width ``a`` (the paper's ``a``)."""

    name = "surrogate"
    #: h(x, c0, c1, zero) as a numba function for the fused CPU kernels (None: eager path only)
    curve = None
    #: whether torch.compile takes :meth:`derivative` (the GPU path)
    compilable = False

    def constants(self) -> tuple[float, float]:
        """(c0, c1) that :attr:`curve` takes, computed once so the kernels need no division."""
        return 0.0, 0.0

    def __init__(self, width: float = 1.0) -> None:
        width = float(width)
        if not math.isfinite(width) or width <= 0:
            raise StbpError(f"surrogate width must be a finite number > 0, got {width!r}")
        self.width = width

    def derivative(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """h(x), x = u − V_th."""
        raise NotImplementedError

    def primitive(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """∫_{-∞}^{x} h: a smooth step whose derivative is :meth:`derivative`."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.derivative(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(width={self.width:g})"

    # equal when of the same class with the same settings — every attribute, not only the
    # width: a subclass's own parameters change its curve (and the kernels' cached constants)
    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, tuple(sorted((k, repr(v)) for k, v in vars(self).items()))))


class Rectangular(Surrogate):
    """h1 (paper Eq. 23): (1/a) · 1[|u − V_th| < a/2]. Used by the authors' code."""

    name = "rectangular"
    curve = staticmethod(curves.rectangular)
    compilable = True

    def constants(self) -> tuple[float, float]:
        a = self.width
        return 1 / a, a / 2

    def derivative(self, x: Tensor) -> Tensor:
        a = self.width
        return (x.abs() < a / 2).to(x.dtype) / a

    def primitive(self, x: Tensor) -> Tensor:
        return (x / self.width + 0.5).clamp(0.0, 1.0)


class Polynomial(Surrogate):
    """h2 (paper Eq. 24): max(0, √a/2 − (a/4)·|u − V_th|), zero outside |u − V_th| < 2/√a."""

    name = "polynomial"
    curve = staticmethod(curves.polynomial)
    compilable = True

    def constants(self) -> tuple[float, float]:
        a = self.width
        return math.sqrt(a) / 2, a / 4

    def derivative(self, x: Tensor) -> Tensor:
        a = self.width
        return (math.sqrt(a) / 2 - (a / 4) * x.abs()).clamp_min(0.0)

    def primitive(self, x: Tensor) -> Tensor:
        a = self.width
        c = 2 / math.sqrt(a)
        left = (a / 8) * (x + c).clamp(0.0, c) ** 2
        right = 1 - (a / 8) * (c - x).clamp(0.0, c) ** 2
        return torch.where(x <= 0, left, right)


class Sigmoid(Surrogate):
    """h3 (paper Eq. 25): (1/a) · e^{(V_th−u)/a} / (1 + e^{(V_th−u)/a})²."""

    name = "sigmoid"
    curve = staticmethod(curves.sigmoid)
    compilable = True

    def constants(self) -> tuple[float, float]:
        a = self.width
        return 1 / a, 0.0

    def derivative(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x / self.width)
        return s * (1 - s) / self.width

    def primitive(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x / self.width)


class Gaussian(Surrogate):
    """h4 (paper Eq. 26): (2πa)^{−1/2} · exp(−(u − V_th)² / (2a)) — a normal density of variance a."""

    name = "gaussian"
    curve = staticmethod(curves.gaussian)
    compilable = True

    def constants(self) -> tuple[float, float]:
        a = self.width
        return 1 / (2 * a), 1 / math.sqrt(2 * math.pi * a)

    def derivative(self, x: Tensor) -> Tensor:
        a = self.width
        return torch.exp(-(x * x) / (2 * a)) / math.sqrt(2 * math.pi * a)

    def primitive(self, x: Tensor) -> Tensor:
        return 0.5 * (1 + torch.erf(x / math.sqrt(2 * self.width)))


class ATan(Surrogate):
    """Arc-tangent (Cauchy) curve, as in SpikingJelly/snnTorch: 1 / (π·a·(1 + (x/a)²)).

    Normalised to integrate to 1; their ``alpha = 2`` corresponds to ``a = 1/π``.
    """

    name = "atan"
    curve = staticmethod(curves.atan)
    compilable = True

    def constants(self) -> tuple[float, float]:
        a = self.width
        return 1 / a, 1 / (math.pi * a)

    def derivative(self, x: Tensor) -> Tensor:
        a = self.width
        return 1.0 / (math.pi * a * (1 + (x / a) ** 2))

    def primitive(self, x: Tensor) -> Tensor:
        return 0.5 + torch.atan(x / self.width) / math.pi


class FastSigmoid(Surrogate):
    """SuperSpike's fast sigmoid (Zenke & Ganguli 2018): 1 / (2a · (1 + |x|/a)²).

    Normalised to integrate to 1; snnTorch's unnormalised ``slope = k`` has the shape of ``a = 1/k``.
    """

    name = "fast_sigmoid"
    curve = staticmethod(curves.fast_sigmoid)
    compilable = True

    def constants(self) -> tuple[float, float]:
        a = self.width
        return 1 / a, 1 / (2 * a)

    def derivative(self, x: Tensor) -> Tensor:
        a = self.width
        return 1.0 / (2 * a * (1 + x.abs() / a) ** 2)

    def primitive(self, x: Tensor) -> Tensor:
        z = x / self.width
        return 0.5 + 0.5 * z / (1 + z.abs())


SURROGATES: dict[str, type[Surrogate]] = {
    cls.name: cls for cls in (Rectangular, Polynomial, Sigmoid, Gaussian, ATan, FastSigmoid)
}
_ALIASES = {"h1": "rectangular", "h2": "polynomial", "h3": "sigmoid", "h4": "gaussian",
            "rect": "rectangular", "triangle": "polynomial", "fast-sigmoid": "fast_sigmoid",
            "arctan": "atan"}

SurrogateLike = str | Surrogate | Callable[[Tensor], Tensor]


class _CallableSurrogate(Surrogate):
    """Wraps a user callable h(x); it has no primitive."""

    name = "callable"

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.width = float("nan")
        self.fn = fn

    def derivative(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def primitive(self, x: Tensor) -> Tensor:
        raise StbpError("a callable surrogate has no primitive; subclass stbp.functional.Surrogate")

    def __repr__(self) -> str:
        return f"callable({self.fn!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CallableSurrogate) and other.fn is self.fn

    def __hash__(self) -> int:
        return id(self.fn)


def get_surrogate(surrogate: SurrogateLike, width: float = 1.0) -> Surrogate:
    """Resolve a surrogate given by name (h1–h4 names or aliases, atan, fast_sigmoid), object or callable."""
    if isinstance(surrogate, Surrogate):
        return surrogate
    if isinstance(surrogate, str):
        key = surrogate.strip().lower()
        key = _ALIASES.get(key, key)
        if key not in SURROGATES:
            names = ", ".join(sorted(SURROGATES))
            raise StbpError(f"unknown surrogate {surrogate!r}; choose one of: {names}")
        return SURROGATES[key](width)
    if callable(surrogate):
        return _CallableSurrogate(surrogate)
    raise StbpError(
        f"surrogate must be a name, a stbp.functional.Surrogate or a callable, got {type(surrogate).__name__}"
    )
