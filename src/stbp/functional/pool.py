"""Average pooling of spikes (the paper's P2 layers) that keeps nothing for the backward.

``F.avg_pool2d`` saves its input for the backward although the gradient of an average needs only
the input's shape: for a spiking CNN that input is the full-resolution spike map, the largest
tensor of the network. :func:`avg_pool2d` saves the shape alone and gives the same gradient.

Spikes from the fused LIF kernels carry a byte copy and a handoff
(:mod:`stbp.functional.spike_bytes`): :func:`avg_pool2d_spikes` then sums the bytes (a
quarter of the memory traffic of the floats) and, in the backward, leaves the pooled gradient
with the LIF node, whose kernel spreads it over each window as it runs — the full-resolution
gradient (the network's largest tensor) is never made.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from stbp.functional import spike_bytes
from stbp.functional.lif_numba import HAVE_NUMBA, _threads, nb

__all__ = ["avg_pool2d", "avg_pool2d_spikes", "expand"]

if HAVE_NUMBA:

    @nb.njit(parallel=True, cache=True, nogil=True)
    def _pool_bytes(codes, k, out, sums):  # pragma: no cover - compiled
        # sums[p, i, j] = Σ of the k×k window of byte plane p (windows at stride k), and
        # out = sums / k² — the same value F.avg_pool2d gives for 0/1 spikes
        planes, ho, wo = out.shape
        kk = out.dtype.type(k * k)
        for p in nb.prange(planes):
            plane = codes[p]
            for i in range(ho):
                so = sums[p, i]
                so[:] = 0
                for dy in range(k):
                    row = plane[i * k + dy]
                    for j in range(wo):
                        s = 0
                        for dx in range(k):
                            s += row[j * k + dx]
                        so[j] += s
                o = out[p, i]
                for j in range(wo):
                    o[j] = so[j] / kk  # divided, as F.avg_pool2d does (not × 1/k²)


def expand(grad: Tensor, shape: torch.Size, k: int, stride: int | None = None) -> Tensor:
    """The gradient of a k×k average pooling (stride ``stride``, default k) of an input of
    ``shape`` ``[..., H, W]``, from the pooled gradient ``grad``."""
    s = k if stride is None else stride
    flat = grad.reshape(-1, 1, *grad.shape[-2:]).contiguous()
    # the backward reads only the input's sizes: a zero-stride stand-in costs no memory
    like = torch.zeros((), dtype=grad.dtype, device=grad.device).expand(
        flat.shape[0], 1, *shape[-2:])
    gx = torch.ops.aten.avg_pool2d_backward(flat, like, [k, k], [s, s], [0, 0], False, True,
                                            None)
    return gx.reshape(shape)


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel_size: int, stride: int):  # type: ignore[override]
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.kernel_size, ctx.stride = kernel_size, stride
        return F.avg_pool2d(x, kernel_size, stride)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        gx = expand(grad.to(ctx.dtype), ctx.shape, ctx.kernel_size, ctx.stride)
        return gx, None, None


def avg_pool2d(x: Tensor, kernel_size: int, stride: int | None = None) -> Tensor:
    """``F.avg_pool2d(x, kernel_size, stride)`` on ``[N, C, H, W]``, saving no activations."""
    stride = kernel_size if stride is None else stride
    if not (torch.is_grad_enabled() and x.requires_grad):
        return F.avg_pool2d(x, kernel_size, stride)
    return _AvgPool2d.apply(x, kernel_size, stride)


def _pooled(codes: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """The pooled spikes, carrying their window sums as bytes (scale 1/k²) for a next layer
    that sums events."""
    h, w = codes.shape[-2:]
    planes = codes.reshape(-1, h, w).contiguous().numpy()
    out = np.empty((planes.shape[0], h // k, w // k), np.dtype(str(dtype).split(".")[-1]))
    sums = np.empty(out.shape, np.uint8)
    _threads()
    _pool_bytes(planes, k, out, sums)
    shape = (*codes.shape[:-2], h // k, w // k)
    pooled = torch.from_numpy(out).reshape(shape)
    if k * k <= 255:
        spike_bytes.attach(pooled, torch.from_numpy(sums).reshape(shape), scale=1.0 / (k * k))
    return pooled


class _PoolLink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, link: Tensor, codes: Tensor, k: int, dtype: torch.dtype,  # type: ignore[override]
                handoff: spike_bytes.Handoff, spikes: Tensor):
        # spikes: the float spikes (held weakly), or None when they exist only as bytes
        ctx.k, ctx.handoff, ctx.link_dtype = k, handoff, link.dtype
        ctx.shape = codes.shape
        ctx.spikes = None if spikes is None else weakref.ref(spikes)
        return _pooled(codes, k, dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if ctx.spikes is not None and ctx.spikes() is not None:
            # the spikes are alive: their gradient, dense
            return None, None, None, None, None, expand(grad, ctx.shape, ctx.k)
        ctx.handoff.terms.append(("pool", grad, ctx.k))  # spread inside the LIF's backward
        return torch.ones((), dtype=ctx.link_dtype), None, None, None, None, None


def _poolable(codes: Tensor | None, dtype: torch.dtype, kernel_size: int) -> bool:
    return not (codes is None or not HAVE_NUMBA or codes.dim() < 3 or codes.device.type != "cpu"
                or dtype not in (torch.float32, torch.float64) or kernel_size < 1
                or min(codes.shape[-2:]) < kernel_size)  # F.avg_pool2d's own error for that


def avg_pool2d_spikes(x: Tensor | spike_bytes.Codes, kernel_size: int) -> Tensor | None:
    """k×k average pooling (stride k) of spikes ``[..., H, W]`` from the fused LIF kernels,
    computed from their bytes, the gradient handed back to the LIF node; ``None`` when ``x``
    carries no bytes (the caller then uses :func:`avg_pool2d`). ``x`` may be
    :class:`~stbp.functional.spike_bytes.Codes` (spikes held as bytes alone)."""
    if isinstance(x, spike_bytes.Codes):
        if not _poolable(x.codes, x.dtype, kernel_size):
            return None
        if not (torch.is_grad_enabled() and x.link.requires_grad):
            return _pooled(x.codes, kernel_size, x.dtype)
        return _PoolLink.apply(x.link, x.codes, kernel_size, x.dtype, x.handoff, None)
    codes = spike_bytes.lookup(x)
    if not _poolable(codes, x.dtype, kernel_size):
        return None
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _pooled(codes, kernel_size, x.dtype)
    found = spike_bytes.handoff(x)
    watched = x.retains_grad or bool(x._backward_hooks)
    if found is None or not found[1].requires_grad or watched:
        return None
    hand, link = found
    return _PoolLink.apply(link, codes, kernel_size, x.dtype, hand, x)
