"""Event-driven convolution (E1, E8; stride 1) over inputs held as bytes: the kernels.

Each nonzero input (ci, yi, xi) adds its value times W[:, ci, ky, kx] — all output channels —
at output (yi + pad − ky, xi + pad − kx), accumulated channel-last in a per-image buffer. Along
a kernel row the outputs one input reaches are neighbours, so with the taps stored in reverse
order (:func:`reversed_taps`) each (input, kernel row) is one contiguous run of up to K·Cout
multiply-adds, which the compiler vectorises (up to 1.6× faster than a short loop per tap). The
weight gradient (E8) is the same sum seen from the other side, in a fixed number of private
parts (the sum does not depend on the thread count). With ``steps`` = T the images are T steps
of B samples (image t·B + b) and each sample's sums run on over time, adding only the changes
x^t − x^{t−1} (as :mod:`stbp.kernels.sparse_linear` does).

The gradient on the input (:func:`input_grad`) is summed over the nonzero values of the error
instead: the error of a layer of neurons is zero wherever their surrogate is (most of them, in
a network in training), and each nonzero value adds W[co, :, ky, kx] over the input channels.
The weight gradient can be summed that way too (:func:`weight_grad_by_error`: each nonzero
value adds the inputs under the kernel, all input channels). :mod:`stbp.functional.events`
decides when to use these.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, TUNING, Tuning, nb, threads
from stbp.kernels.sparse_linear import input_value

__all__ = ["forward", "weight_grad", "weight_grad_by_error", "input_grad", "padded_channels", "byte_images",
           "reversed_taps"]

if HAVE_NUMBA:

    @nb.njit(inline="always")
    def _taps(i, pad, size, k):  # pragma: no cover - compiled
        # the kernel taps through which input position i reaches an output in [0, size)
        # (at i + pad − tap), as a range [lo, hi)
        return max(0, i + pad - size + 1), min(k, i + pad + 1)

    @nb.njit(inline="always")
    def _silent(plane):  # pragma: no cover - compiled
        # whether a plane of an error is all zeros (one vectorised pass, no branch per value)
        hits = 0
        for q in range(plane.shape[0]):
            hits += plane[q] != 0
        return hits == 0

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _conv_forward(x, wr, base, pad, steps, out):  # pragma: no cover - compiled
        # out[n] = base + conv(x[n], W) with stride 1: each nonzero input (ci, yi, xi) adds
        # v · W[:, ci, ky, kx] at output (yi + pad − ky, xi + pad − kx), accumulated
        # channel-last in a per-image buffer. wr[ci, ky] holds the taps kx in reverse order,
        # all output channels of each: the outputs one input reaches along a kernel row are
        # neighbours, so each (input, ky) is one contiguous run of up to K·Cout additions.
        # steps = T > 1: the images are [T·B] (image t·B + b) and each sample's buffer runs on
        # from one step to the next, adding only the changes v = x^t − x^{t−1}
        images, cin, h, w = x.shape
        k = wr.shape[1]
        cout, ho, wo = out.shape[1], out.shape[2], out.shape[3]
        span = max(steps, 1)
        per = images // span
        f = out.dtype.type
        for u in nb.prange(per):
            acc = np.empty(ho * wo * cout, out.dtype)
            for q in range(ho * wo):
                for c in range(cout):
                    acc[q * cout + c] = base[c]
            for j in range(span):
                n = j * per + u
                for ci in range(cin):
                    for yi in range(h):
                        row = x[n, ci, yi]
                        prow = x[n - per, ci, yi] if j else row
                        ky0, ky1 = _taps(yi, pad, ho, k)
                        for xi in range(w):
                            fv = input_value(row, prow, xi, j > 0, f)
                            if fv == 0:
                                continue
                            kx0, kx1 = _taps(xi, pad, wo, k)
                            run, w0 = (kx1 - kx0) * cout, (k - kx1) * cout
                            for ky in range(ky0, ky1):
                                a0 = ((yi + pad - ky) * wo + xi + pad - kx1 + 1) * cout
                                a = acc[a0:a0 + run]
                                wv = wr[ci, ky, w0:w0 + run]
                                for c in range(run):
                                    a[c] += fv * wv[c]
                # back to [C, H, W]: strided reads, contiguous writes (the cheaper way round)
                o = out[n].reshape(cout, ho * wo)
                for c in range(cout):
                    oc = o[c]
                    for q in range(ho * wo):
                        oc[q] = acc[q * cout + c]

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _conv_weight_grad(x, g, pad, steps, parts, bias_parts):  # pragma: no cover - compiled
        # parts[p][ci, ky, (K − 1 − kx)·Cout + c] = Σ over part p's images and their nonzero
        # inputs of v · g[n, c, yi + pad − ky, xi + pad − kx] — ∂L/∂W (E8) with the taps kx in
        # reverse order (as the forward's wr), so each (input, ky) is one contiguous run, in
        # fixed parts, so the sum does not depend on the thread count. steps = T > 1: over each
        # sample's changes v = x^t − x^{t−1}, weighted by the suffix sums Σ_{t' ≥ t} g^{t'}
        # (Σ_t g^t ⋆ x^t = Σ_t (Σ_{t' ≥ t} g^{t'}) ⋆ Δ^t). bias_parts[p, :] = Σ of g over part
        # p's images and positions — ∂L/∂b, from the sums over all T steps that the suffix sums
        # end with (one pass per sample, not per step)
        images, cin, h, w = x.shape
        cout, ho, wo = g.shape[1], g.shape[2], g.shape[3]
        nparts, k = parts.shape[0], parts.shape[2]
        span = max(steps, 1)
        per = images // span
        f = g.dtype.type
        step = (per + nparts - 1) // nparts
        for p in nb.prange(nparts):
            acc = parts[p]
            acc[:] = 0
            bacc = bias_parts[p]
            bacc[:] = 0
            gl = np.zeros(ho * wo * cout, g.dtype)  # g channel-last (its suffix sums)
            for u in range(p * step, min(per, (p + 1) * step)):
                gl[:] = 0
                for j in range(span - 1, -1, -1):
                    n = j * per + u
                    gn = g[n].reshape(cout, ho * wo)
                    for q in range(ho * wo):  # strided reads, contiguous writes
                        gq = gl[q * cout:(q + 1) * cout]
                        for c in range(cout):
                            gq[c] += gn[c, q]
                    for ci in range(cin):
                        for yi in range(h):
                            row = x[n, ci, yi]
                            prow = x[n - per, ci, yi] if j else row
                            ky0, ky1 = _taps(yi, pad, ho, k)
                            for xi in range(w):
                                fv = input_value(row, prow, xi, j > 0, f)
                                if fv == 0:
                                    continue
                                kx0, kx1 = _taps(xi, pad, wo, k)
                                run, w0 = (kx1 - kx0) * cout, (k - kx1) * cout
                                for ky in range(ky0, ky1):
                                    a0 = ((yi + pad - ky) * wo + xi + pad - kx1 + 1) * cout
                                    a = acc[ci, ky, w0:w0 + run]
                                    gv = gl[a0:a0 + run]
                                    for c in range(run):
                                        a[c] += fv * gv[c]
                for q in range(ho * wo):  # gl = Σ_t g^t of sample u
                    for c in range(cout):
                        bacc[c] += gl[q * cout + c]

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _conv_input_grad(g, wq, pad, out):  # pragma: no cover - compiled
        # out[n] = the transposed convolution of g[n] (∂L/∂ of the convolution's input): each
        # nonzero g[n, co, yo, xo] adds g · W[co, :, ky, kx] at input (yo + ky − pad, xo + kx −
        # pad), accumulated channel-last (wq[co, ky, kx·Cp + ci] = W[co, ci, ky, kx], Cin padded
        # to Cp, a whole number of 64-byte vectors, so a run of taps is a whole number of them).
        # Position by position: the nonzero g over the output channels that have any (a whole
        # zero plane is skipped after one vectorised pass), four at a time into one pass over
        # each run of the buffer
        images, cout, ho, wo = g.shape
        cin, h, w = out.shape[1], out.shape[2], out.shape[3]
        k = wq.shape[1]
        cp = wq.shape[2] // k
        for n in nb.prange(images):
            acc = np.zeros(h * w * cp, out.dtype)
            gn = g[n].reshape(cout, ho * wo)
            active = np.empty(cout, np.int64)
            na = 0
            for co in range(cout):
                active[na] = co
                na += not _silent(gn[co])
            chans = np.empty(cout, np.int64)
            vals = np.empty(cout, g.dtype)
            for yo in range(ho):
                ky0, ky1 = max(0, pad - yo), min(k, h + pad - yo)
                for xo in range(wo):
                    q = yo * wo + xo
                    m = 0
                    for i in range(na):  # branch-free compaction of the nonzero g here
                        v = gn[active[i], q]
                        chans[m] = active[i]
                        vals[m] = v
                        m += v != 0
                    if m == 0:
                        continue
                    kx0, kx1 = max(0, pad - xo), min(k, w + pad - xo)
                    run, w0 = (kx1 - kx0) * cp, kx0 * cp
                    for ky in range(ky0, ky1):
                        a0 = ((yo + ky - pad) * w + xo + kx0 - pad) * cp
                        a = acc[a0:a0 + run]
                        j = 0
                        while j + 4 <= m:
                            v0, v1, v2, v3 = vals[j], vals[j + 1], vals[j + 2], vals[j + 3]
                            d0 = wq[chans[j], ky, w0:w0 + run]
                            d1 = wq[chans[j + 1], ky, w0:w0 + run]
                            d2 = wq[chans[j + 2], ky, w0:w0 + run]
                            d3 = wq[chans[j + 3], ky, w0:w0 + run]
                            for c in range(run):
                                a[c] += (v0 * d0[c] + v1 * d1[c]) + (v2 * d2[c] + v3 * d3[c])
                            j += 4
                        while j < m:
                            v0, d0 = vals[j], wq[chans[j], ky, w0:w0 + run]
                            for c in range(run):
                                a[c] += v0 * d0[c]
                            j += 1
            o = out[n].reshape(cin, h * w)  # back to [C, H, W]
            for c in range(cin):
                oc = o[c]
                for q in range(h * w):
                    oc[q] = acc[q * cp + c]


    @nb.njit(parallel=True, cache=True, nogil=True)
    def _conv_weight_grad_by_error(x, g, pad, parts, bias_parts):  # pragma: no cover - compiled
        # parts[p][co, ky, kx·Cp + ci] = Σ over part p's images and the nonzero values v =
        # g[n, co, yo, xo] of v · x[n, ci, yo + ky − pad, xo + kx − pad] — ∂L/∂W summed over
        # the error's nonzero values instead of the inputs' (Cin padded to Cp, whole vectors;
        # the image's inputs made channel-last once, if any of its error is nonzero), in fixed
        # parts; bias_parts[p, co] = Σ v
        images, cin, h, w = x.shape
        cout, ho, wo = g.shape[1], g.shape[2], g.shape[3]
        nparts, k = parts.shape[0], parts.shape[2]
        cp = parts.shape[3] // k
        f = g.dtype.type
        step = (images + nparts - 1) // nparts
        for p in nb.prange(nparts):
            acc = parts[p]
            acc[:] = 0
            bacc = bias_parts[p]
            bacc[:] = 0
            xcl = np.zeros(h * w * cp, g.dtype)
            for n in range(p * step, min(images, (p + 1) * step)):
                gn = g[n].reshape(cout, ho * wo)
                built = False
                for co in range(cout):
                    plane = gn[co]
                    if _silent(plane):
                        continue
                    if not built:
                        for ci in range(cin):
                            xc = x[n, ci].reshape(-1)
                            for q in range(h * w):
                                xcl[q * cp + ci] = f(xc[q])
                        built = True
                    for yo in range(ho):
                        ky0, ky1 = max(0, pad - yo), min(k, h + pad - yo)
                        for xo in range(wo):
                            v = plane[yo * wo + xo]
                            if v == 0:
                                continue
                            bacc[co] += v
                            kx0, kx1 = max(0, pad - xo), min(k, w + pad - xo)
                            run, w0 = (kx1 - kx0) * cp, kx0 * cp
                            for ky in range(ky0, ky1):
                                a0 = ((yo + ky - pad) * w + xo + kx0 - pad) * cp
                                a = acc[co, ky, w0:w0 + run]
                                xv = xcl[a0:a0 + run]
                                for c in range(run):
                                    a[c] += v * xv[c]


def byte_images(x: Tensor) -> np.ndarray:
    """A byte tensor ``[N, C, H, W]`` as a contiguous ``uint8`` array."""
    x = x.detach().contiguous()
    return (x.view(torch.uint8) if x.dtype == torch.bool else x).numpy()


def reversed_taps(weight: Tensor) -> np.ndarray:
    """``weight`` ``[Cout, Cin, K, K]`` as the kernels read it: ``[Cin, K, K·Cout]``, the taps
    of each kernel row in reverse order (kx = K − 1 first), all output channels of each tap
    together (a new array)."""
    cout, cin, k, _ = weight.shape
    return weight.detach().permute(1, 2, 3, 0).flip(2).reshape(cin, k, k * cout).contiguous().numpy()


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, divisor: int = 1,
            steps: int = 0) -> Tensor:
    """``F.conv2d(x / divisor, weight, bias, 1, padding)`` for byte inputs ``x``
    ``[N, C, H, W]``; ``steps`` = T: summed over the changes along time (image t·B + b)."""
    w = weight.detach()
    cout, cin, k, _ = w.shape
    wr = reversed_taps(w * (1.0 / divisor) if divisor != 1 else w)
    base = (torch.zeros(cout, dtype=w.dtype) if bias is None
            else bias.detach().to(w.dtype).contiguous())
    n, _, h, wd = x.shape
    out = np.empty((n, cout, h + 2 * padding - k + 1, wd + 2 * padding - k + 1), wr.dtype)
    with threads():
        _conv_forward(byte_images(x), wr, base.numpy(), padding, steps, out)
    return torch.from_numpy(out)


def weight_grad(x: Tensor, grad: Tensor, weight_shape: torch.Size, padding: int,
                divisor: int = 1, steps: int = 0, tuning: Tuning = TUNING) -> tuple[Tensor, Tensor]:
    """∂L/∂W ``[Cout, Cin, K, K]`` (E8) of the convolution of byte inputs ``x`` (value = code /
    ``divisor``) whose output gradient is ``grad`` ``[N, Cout, Ho, Wo]`` (contiguous), and
    ∂L/∂b ``[Cout]`` (the sum of ``grad`` over images and positions), from the same pass."""
    cout, cin, k, _ = weight_shape
    dtype = grad.detach().numpy().dtype
    parts = np.empty((tuning.parts, cin, k, k * cout), dtype)
    bias_parts = np.empty((tuning.parts, cout), dtype)
    with threads():
        _conv_weight_grad(byte_images(x), grad.detach().contiguous().numpy(), padding, steps, parts,
                          bias_parts)
    total = torch.from_numpy(parts.sum(0)).reshape(cin, k, k, cout).flip(2)  # [Cin, K, K, Cout]
    if divisor != 1:
        total = total * (1.0 / divisor)
    return total.permute(3, 0, 1, 2).contiguous(), torch.from_numpy(bias_parts.sum(0))


def input_grad(grad: Tensor, weight: Tensor, input_shape: torch.Size, padding: int) -> Tensor:
    """``torch.nn.grad.conv2d_input(input_shape, weight, grad, 1, padding)`` summed over the
    nonzero values of ``grad`` ``[N, Cout, Ho, Wo]`` (float32/64, contiguous): work in
    proportion to them (the error of a layer of neurons is zero wherever the surrogate is)."""
    w = weight.detach()
    cout, cin, k, _ = w.shape
    cp = padded_channels(cin)
    wq = torch.zeros((cout, k, k, cp), dtype=w.dtype)
    wq[..., :cin] = w.permute(0, 2, 3, 1)
    out = np.empty(tuple(input_shape), wq.numpy().dtype)
    with threads():
        _conv_input_grad(grad.detach().contiguous().numpy(), wq.reshape(cout, k, k * cp).numpy(),
                         padding, out)
    return torch.from_numpy(out)


def padded_channels(n: int) -> int:
    """``n`` channels padded to whole 64-byte vectors of float32 (what the kernels that sum
    over an error's nonzero values lay out)."""
    return -(-n // 16) * 16


def weight_grad_by_error(x: Tensor, grad: Tensor, weight_shape: torch.Size, padding: int,
                         divisor: int = 1, tuning: Tuning = TUNING) -> tuple[Tensor, Tensor]:
    """:func:`weight_grad` summed over the nonzero values of ``grad`` instead of the inputs':
    work in proportion to them times Cin (padded), against the inputs' events times Cout."""
    cout, cin, k, _ = weight_shape
    g = grad.detach().contiguous()
    cp = padded_channels(cin)
    dtype = g.numpy().dtype
    parts = np.empty((tuning.parts, cout, k, k * cp), dtype)
    bias_parts = np.empty((tuning.parts, cout), dtype)
    with threads():
        _conv_weight_grad_by_error(byte_images(x), g.numpy(), padding, parts, bias_parts)
    total = torch.from_numpy(parts.sum(0)).reshape(cout, k, k, cp)[..., :cin]
    if divisor != 1:
        total = total * (1.0 / divisor)
    return total.permute(0, 3, 1, 2).contiguous(), torch.from_numpy(bias_parts.sum(0))
