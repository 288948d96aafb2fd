"""Average pooling of spikes (the paper's P2 layers) that keeps nothing for the backward.

``F.avg_pool2d`` saves its input for the backward although the gradient of an average needs only
the input's shape: for a spiking CNN that input is the full-resolution spike map, the largest
tensor of the network. :func:`avg_pool2d` saves the shape alone and gives the same gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["avg_pool2d"]


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel_size: int, stride: int):  # type: ignore[override]
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.kernel_size, ctx.stride = kernel_size, stride
        return F.avg_pool2d(x, kernel_size, stride)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # the backward reads only the input's sizes: a zero-stride stand-in costs no memory
        like = torch.zeros((), dtype=ctx.dtype, device=grad.device).expand(ctx.shape)
        k, s = [ctx.kernel_size] * 2, [ctx.stride] * 2
        gx = torch.ops.aten.avg_pool2d_backward(grad.contiguous(), like, k, s, [0, 0], False,
                                                True, None)
        return gx, None, None


def avg_pool2d(x: Tensor, kernel_size: int, stride: int | None = None) -> Tensor:
    """``F.avg_pool2d(x, kernel_size, stride)`` on ``[N, C, H, W]``, saving no activations."""
    stride = kernel_size if stride is None else stride
    if not (torch.is_grad_enabled() and x.requires_grad):
        return F.avg_pool2d(x, kernel_size, stride)
    return _AvgPool2d.apply(x, kernel_size, stride)
