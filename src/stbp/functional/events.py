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

Spike trains along time: a Bernoulli-coded digit spikes at almost the same inputs at every
step, so from one step to the next it changes at far fewer inputs than it spikes (a third, on
MNIST). Where that holds, a layer that knows T (inputs ``[T, B, ...]``) sums the changes
instead, x^t W = x^{t−1} W + (x^t − x^{t−1}) W, one sample's steps after another, and forms
E8 over them too: Σ_t ε^t (x^t)ᵀ = Σ_t (Σ_{t' ≥ t} ε^{t'}) (x^t − x^{t−1})ᵀ.

The kernels are numba, compiled on first use and cached on disk (no install-time
compilation). :func:`linear` falls back to the dense path when numba is missing, the tensors
are not on the CPU, or the input is too dense for the sums to win (:data:`MAX_DENSITY`).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from stbp.errors import StbpError
from stbp.functional import spike_bytes
from stbp.functional.lif_numba import HAVE_NUMBA, _threads, nb

__all__ = ["linear", "conv2d", "to_csr", "usable", "MAX_DENSITY"]

#: above this fraction of nonzero inputs the dense path is used (on the benchmark machine the
#: sums take ~20 % of the dense forward's time and ~36 % of forward + backward at 13 % density,
#: and their cost grows in proportion to the density)
MAX_DENSITY = 0.25
_CACHE_BYTES = 768 << 10  # under one core's L2 (1 MiB here): both cores read the whole chunk
_ROWS = 64  # rows per task of the parallel kernels
_PRIVATE_BYTES = 256 << 10  # a weight gradient this small is summed in parts, then added
_PARTS = 8
_MIN_CHUNK = 16  # rows

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
    def _input(xr, xp, k, changes, f):  # pragma: no cover - compiled
        # input k of row xr as f, or (changes) its change since the previous step's row xp
        return f(xr[k]) - f(xp[k]) if changes else f(xr[k])

    @nb.njit(inline="always")
    def _compact(xr, xp, changes, idx):  # pragma: no cover - compiled
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
    def _accumulate(xr, xp, changes, idx, m, dense, o):  # pragma: no cover - compiled
        # o += Σ_i v_i · dense[idx[i]] with v_i = _input(idx[i]), four entries per pass over o
        # so that o is loaded and stored a quarter as often
        f = dense.dtype.type
        j = 0
        while j + 4 <= m:
            k0, k1, k2, k3 = idx[j], idx[j + 1], idx[j + 2], idx[j + 3]
            d0, d1, d2, d3 = dense[k0], dense[k1], dense[k2], dense[k3]
            w0, w1 = _input(xr, xp, k0, changes, f), _input(xr, xp, k1, changes, f)
            w2, w3 = _input(xr, xp, k2, changes, f), _input(xr, xp, k3, changes, f)
            for c in range(o.shape[0]):
                o[c] += (w0 * d0[c] + w1 * d1[c]) + (w2 * d2[c] + w3 * d3[c])
            j += 4
        while j < m:
            k0 = idx[j]
            d0, w0 = dense[k0], _input(xr, xp, k0, changes, f)
            for c in range(o.shape[0]):
                o[c] += w0 * d0[c]
            j += 1

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _fill_matmul(x, order, indptr, index, value, dense, base, out,
                     with_out):  # pragma: no cover - compiled
        # CSR row i lists x[order[i]] (indptr given) and, with_out, out[r] = base + x[r] @ dense
        # in the same pass over the bytes
        rows, cols = x.shape
        nchunks = (rows + _ROWS - 1) // _ROWS
        for ch in nb.prange(nchunks):
            idx = np.empty(cols + 1, index.dtype)
            for i in range(ch * _ROWS, min(rows, (ch + 1) * _ROWS)):
                r = order[i]
                xr = x[r]
                m = _compact(xr, xr, False, idx)
                j = indptr[i]
                for e in range(m):
                    k = idx[e]
                    index[j + e] = k
                    value[j + e] = xr[k]
                if with_out:
                    o = out[r]
                    o[:] = base
                    _accumulate(xr, xr, False, idx, m, dense, o)

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
                m = _compact(xr, xp, t > 0, idx)
                _accumulate(xr, xp, t > 0, idx, m, dense, o)
                if with_csr:
                    j = indptr[b * steps + t]
                    for e in range(m):
                        k = idx[e]
                        index[j + e] = k
                        value[j + e] = _input(xr, xp, k, t > 0, value.dtype.type)

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

    @nb.njit(inline="always")
    def _taps(i, pad, size, k):  # pragma: no cover - compiled
        # the kernel taps through which input position i reaches an output in [0, size)
        # (at i + pad − tap), as a range [lo, hi)
        return max(0, i + pad - size + 1), min(k, i + pad + 1)

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _conv_forward(x, wt, base, pad, steps, out):  # pragma: no cover - compiled
        # out[n] = base + conv(x[n], W) with stride 1: each nonzero input (ci, yi, xi) adds
        # v · W[:, ci, ky, kx] (wt[ci, ky, kx]: all output channels, padded to whole vectors)
        # at output (yi + pad − ky, xi + pad − kx), accumulated channel-last in a per-image
        # buffer so that each addition is a few full vectors over the output channels.
        # steps = T > 1: the images are [T·B] (image t·B + b) and each sample's buffer runs on
        # from one step to the next, adding only the changes v = x^t − x^{t−1}
        images, cin, h, w = x.shape
        k, cp = wt.shape[1], wt.shape[3]
        cout, ho, wo = out.shape[1], out.shape[2], out.shape[3]
        span = max(steps, 1)
        per = images // span
        f = out.dtype.type
        for u in nb.prange(per):
            acc = np.empty((ho * wo, cp), out.dtype)
            for q in range(ho * wo):
                for c in range(cp):
                    acc[q, c] = base[c]
            for j in range(span):
                n = j * per + u
                for ci in range(cin):
                    for yi in range(h):
                        row = x[n, ci, yi]
                        prow = x[n - per, ci, yi] if j else row
                        ky0, ky1 = _taps(yi, pad, ho, k)
                        for xi in range(w):
                            fv = _input(row, prow, xi, j > 0, f)
                            if fv == 0:
                                continue
                            kx0, kx1 = _taps(xi, pad, wo, k)
                            for ky in range(ky0, ky1):
                                q0 = (yi + pad - ky) * wo + xi + pad
                                for kx in range(kx0, kx1):
                                    a = acc[q0 - kx]
                                    wv = wt[ci, ky, kx]
                                    for c in range(cp):
                                        a[c] += fv * wv[c]
                # back to [C, H, W]: strided reads, contiguous writes (the cheaper way round)
                o = out[n].reshape(cout, ho * wo)
                acc_t = acc.T
                for c in range(cout):
                    oc, ac = o[c], acc_t[c]
                    for q in range(ho * wo):
                        oc[q] = ac[q]

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _conv_weight_grad(x, g, pad, steps, parts):  # pragma: no cover - compiled
        # parts[p][ci, ky, kx, :] = Σ over part p's images and their nonzero inputs of
        # v · g[n, :, yi + pad − ky, xi + pad − kx] (channels padded to whole vectors) — ∂L/∂W
        # (E8) in fixed parts, so the sum does not depend on the thread count. steps = T > 1:
        # over each sample's changes v = x^t − x^{t−1}, weighted by the suffix sums
        # Σ_{t' ≥ t} g^{t'} (Σ_t g^t ⋆ x^t = Σ_t (Σ_{t' ≥ t} g^{t'}) ⋆ Δ^t)
        images, cin, h, w = x.shape
        cout, ho, wo = g.shape[1], g.shape[2], g.shape[3]
        nparts, k, cp = parts.shape[0], parts.shape[2], parts.shape[4]
        span = max(steps, 1)
        per = images // span
        f = g.dtype.type
        step = (per + nparts - 1) // nparts
        for p in nb.prange(nparts):
            acc = parts[p]
            acc[:] = 0
            gl = np.zeros((ho * wo, cp), g.dtype)
            for u in range(p * step, min(per, (p + 1) * step)):
                gl[:] = 0
                for j in range(span - 1, -1, -1):
                    n = j * per + u
                    for c in range(cout):
                        gc = g[n, c]
                        for y in range(ho):
                            for xo in range(wo):
                                gl[y * wo + xo, c] += gc[y, xo]
                    for ci in range(cin):
                        for yi in range(h):
                            row = x[n, ci, yi]
                            prow = x[n - per, ci, yi] if j else row
                            ky0, ky1 = _taps(yi, pad, ho, k)
                            for xi in range(w):
                                fv = _input(row, prow, xi, j > 0, f)
                                if fv == 0:
                                    continue
                                kx0, kx1 = _taps(xi, pad, wo, k)
                                for ky in range(ky0, ky1):
                                    q0 = (yi + pad - ky) * wo + xi + pad
                                    for kx in range(kx0, kx1):
                                        a = acc[ci, ky, kx]
                                        gv = gl[q0 - kx]
                                        for c in range(cp):
                                            a[c] += fv * gv[c]

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
        nchunks = (rows + _ROWS - 1) // _ROWS
        for ch in nb.prange(nchunks):
            idx = np.empty(cols + 1, np.int32)
            for i in range(ch * _ROWS, min(rows, (ch + 1) * _ROWS)):
                r = order[i]
                xr = x[r]
                m = _compact(xr, xr, False, idx)
                o = out[r]
                o[:] = base
                _accumulate(xr, xr, False, idx, m, dense, o)

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


