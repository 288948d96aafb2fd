"""A window classifier run over a whole image at once (OverFeat-style shared computation).

A CNN trained on ``w × w`` windows — unpadded ("valid") convolutions, 2×2 pooling, then fully
connected layers — computes, for a window cut out of a larger image, exactly what the same
convolutions compute on that part of the image. :func:`fully_convolutional` therefore turns
the network into one that scores every window of an image in one pass: the convolutions and
pools run once over the image, the first fully connected layer becomes a convolution whose
kernel covers the last feature map (its weight matrix reshaped), and every later one a 1×1
convolution. The output ``[T, B, classes, h, w]`` holds at ``(i, j)`` the output of the window
whose top-left corner is ``(stride·i, stride·j)`` (``stride`` = the product of the pooling
strides). Spiking or not, the result equals the window network's on each such window (up to
float summation order; exactly for weights and inputs that sum exactly).

A 'same'-padded convolution pads each window with zeros, which a shared pass cannot: over an
image a window's border pixels see their neighbours instead. Such a network is refused —
train the detector with ``[model] padding = "valid"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from stbp import layers
from stbp.errors import StbpError
from stbp.models import SpikingNet

__all__ = ["FullyConvolutional", "fully_convolutional"]


@dataclass(frozen=True)
class FullyConvolutional:
    """A window network made fully convolutional: ``net`` maps ``[T, B, C, H, W]`` images to
    ``[T, B, classes, h, w]`` outputs, one per window of side ``window`` every ``stride``
    pixels (``h = (H − window) // stride + 1``)."""

    net: SpikingNet
    window: int
    stride: int

    def windows(self, height: int, width: int) -> tuple[int, int]:
        """The number of window rows and columns the network scores on a ``height × width``
        image (0 when the image is smaller than a window)."""
        if height < self.window or width < self.window:
            return 0, 0
        return (height - self.window) // self.stride + 1, (width - self.window) // self.stride + 1


def _activation(neuron: nn.Module) -> tuple[str, dict]:
    if isinstance(neuron, layers.LIF):
        return "lif", {"neuron": neuron.params}
    return neuron.activation, {}


def _conv_from(weight: torch.Tensor, bias: torch.Tensor | None, neuron: nn.Module,
               kernel: int, stride: int = 1) -> layers.Conv2d:
    out_ch = weight.shape[0]
    in_ch = weight.shape[1] // (kernel * kernel)
    activation, kw = _activation(neuron)
    conv = layers.Conv2d(in_ch, out_ch, kernel, stride=stride, bias=bias is not None,
                         activation=activation, **kw)
    with torch.no_grad():
        conv.synapse.weight.copy_(weight.detach().reshape(out_ch, in_ch, kernel, kernel))
        if bias is not None:
            conv.synapse.bias.copy_(bias.detach())
    return conv.to(weight.device)


def fully_convolutional(net: SpikingNet, step: int = 1) -> FullyConvolutional:
    """The fully convolutional form of a window network (see the module docstring): a copy of
    its weights, in eval mode. The network must be convolutions without padding (stride 1) and
    average pools, a :class:`~stbp.layers.Flatten`, then fully connected layers. ``step``: score
    every ``step``-th window along each axis (windows ``step ×`` the pooling stride apart; the
    convolutions and pools still run once over the whole image)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise StbpError(f"fully_convolutional: step must be an integer >= 1, got {step!r}")
    mods = list(net)
    try:
        cut = next(i for i, m in enumerate(mods) if isinstance(m, layers.Flatten))
    except StopIteration:
        raise StbpError("fully_convolutional: the network has no Flatten (it must be convolutions "
                        "and pools, then fully connected layers)") from None
    body, head = mods[:cut], mods[cut + 1:]
    channels, stride = None, 1
    for i, m in enumerate(body):
        if isinstance(m, layers.Conv2d):
            conv = m.synapse
            if conv.padding[0] != 0 or conv.padding[1] != 0 or conv.stride != (1, 1):
                raise StbpError(
                    f"fully_convolutional: layer {i} is a padded or strided convolution; a padded "
                    "convolution sees zeros at each window's border, which a pass over the whole "
                    "image cannot reproduce — train the network with [model] padding = \"valid\"")
            channels = conv.out_channels
        elif isinstance(m, layers.AvgPool2d):
            stride *= m.stride
        else:
            raise StbpError(f"fully_convolutional: layer {i} ({type(m).__name__}) is neither a "
                            "Conv2d nor an AvgPool2d")
    if channels is None or not head or not all(isinstance(m, layers.Linear) for m in head):
        raise StbpError("fully_convolutional: the network must start with convolutions and end "
                        "with fully connected layers after its Flatten")
    side = math.isqrt(head[0].synapse.in_features // channels)
    if channels * side * side != head[0].synapse.in_features:
        raise StbpError(f"fully_convolutional: the first fully connected layer takes "
                        f"{head[0].synapse.in_features} inputs, not {channels} square feature maps")
    window = side
    for m in reversed(body):  # the receptive field of one output: the window side
        if isinstance(m, layers.Conv2d):
            window += m.synapse.kernel_size[0] - 1
        else:
            window = (window - 1) * m.stride + m.kernel_size
    convs = [_conv_from(m.synapse.weight, m.synapse.bias, m.neuron, side if k == 0 else 1,
                        step if k == 0 else 1) for k, m in enumerate(head)]
    copies = []
    for m in body:
        if isinstance(m, layers.Conv2d):
            copies.append(_conv_from(m.synapse.weight.flatten(1), m.synapse.bias, m.neuron,
                                     m.synapse.kernel_size[0]))
        else:
            copies.append(layers.AvgPool2d(m.kernel_size, m.stride))
    return FullyConvolutional(SpikingNet(*copies, *convs).eval(), window, stride * step)
