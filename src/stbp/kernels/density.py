"""The fraction of nonzero values of a float tensor, in one parallel pass: the check behind
the gradient paths that sum over the nonzero values of an error (a convolution's gradient on
its input, :func:`stbp.kernels.sparse_conv.input_grad`; a fully connected layer's, ε W, in
:class:`stbp.functional.events.LinearTerm`) — the error of a layer of neurons is zero wherever
their surrogate is."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, nb, threads

__all__ = ["nonzero_fraction"]

if HAVE_NUMBA:

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _count_nonzero(x, counts):  # pragma: no cover - compiled
        for i in nb.prange(x.shape[0]):
            xi = x[i].reshape(-1)
            c = 0
            for j in range(xi.shape[0]):
                c += xi[j] != 0
            counts[i] = c


def nonzero_fraction(x: Tensor) -> float:
    """The fraction of the values of a CPU float tensor that are not zero (NaN counts as
    nonzero; an empty tensor has none): one pass, its leading dimension split among threads."""
    arr = x.detach().contiguous().numpy()
    if arr.size == 0:
        return 0.0
    rows = arr.reshape(arr.shape[0] if arr.ndim else 1, -1)
    counts = np.empty(rows.shape[0], np.int64)
    with threads():
        _count_nonzero(rows, counts)
    return float(counts.sum()) / arr.size
