"""Checks of settings, shared by the config (``[model]``, ``[train]``, …) and the datasets'
``[data]`` keys (:mod:`stbp.data.registry`).

Each check is a predicate ``check(value) -> bool`` whose docstring says what is expected
("an integer > 0"), so a failed check reads ``[data] size = 0 is invalid; expected an integer
> 0``. :func:`require_positive_int` is the raising form for function arguments.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from stbp.errors import StbpError

__all__ = ["Check", "INT_MAX", "expect", "positive_int", "nonneg_int", "number", "positive_number",
           "nonneg_number", "int_list", "one_of", "boolean", "string", "string_list",
           "count_or_fraction", "number_in", "require_positive_int"]

Check = Callable[[Any], bool]

#: the largest integer a setting may hold: what fits a signed 64-bit integer (torch, numpy)
INT_MAX = 2**63 - 1


def expect(doc: str) -> Callable[[Check], Check]:
    """Decorator: set a check's docstring, the "expected ..." part of its error message."""

    def wrap(check: Check) -> Check:
        check.__doc__ = doc
        return check

    return wrap


@expect("an integer > 0 (below 2**63)")
def positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT_MAX


@expect("an integer >= 0 (below 2**63)")
def nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT_MAX


@expect("a finite number")
def number(v: Any) -> bool:
    if isinstance(v, int) and not isinstance(v, bool):
        return -INT_MAX <= v <= INT_MAX  # an integer beyond 64 bits is no float either
    return isinstance(v, float) and math.isfinite(v)


@expect("a number > 0")
def positive_number(v: Any) -> bool:
    return number(v) and v > 0


@expect("a number >= 0")
def nonneg_number(v: Any) -> bool:
    return number(v) and v >= 0


@expect("a non-empty list of integers > 0 (below 2**63)")
def int_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(positive_int(x) for x in v)


@expect("true or false")
def boolean(v: Any) -> bool:
    return isinstance(v, bool)


@expect("a non-empty string")
def string(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


@expect("a list of at least 2 non-empty strings")
def string_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 2 and all(string(x) for x in v)


@expect("a count of samples (an integer > 0) or a fraction in (0, 1)")
def count_or_fraction(v: Any) -> bool:
    return positive_int(v) or (number(v) and isinstance(v, float) and 0 < v < 1)


def one_of(*options: Any) -> Check:
    """A check that the value is one of ``options``."""

    @expect("one of: " + ", ".join(map(str, options)))
    def check(v: Any) -> bool:
        return v in options

    return check


def number_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
              doc: str | None = None) -> Check:
    """A check that the value is a finite number between ``low`` and ``high`` (open or closed
    ends), e.g. ``number_in(0, 1, low_open=True)`` for (0, 1]."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    @expect(doc or f"a number in {span}")
    def check(v: Any) -> bool:
        if not number(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return check


def require_positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (numpy integers too); else a StbpError
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= INT_MAX:
        raise StbpError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
