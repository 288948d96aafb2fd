"""Event-driven fully connected synapses (E1, E8) over spikes held as bytes: the kernels.

x^t = W o^t + b needs no multiplications when o is 0/1: each row's current is b plus the sum
of the weight columns of the inputs that spiked (work in proportion to the spikes; on MNIST
about 13 % of the Bernoulli inputs spike). The weight gradient of E8, ∂L/∂W = Σ_t ε^t (o^t)ᵀ,
is the same sum seen from the other side. The spikes are kept for the backward as a compressed
sparse row list (:class:`CSR`: the column of each spike, 2 bytes for up to 32,767 inputs, and
its value, 1 byte) — 0.4 byte per input at MNIST's density. Values other than 0/1 (event
counts, window sums) weight the summed columns.

Spike trains along time: a Bernoulli-coded digit spikes at almost the same inputs at every
step, so from one step to the next it changes at far fewer inputs than it spikes (a third, on
MNIST). Where that holds (:func:`change_counts`), the sums run over the changes,
x^t W = x^{t−1} W + (x^t − x^{t−1}) W, one sample's steps after another, and E8 over them too:
Σ_t ε^t (x^t)ᵀ = Σ_t (Σ_{t' ≥ t} ε^{t'}) (x^t − x^{t−1})ᵀ.

Rows of ``[T, B, cols]`` spikes are listed sample by sample (:func:`sample_order`): one sample's
T steps spike on the same few inputs, so their weight rows are reused from the cache. numba,
compiled on first use and cached on disk; tuning values come from :class:`Tuning`.
:mod:`stbp.functional.events` decides when to use these and wires them into autograd.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, TUNING, Tuning, nb, threads

__all__ = ["CSR", "byte_rows", "nonzero_counts", "change_counts",
           "sample_order", "csr_rows",
           "csr_changes", "scan", "to_csr", "index_dtype", "input_value", "ROWS"]

ROWS = 64  # rows per task of the parallel kernels

if HAVE_NUMBA:

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _count(x, counts):  # pragma: no cover - compiled
        rows, cols = x.shape
        for r in nb.prange(rows):
            c = 0
            for k in range(cols):
                c += x[r, k] != 0
            counts[r] = c

    @nb.njit(inline="always")
    def input_value(xr, xp, k, changes, f):  # pragma: no cover - compiled
        # input k of row xr as f, or (changes) its change since the previous step's row xp
        return f(xr[k]) - f(xp[k]) if changes else f(xr[k])

    @nb.njit(inline="always")
    def compact(xr, xp, changes, idx):  # pragma: no cover - compiled
        # the columns of row xr's nonzero entries (changes: where xr differs from xp) into
        # idx[:m]; branch-free (every column is written, the count advances on a hit), ~2×
        # faster than a branch per byte at the unpredictable densities of spikes
        m = 0
        if changes:
            for k in range(xr.shape[0]):
                idx[m] = k
                m += xr[k] != xp[k]
        else:
            for k in range(xr.shape[0]):
                idx[m] = k
                m += xr[k] != 0
        return m

    @nb.njit(inline="always")
    def accumulate(xr, xp, changes, idx, m, dense, o):  # pragma: no cover - compiled
        # o += Σ_i v_i · dense[idx[i]] with v_i = input_value(idx[i]), four entries per pass over o
        # so that o is loaded and stored a quarter as often
        f = dense.dtype.type
        j = 0
        while j + 4 <= m:
            k0, k1, k2, k3 = idx[j], idx[j + 1], idx[j + 2], idx[j + 3]
            d0, d1, d2, d3 = dense[k0], dense[k1], dense[k2], dense[k3]
            w0, w1 = input_value(xr, xp, k0, changes, f), input_value(xr, xp, k1, changes, f)
            w2, w3 = input_value(xr, xp, k2, changes, f), input_value(xr, xp, k3, changes, f)
            for c in range(o.shape[0]):
                o[c] += (w0 * d0[c] + w1 * d1[c]) + (w2 * d2[c] + w3 * d3[c])
            j += 4
        while j < m:
            k0 = idx[j]
            d0, w0 = dense[k0], input_value(xr, xp, k0, changes, f)
            for c in range(o.shape[0]):
                o[c] += w0 * d0[c]
            j += 1

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _fill_matmul(x, order, indptr, index, value, dense, base, out,
                     with_out):  # pragma: no cover - compiled
        # CSR row i lists x[order[i]] (indptr given) and, with_out, out[r] = base + x[r] @ dense
        # in the same pass over the bytes
        rows, cols = x.shape
        nchunks = (rows + ROWS - 1) // ROWS
        for ch in nb.prange(nchunks):
            idx = np.empty(cols + 1, index.dtype)
            for i in range(ch * ROWS, min(rows, (ch + 1) * ROWS)):
                r = order[i]
                xr = x[r]
                m = compact(xr, xr, False, idx)
                j = indptr[i]
                for e in range(m):
                    k = idx[e]
                    index[j + e] = k
                    value[j + e] = xr[k]
                if with_out:
                    o = out[r]
                    o[:] = base
                    accumulate(xr, xr, False, idx, m, dense, o)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _count_changes(x, steps, counts):  # pragma: no cover - compiled
        # counts[b·T + t] = nonzeros of Δ^t = x^t − x^{t−1} of sample b (x^0 at t = 0), for
        # x = [T·B, cols] rows (row t·B + b); listed sample by sample
        rows, cols = x.shape
        per = rows // steps
        for b in nb.prange(per):
            c = 0
            xr = x[b]
            for k in range(cols):
                c += xr[k] != 0
            counts[b * steps] = c
            for t in range(1, steps):
                xr, xp = x[t * per + b], x[(t - 1) * per + b]
                c = 0
                for k in range(cols):
                    c += xr[k] != xp[k]
                counts[b * steps + t] = c

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _fill_changes(x, steps, indptr, index, value, dense, base, out,
                      with_csr):  # pragma: no cover - compiled
        # out[t·B + b] = base + x^t_b @ dense for all rows, summed over the changes along time:
        # out^0 = base + x^0 @ dense, out^t = out^{t−1} + (x^t − x^{t−1}) @ dense — a sample's
        # spike trains change at far fewer inputs from one step to the next than spike (a
        # third, on Bernoulli-coded digits). with_csr: CSR row b·T + t lists Δ^t of sample b
        # (indptr given; values x^t − x^{t−1} as signed integers)
        rows, cols = x.shape
        per = rows // steps
        for b in nb.prange(per):
            idx = np.empty(cols + 1, np.int32)
            for t in range(steps):
                r = t * per + b
                xr = x[r]
                xp = x[r - per] if t else xr
                o = out[r]
                o[:] = out[r - per] if t else base
                m = compact(xr, xp, t > 0, idx)
                accumulate(xr, xp, t > 0, idx, m, dense, o)
                if with_csr:
                    j = indptr[b * steps + t]
                    for e in range(m):
                        k = idx[e]
                        index[j + e] = k
                        value[j + e] = input_value(xr, xp, k, t > 0, value.dtype.type)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _suffix_rows(dense, order, lo, hi, steps, out):  # pragma: no cover - compiled
        # out[i − lo] = Σ_{t' ≥ t} dense[order[i']] over the later steps i' of row i's sample
        # (rows lo:hi listed sample by sample, T = steps rows each): Σ_t ε^t (x^t)ᵀ =
        # Σ_t (Σ_{t' ≥ t} ε^{t'}) (Δ^t)ᵀ, the weight gradient over the changes
        for s in nb.prange((hi - lo) // steps):
            a = lo + s * steps
            last = out[a + steps - 1 - lo]
            last[:] = dense[order[a + steps - 1]]
            for i in range(a + steps - 2, a - 1, -1):
                o, nxt, d = out[i - lo], out[i + 1 - lo], dense[order[i]]
                for c in range(o.shape[0]):
                    o[c] = d[c] + nxt[c]

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _scatter_t_matmul_changes(indptr, index, value, order, steps, dense,
                                  parts):  # pragma: no cover - compiled
        # _scatter_t_matmul for rows that list the changes Δ^t (sample by sample): each entry
        # is weighted by the suffix sum Σ_{t' ≥ t} dense[order[t']] of its sample's rows
        samples = (indptr.shape[0] - 1) // steps
        nparts = parts.shape[0]
        step = (samples + nparts - 1) // nparts
        for p in nb.prange(nparts):
            acc = parts[p]
            acc[:] = 0
            run = np.empty(dense.shape[1], dense.dtype)
            for s in range(p * step, min(samples, (p + 1) * step)):
                run[:] = 0
                for i in range(s * steps + steps - 1, s * steps - 1, -1):
                    d = dense[order[i]]
                    for c in range(run.shape[0]):
                        run[c] += d[c]
                    for j in range(indptr[i], indptr[i + 1]):
                        o = acc[index[j]]
                        w = dense.dtype.type(value[j])
                        for c in range(run.shape[0]):
                            o[c] += w * run[c]


    @nb.njit(parallel=True, cache=True, nogil=True)
    def _scatter_t_matmul(indptr, index, value, order, dense, parts):  # pragma: no cover
        # parts[p] = Σ over part p's rows i and their entries j: value[j] · dense[order[i]]
        # added into row index[j] — selfᵀ @ dense with one private accumulator per part
        rows = indptr.shape[0] - 1
        nparts = parts.shape[0]
        step = (rows + nparts - 1) // nparts
        for p in nb.prange(nparts):
            acc = parts[p]
            acc[:] = 0
            for i in range(p * step, min(rows, (p + 1) * step)):
                d = dense[order[i]]
                for j in range(indptr[i], indptr[i + 1]):
                    o = acc[index[j]]
                    w = dense.dtype.type(value[j])
                    for c in range(d.shape[0]):
                        o[c] += w * d[c]

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _scan_matmul(x, order, dense, base, out):  # pragma: no cover - compiled
        # out[r] = base + x[r] @ dense straight from the bytes (no CSR kept: no backward),
        # rows taken in the given order
        rows, cols = x.shape
        nchunks = (rows + ROWS - 1) // ROWS
        for ch in nb.prange(nchunks):
            idx = np.empty(cols + 1, np.int32)
            for i in range(ch * ROWS, min(rows, (ch + 1) * ROWS)):
                r = order[i]
                xr = x[r]
                m = compact(xr, xr, False, idx)
                o = out[r]
                o[:] = base
                accumulate(xr, xr, False, idx, m, dense, o)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _transpose_chunks(indptr, index, value, order, cols, bounds, t_indptr, t_index,
                          t_value):  # pragma: no cover - compiled
        # the transpose of each chunk of rows bounds[c]:bounds[c+1], all chunks at once: chunk
        # c's lists go to t_index/t_value[indptr[bounds[c]]:indptr[bounds[c+1]]], with
        # t_indptr[c] counted from there
        for c in nb.prange(bounds.shape[0] - 1):
            lo, hi = bounds[c], bounds[c + 1]
            a, b = indptr[lo], indptr[hi]
            _transpose(indptr[lo:hi + 1] - a, index[a:b], value[a:b], order[lo:hi], cols,
                       t_indptr[c], t_index[a:b], t_value[a:b])

    @nb.njit(cache=True, nogil=True)
    def _transpose(indptr, index, value, order, cols, t_indptr, t_index,
                   t_value):  # pragma: no cover - compiled
        # counting sort by column: CSR of the transposed matrix, whose entries name the rows of
        # the original matrix (order[i] for row i), in the order of the rows
        rows = indptr.shape[0] - 1
        for j in range(index.shape[0]):
            t_indptr[index[j] + 1] += 1
        for k in range(cols):
            t_indptr[k + 1] += t_indptr[k]
        fill = t_indptr[:-1].copy()
        for i in range(rows):
            r = order[i]
            for j in range(indptr[i], indptr[i + 1]):
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



class CSR:
    """Compressed sparse rows of a ``[rows, cols]`` byte matrix (numpy arrays).

    Row i holds row ``order[i]`` of the matrix it was made from (the layers list the rows of
    ``[T, B, cols]`` spikes sample by sample, all T steps of one sample together, so that the
    weight rows one digit's pixels touch stay in the cache); ``matmul`` writes its result in
    the CSR's own row order, ``t_matmul`` reads ``dense`` in the original one.

    With ``steps`` = T > 0 the rows hold the changes along time instead: row b·T + t lists
    Δ^t = x^t − x^{t−1} of sample b (x^0 at t = 0; signed ``int16`` values), which
    ``t_matmul`` weights by suffix sums over the later steps.
    """

    __slots__ = ("indptr", "index", "value", "shape", "order", "steps")

    def __init__(self, indptr: np.ndarray, index: np.ndarray, value: np.ndarray,
                 shape: tuple[int, int], order: np.ndarray | None = None, steps: int = 0):
        self.indptr, self.index, self.value, self.shape = indptr, index, value, shape
        self.order = np.arange(shape[0], dtype=np.int64) if order is None else order
        self.steps = steps

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def transpose(self, rows_total: int | None = None) -> CSR:
        """The transposed matrix; its entries name original rows (``order``), of which there
        are ``rows_total`` (default: this CSR's row count)."""
        rows, cols = self.shape
        total = rows if rows_total is None else rows_total
        t_indptr = np.zeros(cols + 1, np.int64)
        t_index = np.empty(self.nnz, index_dtype(total))
        t_value = np.empty(self.nnz, np.uint8)
        _transpose(self.indptr, self.index, self.value, self.order, cols, t_indptr, t_index,
                   t_value)
        return CSR(t_indptr, t_index, t_value, (cols, total))

    def rows(self, lo: int, hi: int) -> CSR:
        """Rows ``lo:hi`` (the column lists are views; ``order`` still names original rows)."""
        a, b = int(self.indptr[lo]), int(self.indptr[hi])
        return CSR(self.indptr[lo:hi + 1] - a, self.index[a:b], self.value[a:b],
                   (hi - lo, self.shape[1]), self.order[lo:hi])

    def matmul(self, dense: np.ndarray, base: np.ndarray | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """``base + self @ dense`` (``dense``: ``[cols, n]``, ``base``: ``[n]`` or zeros), or
        ``out += self @ dense`` when ``out`` is given; row i of the result is CSR row i."""
        n = dense.shape[1]
        init = out is None
        if out is None:
            out = np.empty((self.shape[0], n), dense.dtype)
        with threads():
            _spmm(self.indptr, self.index, self.value, dense,
                  np.zeros(n, dense.dtype) if base is None else base, out, init)
        return out

    def t_matmul(self, dense: np.ndarray, tuning: Tuning = TUNING) -> np.ndarray:
        with threads():
            return self._t_matmul(dense, tuning)

    def _t_matmul(self, dense: np.ndarray, tuning: Tuning) -> np.ndarray:
        """``Aᵀ @ dense`` for the original matrix A (``dense``: ``[rows, n]`` in A's row
        order), summed over chunks of rows whose part of ``dense`` fits in the cache
        (``tuning.cache_bytes``): the rows are read in the order of each column's entries, and from
        main memory that is several times slower. A narrow result (it fits in
        ``tuning.private_bytes``, as an output layer's does) is scattered into straight from the rows
        instead, with no transpose, in ``tuning.parts`` private copies summed at the end."""
        rows, n = dense.shape
        steps = self.steps
        if self.shape[1] * n * dense.itemsize <= tuning.private_bytes:
            # a fixed number of parts (not one per thread), so the sum does not depend on the
            # thread count
            acc = np.empty((tuning.parts, self.shape[1], n), dense.dtype)
            if steps:
                _scatter_t_matmul_changes(self.indptr, self.index, self.value, self.order,
                                          steps, dense, acc)
            else:
                _scatter_t_matmul(self.indptr, self.index, self.value, self.order, dense, acc)
            return acc.sum(0)
        out = np.zeros((self.shape[1], n), dense.dtype)
        step = max(tuning.min_chunk, tuning.cache_bytes // max(1, n * dense.itemsize))
        if steps:  # chunks of whole samples; the entries name rows of the chunk's suffix sums
            step = -(-step // steps) * steps
        bounds = np.append(np.arange(0, self.shape[0], step), self.shape[0]).astype(np.int64)
        cols = self.shape[1]
        t_indptr = np.zeros((len(bounds) - 1, cols + 1), np.int64)
        t_index = np.empty(self.nnz, index_dtype(rows))
        t_value = np.empty(self.nnz, self.value.dtype)
        names = self.order
        if steps:
            names = np.arange(self.shape[0], dtype=np.int64) - np.repeat(bounds[:-1],
                                                                          np.diff(bounds))
        _transpose_chunks(self.indptr, self.index, self.value, names, cols, bounds,
                          t_indptr, t_index, t_value)  # the chunks' transposes in parallel
        suffix = np.empty((step if steps else 0, n), dense.dtype)
        for c in range(len(bounds) - 1):
            a, b = int(self.indptr[bounds[c]]), int(self.indptr[bounds[c + 1]])
            part = CSR(t_indptr[c], t_index[a:b], t_value[a:b], (cols, rows))
            if steps:
                _suffix_rows(dense, self.order, bounds[c], bounds[c + 1], steps, suffix)
                part.matmul(suffix, out=out)
            else:
                part.matmul(dense, out=out)
        return out


def index_dtype(n: int) -> type:
    """The narrowest integer type for indices below ``n``."""
    return np.int16 if n < 2**15 else np.int32 if n < 2**31 else np.int64


def to_csr(x: Tensor) -> CSR:
    """The CSR form of a byte tensor ``[..., cols]`` seen as ``[rows, cols]`` (rows in order)."""
    rows = byte_rows(x)
    return csr_rows(rows, nonzero_counts(rows))[0]


def nonzero_counts(rows: np.ndarray) -> np.ndarray:
    """The nonzero entries of each row of ``rows`` ``[rows, cols]`` (``uint8``)."""
    counts = np.empty(rows.shape[0], np.int64)
    with threads():
        _count(rows, counts)
    return counts


def byte_rows(x: Tensor) -> np.ndarray:
    """A byte tensor ``[..., cols]`` as a contiguous ``uint8`` array ``[rows, cols]``."""
    rows = x.detach().reshape(-1, x.shape[-1]).contiguous()
    return (rows.view(torch.uint8) if rows.dtype == torch.bool else rows).numpy()


def sample_order(shape: torch.Size) -> np.ndarray:
    """The rows of ``[T, B, ..., cols]`` spikes listed sample by sample (row t·B + b at
    position b·T + t): one sample's T steps spike on the same few inputs (a digit's strokes),
    so their weight rows are reused from the cache. Other shapes keep their order."""
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    if len(shape) < 3 or shape[0] < 2 or rows == 0:
        return np.arange(rows, dtype=np.int64)
    steps = int(shape[0])
    per_step = rows // steps
    return (np.arange(steps, dtype=np.int64)[None, :] * per_step
            + np.arange(per_step, dtype=np.int64)[:, None]).reshape(-1)





def change_counts(rows_np: np.ndarray, shape: torch.Size, counts: np.ndarray,
                  tuning: Tuning = TUNING) -> np.ndarray | None:
    """The per-row counts of the changes along time (sample by sample) of ``[T, B, ..., cols]``
    spikes, when they number fewer than ``tuning.changes_ratio`` of the spikes (``counts``, per
    row); else ``None`` (the spikes themselves are summed)."""
    if len(shape) < 3 or shape[0] < 2 or rows_np.shape[0] == 0:
        return None
    changes = np.empty(rows_np.shape[0], np.int64)
    with threads():
        _count_changes(rows_np, int(shape[0]), changes)
    return changes if changes.sum() < tuning.changes_ratio * counts.sum() else None


def csr_changes(rows_np: np.ndarray, steps: int, changes: np.ndarray, dense: np.ndarray,
                 base: np.ndarray, with_csr: bool = True) -> tuple[CSR | None, np.ndarray]:
    """``base + rows_np @ dense`` summed over the changes along time and, ``with_csr``, the
    CSR of those changes (``steps`` = T; ``changes`` from :func:`change_counts`)."""
    rows, cols = rows_np.shape
    out = np.empty((rows, dense.shape[1]), dense.dtype)
    if not with_csr:
        with threads():
            _fill_changes(rows_np, steps, np.zeros(1, np.int64), np.zeros(1, np.int16),
                          np.zeros(1, np.int16), dense, base, out, False)
        return None, out
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(changes, out=indptr[1:])
    index = np.empty(int(indptr[-1]), index_dtype(cols))
    value = np.empty(int(indptr[-1]), np.int16)
    with threads():
        _fill_changes(rows_np, steps, indptr, index, value, dense, base, out, True)
    order = sample_order(torch.Size((steps, rows // steps, cols)))
    return CSR(indptr, index, value, (rows, cols), order, steps), out


def csr_rows(rows_np: np.ndarray, counts: np.ndarray, order: np.ndarray | None = None,
         dense: np.ndarray | None = None,
         base: np.ndarray | None = None) -> tuple[CSR, np.ndarray | None]:
    """The CSR form of ``rows_np`` (rows listed in ``order``) and, with ``dense``,
    ``base + rows_np @ dense`` (in the original row order) computed in the same pass."""
    rows, cols = rows_np.shape
    order = np.arange(rows, dtype=np.int64) if order is None else order
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(counts[order], out=indptr[1:])
    index = np.empty(int(indptr[-1]), index_dtype(cols))
    value = np.empty(int(indptr[-1]), np.uint8)
    with threads():
        if dense is None:
            out = None
            _fill_matmul(rows_np, order, indptr, index, value, np.zeros((1, 1), np.float32),
                         np.zeros(1, np.float32), np.zeros((1, 1), np.float32), False)
        else:
            out = np.empty((rows, dense.shape[1]), dense.dtype)
            _fill_matmul(rows_np, order, indptr, index, value, dense,
                         np.zeros(dense.shape[1], dense.dtype) if base is None else base, out,
                         True)
    return CSR(indptr, index, value, (rows, cols), order), out


def scan(rows_np: np.ndarray, order: np.ndarray, dense: np.ndarray,
         base: np.ndarray) -> np.ndarray:
    """``base + rows_np @ dense`` straight from the bytes, rows taken in ``order`` (no CSR
    kept: for a forward with no backward)."""
    out = np.empty((rows_np.shape[0], dense.shape[1]), dense.dtype)
    with threads():
        _scan_matmul(rows_np, order, dense, base, out)
    return out
