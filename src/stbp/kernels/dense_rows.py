"""A fully connected layer's gradient on its input, ε W, for some rows: the small kernel of
:class:`stbp.functional.events.LinearTerm`, run on numba's threads inside a neuron's backward
(a chunk of samples at a time; the zeros of the error skipped)."""

from __future__ import annotations

from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, nb, threads

__all__ = ["error_times_weight"]

if HAVE_NUMBA:

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _error_times_weight(g, w, out):  # pragma: no cover - compiled
        # out[t, r] = Σ_k g[t, r, k] · w[k] (rows of ε W), the zeros of the error skipped — most
        # of it, where the surrogate h(u) of the layer above is zero
        steps, rows, kk = g.shape
        for q in nb.prange(steps * rows):
            t, r = q // rows, q % rows
            o = out[t, r]
            o[:] = 0
            for k in range(kk):
                a = g[t, r, k]
                if a != 0:
                    wk = w[k]
                    for c in range(o.shape[0]):
                        o[c] += a * wk[c]


def error_times_weight(grad: Tensor, weight: Tensor, out: Tensor) -> None:
    """``out`` ``[T, R, F]`` = ``grad`` ``[T, R, K]`` (any strides) @ ``weight`` ``[K, F]``:
    a fully connected layer's gradient on its input for some rows, written (not added), on
    numba's threads (no switch to PyTorch's thread pool between the neurons' kernels)."""
    w = weight.detach().to(out.dtype).contiguous()
    with threads():
        _error_times_weight(grad.detach().to(out.dtype).numpy(), w.numpy(), out.numpy())
