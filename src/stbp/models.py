"""The paper's networks, built from :mod:`stbp.layers`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stbp import layers
from stbp.errors import StbpError
from stbp.functional.lif import LIFParams
from stbp.functional.spikes import Spikes
from stbp.init import paper_init_

__all__ = ["SpikingNet", "mlp", "cnn", "build", "PADDINGS", "READOUTS", "conv_stage_sides"]

#: what a spiking network's output layer gives: "rate" — LIF neurons whose spikes the loss reads
#: as a firing rate (E5, the paper's) — or "current" — no neuron: the layer's input current at
#: each step, whose mean over T is the graded output (a non-saturating readout; the hidden
#: layers spike and train by STBP as ever)
READOUTS = ("rate", "current")

#: a CNN's convolutions: "same" (zero padding k // 2, the paper's) or "valid" (no padding: every
#: output sees only its input window, so a network over a large image computes exactly what it
#: computes on each window — :func:`stbp.fullconv.fully_convolutional`)
PADDINGS = ("same", "valid")


class SpikingNet(nn.Sequential):
    """A sequence of multi-step layers mapping input spikes ``[T, B, ...]`` to output spikes.

    Between its layers the network passes spikes as :class:`~stbp.functional.Spikes` (bytes,
    no float tensor made) wherever the next layer reads them (:func:`stbp.layers.reads_spikes`:
    stbp's Linear, Conv2d, AvgPool2d, Flatten) and the layer's neuron backend makes bytes; any
    other module gets a float tensor. The decision follows from the layers alone — hooks and
    monitors see the same values as training (a forward hook on a hidden layer receives
    :class:`Spikes`; ``.detach()`` gives their values, ``.float()`` a differentiable tensor).
    The output is a float tensor.
    """

    def lif_layers(self) -> list[layers.LIF]:
        return [m for m in self.modules() if isinstance(m, layers.LIF)]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - see class docstring
        if x.dim() < 3:
            raise StbpError(
                f"the network expects input spikes of shape [T, B, ...], got shape {tuple(x.shape)}"
            )
        mods = list(self)
        for i, layer in enumerate(mods):
            if isinstance(x, Spikes) and not layers.reads_spikes(layer):
                x = x.float()
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if layers.makes_spikes(layer):
                x = layer(x, as_spikes=layers.reads_spikes(nxt))
            else:
                x = layer(x)
        return x.float() if isinstance(x, Spikes) else x


def _activations(n: int, spiking: bool, readout: str = "rate") -> list[str]:
    """LIF everywhere (with ``readout="current"`` a linear output layer), or — for the
    non-spiking network of the same shape — ReLU in the hidden layers and a linear output layer
    (its output plays the role of the firing rate in E5)."""
    if readout not in READOUTS:
        raise StbpError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    if not spiking:
        return ["relu"] * (n - 1) + ["identity"]
    return ["lif"] * n if readout == "rate" else ["lif"] * (n - 1) + ["identity"]


def conv_stage_sides(side: int, stages: int, kernel_size: int, padding: str) -> list[int]:
    """The image side after each conv + 2×2-pool stage of :func:`cnn` (an error if it vanishes)."""
    if padding not in PADDINGS:
        raise StbpError(f"cnn padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    sides = []
    for _ in range(stages):
        side = (side if padding == "same" else side - kernel_size + 1) // 2
        if side < 1:
            raise StbpError(f"cnn: {stages} conv+pool stages with {kernel_size}x{kernel_size} "
                            f"{padding!r} convolutions leave nothing of the input")
        sides.append(side)
    return sides


def _finish(net: SpikingNet, init: str, seed: int | None) -> SpikingNet:
    if init == "paper":
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        paper_init_(net, generator=gen)
    elif init != "default":
        raise StbpError(f"unknown init {init!r}; choose 'paper' or 'default'")
    return net


def mlp(
    sizes: Sequence[int], *, init: str = "paper", seed: int | None = None, spiking: bool = True,
    readout: str = "rate", neuron: LIFParams | None = None, **settings,
) -> SpikingNet:
    """A spiking MLP, e.g. ``mlp([784, 800, 10], decay=0.1, threshold=0.5)`` (paper: 784-800-10).

    Input spikes ``[T, B, sizes[0]]`` (or any trailing shape that flattens to it); output spikes
    ``[T, B, sizes[-1]]``. ``neuron``: the :class:`~stbp.functional.LIFParams` of every layer,
    or their settings as keywords (``decay``, ``threshold``, ``surrogate``, …).
    ``spiking=False`` builds the ANN of the same shape (ReLU hidden layers, linear output);
    ``readout="current"`` a spiking network whose output layer does not fire (:data:`READOUTS`).
    """
    params = LIFParams.of(neuron, **settings)
    sizes = list(sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise StbpError(f"mlp sizes must be >= 2 positive integers, got {sizes!r}")
    mods: list[nn.Module] = [layers.Flatten()]
    acts = _activations(len(sizes) - 1, spiking, readout)
    mods += [layers.Linear(a, b, activation=f, neuron=params)
             for a, b, f in zip(sizes[:-1], sizes[1:], acts, strict=True)]
    return _finish(SpikingNet(*mods), init, seed)


def cnn(
    *,
    in_channels: int = 1,
    image_size: int = 28,
    channels: Sequence[int] = (15, 40),
    kernel_size: int = 5,
    padding: str = "same",
    hidden: Sequence[int] = (300,),
    classes: int = 10,
    init: str = "paper",
    seed: int | None = None,
    spiking: bool = True,
    readout: str = "rate",
    neuron: LIFParams | None = None,
    **settings,
) -> SpikingNet:
    """The paper's CNN, 28×28-15C5-P2-40C5-P2-300-10, by default.

    Each ``C`` is a conv + LIF ('same'-padded, the paper's, or ``padding="valid"``: unpadded),
    each ``P2`` a 2×2 average pooling of spikes. Input spikes
    ``[T, B, in_channels, image_size, image_size]``; output ``[T, B, classes]``.
    ``spiking=False`` builds the ANN of the same shape (ReLU hidden layers, linear output);
    ``readout="current"`` a spiking network whose output layer does not fire (:data:`READOUTS`).
    """
    params = LIFParams.of(neuron, **settings)
    if kernel_size % 2 == 0 and padding == "same":
        raise StbpError(f"cnn kernel_size must be odd (same padding), got {kernel_size}")
    sides = conv_stage_sides(image_size, len(channels), kernel_size, padding)
    mods: list[nn.Module] = []
    prev = in_channels
    dims_count = len(channels) + len(hidden) + 1
    acts = iter(_activations(dims_count, spiking, readout))
    for c in channels:
        mods += [
            layers.Conv2d(prev, c, kernel_size, padding=kernel_size // 2 if padding == "same" else 0,
                          activation=next(acts), neuron=params),
            layers.AvgPool2d(2),
        ]
        prev = c
    size = sides[-1] if sides else image_size
    mods.append(layers.Flatten())
    dims = [prev * size * size, *hidden, classes]
    mods += [layers.Linear(a, b, activation=next(acts), neuron=params)
             for a, b in zip(dims[:-1], dims[1:], strict=True)]
    return _finish(SpikingNet(*mods), init, seed)


def build(kind: str, **kwargs) -> SpikingNet:
    """Build a model by name ("mlp" or "cnn") from keyword settings (as in a preset's [model])."""
    if kind == "mlp":
        return mlp(**kwargs)
    if kind == "cnn":
        return cnn(**kwargs)
    raise StbpError(f"unknown model kind {kind!r}; choose 'mlp' or 'cnn'")
