"""Event-driven convolution (E1, E8; stride 1) over inputs held as bytes: the kernels.

Each nonzero input (ci, yi, xi) adds its value times W[:, ci, ky, kx] — all output channels, a
channel-last vector padded to whole 64-byte registers — at output (yi + pad − ky, xi + pad − kx),
accumulated in a per-image buffer. The weight gradient (E8) is the same sum seen from the
other side, in a fixed number of private parts (the sum does not depend on the thread count).
With ``steps`` = T the images are T steps of B samples (image t·B + b) and each sample's sums
run on over time, adding only the changes x^t − x^{t−1} (as :mod:`stbp.kernels.sparse_linear`
does). :mod:`stbp.functional.events` decides when to use these.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from stbp.kernels.runtime import HAVE_NUMBA, TUNING, Tuning, nb, threads
from stbp.kernels.sparse_linear import input_value

__all__ = ["forward", "weight_grad", "byte_images", "vectors"]

if HAVE_NUMBA:

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
                            fv = input_value(row, prow, xi, j > 0, f)
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
    def _conv_weight_grad(x, g, pad, steps, parts, bias_parts):  # pragma: no cover - compiled
        # parts[p][ci, ky, kx, :] = Σ over part p's images and their nonzero inputs of
        # v · g[n, :, yi + pad − ky, xi + pad − kx] (channels padded to whole vectors) — ∂L/∂W
        # (E8) in fixed parts, so the sum does not depend on the thread count. steps = T > 1:
        # over each sample's changes v = x^t − x^{t−1}, weighted by the suffix sums
        # Σ_{t' ≥ t} g^{t'} (Σ_t g^t ⋆ x^t = Σ_t (Σ_{t' ≥ t} g^{t'}) ⋆ Δ^t).
        # bias_parts[p, :] = Σ of g over part p's images and positions — ∂L/∂b, from the sums
        # over all T steps that the suffix sums end with (one pass per sample, not per step)
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
            bacc = bias_parts[p]
            bacc[:] = 0
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
                                fv = input_value(row, prow, xi, j > 0, f)
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
                for q in range(ho * wo):  # gl = Σ_t g^t of sample u
                    for c in range(cp):
                        bacc[c] += gl[q, c]



def vectors(n: int) -> int:
    """``n`` channels padded to whole 64-byte vectors of float32."""
    return -(-n // 16) * 16


def byte_images(x: Tensor) -> np.ndarray:
    """A byte tensor ``[N, C, H, W]`` as a contiguous ``uint8`` array."""
    x = x.detach().contiguous()
    return (x.view(torch.uint8) if x.dtype == torch.bool else x).numpy()


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, divisor: int = 1,
            steps: int = 0) -> Tensor:
    """``F.conv2d(x / divisor, weight, bias, 1, padding)`` for byte inputs ``x``
    ``[N, C, H, W]``; ``steps`` = T: summed over the changes along time (image t·B + b)."""
    w = weight.detach()
    cout, cin, k, _ = w.shape
    wt = torch.zeros((cin, k, k, vectors(cout)), dtype=w.dtype)  # [Cin, K, K, Cout padded]
    wt[..., :cout] = (w.permute(1, 2, 3, 0) * (1.0 / divisor) if divisor != 1
                      else w.permute(1, 2, 3, 0))
    base = torch.zeros(wt.shape[-1], dtype=w.dtype)
    if bias is not None:
        base[:cout] = bias.detach()
    n, _, h, wd = x.shape
    out = np.empty((n, cout, h + 2 * padding - k + 1, wd + 2 * padding - k + 1), wt.numpy().dtype)
    with threads():
        _conv_forward(byte_images(x), wt.numpy(), base.numpy(), padding, steps, out)
    return torch.from_numpy(out)


def weight_grad(x: Tensor, grad: Tensor, weight_shape: torch.Size, padding: int,
                divisor: int = 1, steps: int = 0, tuning: Tuning = TUNING) -> tuple[Tensor, Tensor]:
    """∂L/∂W ``[Cout, Cin, K, K]`` (E8) of the convolution of byte inputs ``x`` (value = code /
    ``divisor``) whose output gradient is ``grad`` ``[N, Cout, Ho, Wo]`` (contiguous), and
    ∂L/∂b ``[Cout]`` (the sum of ``grad`` over images and positions), from the same pass."""
    cout, cin, k, _ = weight_shape
    dtype = grad.numpy().dtype
    parts = np.empty((tuning.parts, cin, k, k, vectors(cout)), dtype)
    bias_parts = np.empty((tuning.parts, vectors(cout)), dtype)
    with threads():
        _conv_weight_grad(byte_images(x), grad.numpy(), padding, steps, parts, bias_parts)
    total = torch.from_numpy(parts.sum(0)[..., :cout])
    if divisor != 1:
        total.mul_(1.0 / divisor)
    return total.permute(3, 0, 1, 2).contiguous(), torch.from_numpy(bias_parts.sum(0)[:cout].copy())
