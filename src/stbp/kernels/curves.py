"""The approximated spike derivatives h(x) (x = u − V_th) as numba functions for the fused
neuron kernels, one per curve of :mod:`stbp.functional.surrogate`.

Each takes ``(x, c0, c1, zero)``: two constants that the surrogate computes once
(:meth:`stbp.functional.Surrogate.constants`, so that the kernel multiplies instead of divides)
and a zero of the tensor's dtype. A surrogate names its curve in its ``curve`` attribute; a
new surrogate with a curve of its own defines it the same way (``@numba.njit(inline="always")``)
and takes the fused path too (docs/design.md, "How to add a surrogate").
"""

from __future__ import annotations

import math

from stbp.kernels.runtime import HAVE_NUMBA, nb

__all__ = ["rectangular", "polynomial", "sigmoid", "gaussian", "atan", "fast_sigmoid"]

rectangular = polynomial = sigmoid = gaussian = atan = fast_sigmoid = None

if HAVE_NUMBA:

    @nb.njit(inline="always", fastmath=True)
    def rectangular(x, c0, c1, zero):  # pragma: no cover - compiled
        return c0 if abs(x) < c1 else zero  # c0 = 1/a, c1 = a/2

    @nb.njit(inline="always", fastmath=True)
    def polynomial(x, c0, c1, zero):  # pragma: no cover - compiled
        return max(zero, c0 - c1 * abs(x))  # c0 = √a/2, c1 = a/4

    @nb.njit(inline="always", fastmath=True)
    def sigmoid(x, c0, c1, zero):  # pragma: no cover - compiled
        s = 1 / (1 + math.exp(-x * c0))  # c0 = 1/a
        return s * (1 - s) * c0

    @nb.njit(inline="always", fastmath=True)
    def gaussian(x, c0, c1, zero):  # pragma: no cover - compiled
        return math.exp(-x * x * c0) * c1  # c0 = 1/(2a), c1 = 1/√(2πa)

    @nb.njit(inline="always", fastmath=True)
    def atan(x, c0, c1, zero):  # pragma: no cover - compiled
        z = x * c0  # c0 = 1/a, c1 = 1/(πa)
        return c1 / (1 + z * z)

    @nb.njit(inline="always", fastmath=True)
    def fast_sigmoid(x, c0, c1, zero):  # pragma: no cover - compiled
        z = 1 + abs(x) * c0  # c0 = 1/a, c1 = 1/(2a)
        return c1 / (z * z)