def usable(x: Tensor, weight: Tensor) -> bool:
    """Whether the event-driven path can run (the density is checked in :func:`linear`)."""
    return (HAVE_NUMBA and x.dtype in (torch.uint8, torch.bool) and x.device.type == "cpu"
            and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)
            and x.dim() >= 1)


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
        t_index = np.empty(self.nnz, _index_dtype(total))
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
        _spmm(self.indptr, self.index, self.value, dense,
              np.zeros(n, dense.dtype) if base is None else base, out, init)
        return out

    def t_matmul(self, dense: np.ndarray) -> np.ndarray:
        """``Aᵀ @ dense`` for the original matrix A (``dense``: ``[rows, n]`` in A's row
        order), summed over chunks of rows whose part of ``dense`` fits in the cache
        (``_CACHE_BYTES``): the rows are read in the order of each column's entries, and from
        main memory that is several times slower. A narrow result (it fits in
        ``_PRIVATE_BYTES``, as an output layer's does) is scattered into straight from the rows
        instead, with no transpose, in ``_PARTS`` private copies summed at the end."""
        rows, n = dense.shape
        steps = self.steps
        if self.shape[1] * n * dense.itemsize <= _PRIVATE_BYTES:
            # a fixed number of parts (not one per thread), so the sum does not depend on the
            # thread count
            acc = np.empty((_PARTS, self.shape[1], n), dense.dtype)
            if steps:
                _scatter_t_matmul_changes(self.indptr, self.index, self.value, self.order,
                                          steps, dense, acc)
            else:
                _scatter_t_matmul(self.indptr, self.index, self.value, self.order, dense, acc)
            return acc.sum(0)
        out = np.zeros((self.shape[1], n), dense.dtype)
        step = max(_MIN_CHUNK, _CACHE_BYTES // max(1, n * dense.itemsize))
        if steps:  # chunks of whole samples; the entries name rows of the chunk's suffix sums
            step = -(-step // steps) * steps
        bounds = np.append(np.arange(0, self.shape[0], step), self.shape[0]).astype(np.int64)
        cols = self.shape[1]
        t_indptr = np.zeros((len(bounds) - 1, cols + 1), np.int64)
        t_index = np.empty(self.nnz, _index_dtype(rows))
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


def _sample_order(shape: torch.Size) -> np.ndarray:
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


def to_csr(x: Tensor) -> CSR:
    """The CSR form of a byte tensor ``[..., cols]`` seen as ``[rows, cols]`` (rows in order)."""
    rows = _byte_rows(x)
    return _csr(rows, _counts(rows))[0]


#: the changes along time are summed instead of the spikes when they number fewer than this
#: fraction of the spikes (each changed row also copies the previous step's sums)
CHANGES_RATIO = 0.75


def _changes(rows_np: np.ndarray, shape: torch.Size, counts: np.ndarray) -> np.ndarray | None:
    """The per-row counts of the changes along time (sample by sample) of ``[T, B, ..., cols]``
    spikes, when summing those beats summing the spikes; else ``None``."""
    if len(shape) < 3 or shape[0] < 2 or rows_np.shape[0] == 0:
        return None
    changes = np.empty(rows_np.shape[0], np.int64)
    _count_changes(rows_np, int(shape[0]), changes)
    return changes if changes.sum() < CHANGES_RATIO * counts.sum() else None


def _csr_changes(rows_np: np.ndarray, steps: int, changes: np.ndarray, dense: np.ndarray,
                 base: np.ndarray, with_csr: bool = True) -> tuple[CSR | None, np.ndarray]:
    """``base + rows_np @ dense`` summed over the changes along time and, ``with_csr``, the
    CSR of those changes (``steps`` = T; ``changes`` from :func:`_changes`)."""
    rows, cols = rows_np.shape
    out = np.empty((rows, dense.shape[1]), dense.dtype)
    if not with_csr:
        _fill_changes(rows_np, steps, np.zeros(1, np.int64), np.zeros(1, np.int16),
                      np.zeros(1, np.int16), dense, base, out, False)
        return None, out
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(changes, out=indptr[1:])
    index = np.empty(int(indptr[-1]), _index_dtype(cols))
    value = np.empty(int(indptr[-1]), np.int16)
    _fill_changes(rows_np, steps, indptr, index, value, dense, base, out, True)
    order = _sample_order(torch.Size((steps, rows // steps, cols)))
    return CSR(indptr, index, value, (rows, cols), order, steps), out


def _csr(rows_np: np.ndarray, counts: np.ndarray, order: np.ndarray | None = None,
         dense: np.ndarray | None = None,
         base: np.ndarray | None = None) -> tuple[CSR, np.ndarray | None]:
    """The CSR form of ``rows_np`` (rows listed in ``order``) and, with ``dense``,
    ``base + rows_np @ dense`` (in the original row order) computed in the same pass."""
    rows, cols = rows_np.shape
    order = np.arange(rows, dtype=np.int64) if order is None else order
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(counts[order], out=indptr[1:])
    index = np.empty(int(indptr[-1]), _index_dtype(cols))
    value = np.empty(int(indptr[-1]), np.uint8)
    if dense is None:
        out = None
        _fill_matmul(rows_np, order, indptr, index, value, np.zeros((1, 1), np.float32),
                     np.zeros(1, np.float32), np.zeros((1, 1), np.float32), False)
    else:
        out = np.empty((rows, dense.shape[1]), dense.dtype)
        _fill_matmul(rows_np, order, indptr, index, value, dense,
                     np.zeros(dense.shape[1], dense.dtype) if base is None else base, out, True)
    return CSR(indptr, index, value, (rows, cols), order), out


class _EventLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor, weight: Tensor, bias: Tensor | None,  # type: ignore[override]
                rows: np.ndarray, counts: np.ndarray, in_shape: torch.Size,
                handoff: spike_bytes.Handoff | None, scale: float, spikes: Tensor | None):
        # source: the byte input (no gradient), the float tensor the bytes stand for (value =
        # code × scale; ∂L/∂x made densely), or a LIF node's handoff link (∂L/∂o left with it
        # as factors); with a link, ``spikes`` (also an input) gets ∂L/∂o densely instead when
        # the spikes still exist at backward time (someone may ask for their gradient)
        wt, base = _operands(weight, bias, scale)
        ctx.spikes = None if spikes is None else weakref.ref(spikes)
        ctx.scale = scale
        # one pass: the CSR kept (listed sample by sample) and the current — over the changes
        # along time where they are fewer than the spikes
        changes = _changes(rows, in_shape, counts)
        if changes is not None:
            csr, out_np = _csr_changes(rows, int(in_shape[0]), changes, wt, base)
        else:
            csr, out_np = _csr(rows, counts, _sample_order(in_shape), wt, base)
        ctx.csr = csr
        ctx.has_bias = bias is not None
        ctx.in_shape = in_shape
        ctx.handoff = handoff
        ctx.link_dtype = source.dtype
        ctx.save_for_backward(weight)
        return torch.from_numpy(out_np).reshape(*in_shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(weight.dtype).contiguous()
        grad_x = grad_w = grad_b = None
        grad_spikes = None
        if ctx.handoff is not None and _freed(ctx.spikes):
            # nobody can read the spikes' gradient: ∂L/∂o = ε W formed inside the LIF backward
            ctx.handoff.terms.append(("linear", g, weight))
            grad_x = torch.ones((), dtype=ctx.link_dtype)  # one term left
        elif ctx.handoff is not None:  # the spikes are alive: their gradient, dense
            grad_spikes = (g @ weight).reshape(ctx.in_shape)
        elif ctx.needs_input_grad[0]:  # float spikes: ∂L/∂o = ε W, dense
            grad_x = (g @ weight).reshape(ctx.in_shape)
        if ctx.needs_input_grad[1]:
            _threads()
            grad_wt = torch.from_numpy(ctx.csr.t_matmul(g.numpy()))  # ∂L/∂Wᵀ (E8)
            if ctx.scale != 1.0:
                grad_wt.mul_(ctx.scale)
            grad_w = grad_wt.t().contiguous()  # [out, in], contiguous like the parameter
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None, None, None, None, grad_spikes


def _freed(ref) -> bool:
    """Whether the tensor behind the weak reference ``ref`` no longer exists."""
    return ref is None or ref() is None


def _operands(weight: Tensor, bias: Tensor | None,
              scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Wᵀ ``[in, out]`` (times ``scale``) and the bias (zeros without one) as numpy arrays."""
    w = weight.detach()
    base = (np.zeros(w.shape[0], w.numpy().dtype) if bias is None
            else bias.detach().to(w.dtype).contiguous().numpy())
    # Wᵀ, the rows the kernels sum (scaled out of place: .contiguous() may return W itself)
    wt = (w.t() * scale if scale != 1.0 else w.t()).contiguous()
    return wt.numpy(), base


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None,
           max_density: float = MAX_DENSITY, *, spikes: Tensor | None = None,
           scale: float = 1.0,
           handoff: tuple[spike_bytes.Handoff, Tensor] | None = None) -> Tensor | None:
    """E1 for byte spikes ``x [..., in]`` by summing weight columns; ``None`` if not worth it.

    Returns ``None`` (the caller then runs the dense matmul) when :func:`usable` is false or
    more than ``max_density`` of the inputs are nonzero. The result has the weight's dtype,
    also under ``torch.autocast`` (the sums are exact in it). Gradients flow to ``weight``
    and ``bias``; byte spikes have none. ``spikes``: the float tensor that ``x`` is the byte
    copy of (value = code × ``scale``) — a hidden layer's spikes, or pooled spikes — which then
    gets ∂L/∂o: left with the LIF node that made it (:mod:`stbp.functional.spike_bytes`), or
    made densely. ``handoff``: the (handoff, link) of the LIF node whose spikes exist only as
    the bytes ``x`` (:class:`~stbp.functional.spike_bytes.Codes`); ∂L/∂o is left with it.
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
    if spikes is not None and spikes.shape != x.shape:
        raise StbpError(f"linear: spikes of shape {tuple(spikes.shape)} do not match their "
                        f"bytes of shape {tuple(x.shape)}")
    source, hand = x, None
    if spikes is not None:
        found = spike_bytes.handoff(spikes) if scale == 1.0 else None
        # a user who asked for the spikes' own gradient (retain_grad, a hook) gets it densely
        watched = spikes.retains_grad or bool(spikes._backward_hooks)
        if found is not None and found[1].requires_grad and not watched:
            hand, source = found
        else:
            source = spikes
    elif handoff is not None and scale == 1.0:
        hand, source = handoff
    if torch.is_grad_enabled() and (weight.requires_grad or source.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _EventLinear.apply(source, weight, bias, rows, counts, x.shape, hand, scale,
                                  spikes if hand is not None else None)
    wt, base = _operands(weight, bias, scale)
    changes = _changes(rows, x.shape, counts)
    if changes is not None:  # no backward: no CSR to keep
        _, out = _csr_changes(rows, int(x.shape[0]), changes, wt, base, with_csr=False)
    else:
        out = np.empty((rows.shape[0], wt.shape[1]), wt.dtype)
        _scan_matmul(rows, _sample_order(x.shape), wt, base, out)
    return torch.from_numpy(out).reshape(*x.shape[:-1], weight.shape[0])


# ----------------------------------------------------------------------------- convolution
class _EventConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor, weight: Tensor, bias: Tensor | None,  # type: ignore[override]
                padding: int, codes: Tensor, scale: float, steps: int):
        # source: the byte input itself (no gradient) or the float tensor the codes stand for
        # (code × scale), which gets ∂L/∂x by the dense transposed convolution; steps = T > 1:
        # summed over the changes along time (images t·B + b)
        ctx.padding, ctx.has_bias, ctx.scale = padding, bias is not None, scale
        ctx.in_shape, ctx.steps = codes.shape, steps
        ctx.save_for_backward(codes, weight)
        return _conv(codes, weight, bias, padding, scale, steps)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        codes, weight = ctx.saved_tensors
        g = grad.to(weight.dtype).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(ctx.in_shape, weight, g, 1, ctx.padding)
        if ctx.needs_input_grad[1]:
            _threads()
            cout, cin, k, _ = weight.shape
            parts = np.empty((_PARTS, cin, k, k, _vectors(cout)), g.numpy().dtype)
            _conv_weight_grad(_byte_images(codes), g.numpy(), ctx.padding, ctx.steps, parts)
            total = torch.from_numpy(parts.sum(0)[..., :cout])
            if ctx.scale != 1.0:
                total.mul_(ctx.scale)
            grad_w = total.permute(3, 0, 1, 2).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


def _vectors(n: int) -> int:
    """``n`` channels padded to whole 64-byte vectors of float32."""
    return -(-n // 16) * 16


def _byte_images(x: Tensor) -> np.ndarray:
    x = x.detach().contiguous()
    return (x.view(torch.uint8) if x.dtype == torch.bool else x).numpy()


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int,
          scale: float = 1.0, steps: int = 0) -> Tensor:
    _threads()
    w = weight.detach()
    cout, cin, k, _ = w.shape
    wt = torch.zeros((cin, k, k, _vectors(cout)), dtype=w.dtype)  # [Cin, K, K, Cout padded]
    wt[..., :cout] = w.permute(1, 2, 3, 0) * scale if scale != 1.0 else w.permute(1, 2, 3, 0)
    base = torch.zeros(wt.shape[-1], dtype=w.dtype)
    if bias is not None:
        base[:cout] = bias.detach()
    wt, base = wt.numpy(), base.numpy()
    n, _, h, wd = x.shape
    out = np.empty((n, cout, h + 2 * padding - k + 1, wd + 2 * padding - k + 1), wt.dtype)
    _conv_forward(_byte_images(x), wt, base, padding, steps, out)
    return torch.from_numpy(out)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1,
           padding: int = 0, max_density: float = MAX_DENSITY, *,
           source: Tensor | None = None, scale: float = 1.0,
           steps: int = 0) -> Tensor | None:
    """E1 of a convolution (stride 1) for byte inputs ``x [N, C, H, W]`` (value = code ×
    ``scale``): each nonzero input adds its weights over all output channels; ``None`` if not
    applicable or too dense (the caller then runs the dense convolution). Gradients flow to
    ``weight`` and ``bias`` (summed the same way over the inputs) and, when ``source`` — the
    float tensor ``x`` stands for, such as pooled spikes — is given, to ``source`` (densely).
    A ``scale`` other than a power of two rounds the scaled weights once (float rounding).
    ``steps`` = T when the N images are T steps of N / T samples (image t·B + b): where the
    inputs change at fewer places from one step to the next than they are nonzero, each
    sample's sums run on over time, adding only the changes (as :func:`linear` does)."""
    if (not usable(x, weight) or x.dim() != 4 or weight.dim() != 4 or stride != 1
            or weight.shape[2] != weight.shape[3] or x.shape[1] != weight.shape[1]
            or x.numel() == 0 or (source is not None and source.shape != x.shape)):
        return None
    k = weight.shape[2]
    if x.shape[2] + 2 * padding < k or x.shape[3] + 2 * padding < k:
        return None
    _threads()
    rows = _byte_images(x).reshape(x.shape[0], -1)
    counts = _counts(rows)
    if counts.sum() > max_density * rows.size:
        return None
    if steps < 2 or x.shape[0] % steps or _changes(
            rows, torch.Size((steps, x.shape[0] // steps, rows.shape[1])), counts) is None:
        steps = 0
    src = x if source is None else source
    if torch.is_grad_enabled() and (weight.requires_grad or src.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _EventConv2d.apply(src, weight, bias, padding, x, scale, steps)
    return _conv(x, weight, bias, padding, scale, steps)
