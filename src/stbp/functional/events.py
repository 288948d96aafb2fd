"""Event-driven synaptic current (E1) for byte spikes: work in proportion to the spikes.

When a layer's input is spikes given as bytes (``uint8``/``bool``, what
:func:`stbp.encoding.bernoulli` makes with ``dtype=torch.uint8``), E1's
x^{t} = W o^{t} + b needs no multiplications: each row's current is b plus the sum of the
weight columns of the inputs that spiked. On MNIST about 13 % of the Bernoulli inputs spike,
so summing those columns does ~8× fewer additions than the dense matmul does
multiply-adds. The weight gradient of E8, ∂L/∂W = Σ_t ε^{t} (o^{t})ᵀ, is the same sum seen from
the other side: row i of ∂L/∂Wᵀ is the sum of the error rows ε at the (t, b) where input i
spiked.

The spikes are kept for the backward as a compressed sparse row (CSR) list — the column of
each spike (2 bytes for up to 32,767 inputs) and its value (1 byte) — 0.4 byte per input at
MNIST's 13 % density, against the one byte per input that the dense path keeps. Values other than 0/1 (event
counts) are used as weights of the summed columns, so any ``uint8`` input gives F.linear's
result, up to the order of the additions.

The kernels are numba, compiled on first use and cached on disk (no install-time
compilation). :func:`linear` falls back to the dense path when numba is missing, the tensors
are not on the CPU, or the input is too dense for the sums to win (:data:`MAX_DENSITY`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.errors import StbpError
from stbp.functional.lif_numba import HAVE_NUMBA, _threads, nb

__all__ = ["linear", "to_csr", "usable", "MAX_DENSITY"]

#: above this fraction of nonzero inputs the dense path is used (on the benchmark machine the
#: sums take ~20 % of the dense forward's time and ~36 % of forward + backward at 13 % density,
#: and their cost grows in proportion to the density)
MAX_DENSITY = 0.25
_CACHE_BYTES = 2 << 20

if HAVE_NUMBA:

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _count(x, counts):  # pragma: no cover - compiled
        rows, cols = x.shape
        for r in nb.prange(rows):
            c = 0
            for k in range(cols):
                c += x[r, k] != 0
            counts[r] = c

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _fill(x, indptr, index, value):  # pragma: no cover - compiled
        rows, cols = x.shape
        for r in nb.prange(rows):
            j = indptr[r]
            for k in range(cols):
                v = x[r, k]
                if v != 0:
                    index[j] = k
                    value[j] = v
                    j += 1

    @nb.njit(cache=True, nogil=True)
    def _transpose(indptr, index, value, cols, t_indptr, t_index, t_value):  # pragma: no cover
        # counting sort by column: CSR of the transposed matrix, rows in increasing order
        rows = indptr.shape[0] - 1
        for j in range(index.shape[0]):
            t_indptr[index[j] + 1] += 1
        for k in range(cols):
            t_indptr[k + 1] += t_indptr[k]
        fill = t_indptr[:-1].copy()
        for r in range(rows):
            for j in range(indptr[r], indptr[r + 1]):
                k = index[j]
                t_index[fill[k]] = r
                t_value[fill[k]] = value[j]
                fill[k] += 1

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _spmm(indptr, index, value, dense, base, out, init):  # pragma: no cover - compiled
        # out[r] = base + Σ_j value[j] · dense[index[j]] over row r's entries (sparse × dense;
        # without init: out[r] += Σ ...), four entries per pass over the row so that out[r] is
        # loaded and stored a quarter as often
        rows, n = out.shape
        for r in nb.prange(rows):
            o = out[r]
            if init:
                o[:] = base
            j, end = indptr[r], indptr[r + 1]
            while j + 4 <= end:
                d0, d1 = dense[index[j]], dense[index[j + 1]]
                d2, d3 = dense[index[j + 2]], dense[index[j + 3]]
                w0, w1 = dense.dtype.type(value[j]), dense.dtype.type(value[j + 1])
                w2, w3 = dense.dtype.type(value[j + 2]), dense.dtype.type(value[j + 3])
                for c in range(n):
                    o[c] += (w0 * d0[c] + w1 * d1[c]) + (w2 * d2[c] + w3 * d3[c])
                j += 4
            while j < end:
                d0, w0 = dense[index[j]], dense.dtype.type(value[j])
                for c in range(n):
                    o[c] += w0 * d0[c]
                j += 1


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether the event-driven path can run (the density is checked in :func:`linear`)."""
    return (HAVE_NUMBA and x.dtype in (torch.uint8, torch.bool) and x.device.type == "cpu"
            and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)
            and x.dim() >= 1)


