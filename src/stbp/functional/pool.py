"""Average pooling of spikes (the paper's P2 layers).

``F.avg_pool2d`` saves its input for the backward although the gradient of an average needs only
the input's shape: for a spiking CNN that input is the full-resolution spike map, the largest
tensor of the network. :func:`avg_pool2d` saves the shape alone and gives the same gradient.

Spikes held as bytes (:class:`~stbp.functional.spikes.Spikes`) are pooled from their bytes: the
result is again :class:`Spikes`, the window sums with divisor k², which the next layer sums
event by event. Its gradient goes back as a :class:`PoolTerm` — the pooled gradient, spread
over each window a few samples at a time inside the neurons' backward — so the full-resolution
gradient (the network's largest tensor) is never made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stbp.functional.spikes import GradTerm, Origin, Spikes
from stbp.kernels import pooling
from stbp.kernels.runtime import HAVE_NUMBA

__all__ = ["avg_pool2d", "expand", "PoolTerm", "PooledOrigin"]


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


class PoolTerm(GradTerm):
    """∂L/∂o of the spikes under a k×k average pooling (stride k): the pooled gradient ``grad``
    ``[T, B, ..., H // k, W // k]``, spread over the windows (/ k²) when made."""

    def __init__(self, grad: Tensor, k: int) -> None:
        self.grad, self.k = grad, k

    def add_to(self, out: Tensor, b0: int, b1: int) -> None:
        pooling.spread_add(self.grad[:, b0:b1], self.k, out)

    def write_to(self, out: Tensor, b0: int, b1: int) -> None:
        pooling.spread_add(self.grad[:, b0:b1], self.k, out, write=True)


class PooledOrigin(Origin):
    """The way back through a k×k average pooling to the spikes' own origin."""

    def __init__(self, parent: Origin, k: int, shape: torch.Size, dtype: torch.dtype) -> None:
        self.parent, self.k, self.dtype = parent, k, dtype
        self.input = parent.input
        self.pooled_shape = torch.Size((*shape[:-2], shape[-2] // k, shape[-1] // k))

    @property
    def spent(self) -> bool:  # type: ignore[override]
        return self.parent.spent

    def use(self) -> None:
        self.parent.use()

    def backward(self, term: GradTerm) -> Tensor:
        # the gradient on the pooled values (a k²-th of the spikes' size) made whole
        g = term.dense(self.pooled_shape, self.dtype)
        return self.parent.backward(PoolTerm(g, self.k))


def _poolable(x: Spikes, k: int) -> bool:
    return (HAVE_NUMBA and isinstance(k, int) and x.divisor == 1 and x.dim() >= 3 and x.device.type == "cpu"
            and 1 <= k and k * k <= 255 and min(x.shape[-2:]) >= k)


def avg_pool2d(x: Tensor | Spikes, kernel_size: int,
               stride: int | None = None) -> Tensor | Spikes:
    """``F.avg_pool2d(x, kernel_size, stride)`` over the last two dimensions, saving no
    activations; :class:`Spikes` (stride k) are pooled from their bytes into :class:`Spikes`
    (window sums, divisor k²). ``x``: ``[N, C, H, W]`` (or any leading dimensions, for
    :class:`Spikes`)."""
    stride = kernel_size if stride is None else stride
    if isinstance(x, Spikes):
        if stride == kernel_size and _poolable(x, kernel_size):
            sums = pooling.window_sums(x.codes, kernel_size)
            origin = (PooledOrigin(x.origin, kernel_size, x.shape, x.dtype)
                      if x.requires_grad and torch.is_grad_enabled() else None)
            return Spikes(sums, x.dtype, divisor=kernel_size * kernel_size, origin=origin)
        lead = x.shape[:-3]
        y = avg_pool2d(x.float().flatten(0, len(lead) - 1) if lead else x.float(), kernel_size,
                       stride)
        return y.unflatten(0, lead) if lead else y
    if not (torch.is_grad_enabled() and x.requires_grad):
        return F.avg_pool2d(x, kernel_size, stride)
    return _AvgPool2d.apply(x, kernel_size, stride)