class CSR:
    """Compressed sparse rows of a ``[rows, cols]`` byte matrix (numpy arrays)."""

    __slots__ = ("indptr", "index", "value", "shape")

    def __init__(self, indptr: np.ndarray, index: np.ndarray, value: np.ndarray,
                 shape: tuple[int, int]):
        self.indptr, self.index, self.value, self.shape = indptr, index, value, shape

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def transpose(self) -> CSR:
        rows, cols = self.shape
        t_indptr = np.zeros(cols + 1, np.int64)
        t_index = np.empty(self.nnz, _index_dtype(rows))
        t_value = np.empty(self.nnz, np.uint8)
        _transpose(self.indptr, self.index, self.value, cols, t_indptr, t_index, t_value)
        return CSR(t_indptr, t_index, t_value, (cols, rows))

    def rows(self, lo: int, hi: int) -> CSR:
        """Rows ``lo:hi`` (the column lists are views)."""
        a, b = int(self.indptr[lo]), int(self.indptr[hi])
        return CSR(self.indptr[lo:hi + 1] - a, self.index[a:b], self.value[a:b],
                   (hi - lo, self.shape[1]))

    def matmul(self, dense: np.ndarray, base: np.ndarray | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """``base + self @ dense`` (``dense``: ``[cols, n]``, ``base``: ``[n]`` or zeros), or
        ``out += self @ dense`` when ``out`` is given."""
        n = dense.shape[1]
        init = out is None
        if out is None:
            out = np.empty((self.shape[0], n), dense.dtype)
        _spmm(self.indptr, self.index, self.value, dense,
              np.zeros(n, dense.dtype) if base is None else base, out, init)
        return out

    def t_matmul(self, dense: np.ndarray) -> np.ndarray:
        """``selfᵀ @ dense`` (``dense``: ``[rows, n]``), summed over chunks of rows whose part
        of ``dense`` fits in the cache (``_CACHE_BYTES``): the rows are read in the order of each
        column's entries, and from main memory that is several times slower."""
        rows, n = dense.shape
        out = np.zeros((self.shape[1], n), dense.dtype)
        step = max(256, _CACHE_BYTES // max(1, n * dense.itemsize))
        for lo in range(0, rows, step):
            hi = min(rows, lo + step)
            self.rows(lo, hi).transpose().matmul(dense[lo:hi], out=out)
        return out


def _index_dtype(n: int) -> type:
    """The narrowest integer type for indices below ``n``."""
    return np.int16 if n < 2**15 else np.int32 if n < 2**31 else np.int64


def _counts(rows: np.ndarray) -> np.ndarray:
    counts = np.empty(rows.shape[0], np.int64)
    _count(rows, counts)
    return counts


def _byte_rows(x: Tensor) -> np.ndarray:
    """A byte tensor ``[..., cols]`` as a contiguous ``uint8`` array ``[rows, cols]``."""
    rows = x.detach().reshape(-1, x.shape[-1]).contiguous()
    return (rows.view(torch.uint8) if rows.dtype == torch.bool else rows).numpy()


def to_csr(x: Tensor) -> CSR:
    """The CSR form of a byte tensor ``[..., cols]`` seen as ``[rows, cols]``."""
    rows = _byte_rows(x)
    return _csr(rows, _counts(rows))


def _csr(rows_np: np.ndarray, counts: np.ndarray) -> CSR:
    indptr = np.zeros(rows_np.shape[0] + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    cols = rows_np.shape[1]
    index = np.empty(int(indptr[-1]), _index_dtype(cols))
    value = np.empty(int(indptr[-1]), np.uint8)
    _fill(rows_np, indptr, index, value)
    return CSR(indptr, index, value, (rows_np.shape[0], cols))


class _EventLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, csr: CSR):  # type: ignore[override]
        out = _forward(csr, weight, bias)
        ctx.csr = csr
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight)
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(weight.dtype).contiguous()
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            _threads()
            grad_wt = ctx.csr.t_matmul(g.numpy())  # ∂L/∂Wᵀ (E8)
            grad_w = torch.from_numpy(grad_wt).t().contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return None, grad_w, grad_b, None


def _forward(csr: CSR, weight: Tensor, bias: Tensor | None) -> Tensor:
    w = weight.detach()
    base = None if bias is None else bias.detach().to(w.dtype).contiguous().numpy()
    return torch.from_numpy(csr.matmul(w.t().contiguous().numpy(), base))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None,
           max_density: float = MAX_DENSITY) -> Tensor | None:
    """E1 for byte spikes ``x [..., in]`` by summing weight columns; ``None`` if not worth it.

    Returns ``None`` (the caller then runs the dense matmul) when :func:`usable` is false or
    more than ``max_density`` of the inputs are nonzero. The result has the weight's dtype,
    also under ``torch.autocast`` (the sums are exact in it). Gradients flow to ``weight``
    and ``bias``; byte spikes have none.
    """
    if not usable(x, weight) or x.numel() == 0:
        return None
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1] or (
            bias is not None and bias.shape != (weight.shape[0],)):
        raise StbpError(
            f"linear: input of shape {tuple(x.shape)} does not fit a weight of shape "
            f"{tuple(weight.shape)}" + ("" if bias is None else f" and a bias of shape "
                                        f"{tuple(bias.shape)}"))
    _threads()
    rows = _byte_rows(x)
    counts = _counts(rows)
    if counts.sum() > max_density * rows.size:
        return None
    csr = _csr(rows, counts)
    if torch.is_grad_enabled() and (weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _EventLinear.apply(x, weight, bias, csr)
    return _forward(csr, weight, bias).reshape(*x.shape[:-1], weight.shape[0])
