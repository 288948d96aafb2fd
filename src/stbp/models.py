"""The paper's networks, built from :mod:`stbp.layers`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stbp import layers
from stbp.errors import StbpError
from stbp.init import paper_init_

__all__ = ["SpikingNet", "mlp", "cnn", "build"]


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(*mods: nn.Module) -> bool:
    """Whether any hook (of these modules, or a global one) could see a layer's output."""
    from torch.nn.modules import module as _m

    return any(getattr(_m, f"_global{name}", None) for name in _HOOKS) or any(
        getattr(m, name, None) for m in mods for name in _HOOKS)


def _hands_codes(layer: nn.Module, nxt: nn.Module | None) -> bool:
    """Whether ``layer`` may pass its spikes to ``nxt`` as bytes alone: a spiking stbp layer
    followed by a layer that reads bytes (an event-driven Linear, a k×k/stride-k pooling),
    with nothing else that could read the spikes (a hook, a membrane recording)."""
    if not (isinstance(layer, (layers.Linear, layers.Conv2d))
            and isinstance(layer.neuron, layers.LIF) and not layer.neuron.record):
        return False
    if isinstance(nxt, layers.Linear):
        reads = layers._events_allowed(nxt.neuron)
    else:
        reads = isinstance(nxt, layers.AvgPool2d) and nxt.stride == nxt.kernel_size
    return reads and not _hooked(layer, nxt)


class SpikingNet(nn.Sequential):
    """A sequence of multi-step layers mapping input spikes ``[T, B, ...]`` to output spikes.

    Between two stbp layers where the second reads spike bytes (a spiking Linear or Conv2d
    followed by an event-driven Linear or a k×k average pooling) the hidden spikes are passed
    as bytes alone (:class:`~stbp.functional.spike_bytes.Codes`) — the float tensor of a
    hidden layer's spikes (``[T, B, neurons]`` × 4 bytes, the largest tensor of a step's
    forward after the membrane) is never made. Anything that could read that tensor — a hook
    on either layer, a global module hook, ``record`` on the LIF (as
    :class:`stbp.stats.FiringMonitor` and the membrane plots use) — makes the network pass
    ordinary float spikes instead; outputs and gradients are the same either way.
    """

    def lif_layers(self) -> list[layers.LIF]:
        return [m for m in self.modules() if isinstance(m, layers.LIF)]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - see class docstring
        if x.dim() < 3:
            raise StbpError(
                f"the network expects input spikes of shape [T, B, ...], got shape {tuple(x.shape)}"
            )
        mods = list(self)
        compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
        tracing = torch.jit.is_tracing() or bool(compiling and compiling())
        for i, layer in enumerate(mods):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if not tracing and _hands_codes(layer, nxt):
                x = layer(x, as_codes=True)
            else:
                x = layer(x)
        return x


_NEURON_KEYS = ("decay", "threshold", "surrogate", "width", "reset", "temporal", "backend")


def _check_neuron(fn: str, neuron: dict) -> None:
    unknown = sorted(set(neuron) - set(_NEURON_KEYS))
    if unknown:
        raise StbpError(f"{fn}(): unknown setting(s) {', '.join(unknown)}; the neuron takes "
                        f"{', '.join(_NEURON_KEYS)}")
    missing = [k for k in ("decay", "threshold") if k not in neuron]
    if missing:
        raise StbpError(f"{fn}() needs the neuron setting(s) {', '.join(missing)}, e.g. "
                        f"{fn}(..., decay=0.1, threshold=0.5) as in the paper's MNIST networks")


def _activations(n: int, spiking: bool) -> list[str]:
    """LIF everywhere, or — for the non-spiking network of the same shape — ReLU in the hidden
    layers and a linear output layer (its output plays the role of the firing rate in E5)."""
    return ["lif"] * n if spiking else ["relu"] * (n - 1) + ["identity"]


def _finish(net: SpikingNet, init: str, seed: int | None) -> SpikingNet:
    if init == "paper":
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        paper_init_(net, generator=gen)
    elif init != "default":
        raise StbpError(f"unknown init {init!r}; choose 'paper' or 'default'")
    return net


def mlp(
    sizes: Sequence[int], *, init: str = "paper", seed: int | None = None, spiking: bool = True,
    **neuron,
) -> SpikingNet:
    """A spiking MLP, e.g. ``mlp([784, 800, 10], decay=0.1, threshold=0.5)`` (paper: 784-800-10).

    Input spikes ``[T, B, sizes[0]]`` (or any trailing shape that flattens to it); output spikes
    ``[T, B, sizes[-1]]``. ``neuron`` holds the :func:`stbp.functional.lif` settings.
    ``spiking=False`` builds the ANN of the same shape (ReLU hidden layers, linear output).
    """
    _check_neuron("mlp", neuron)
    sizes = list(sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise StbpError(f"mlp sizes must be >= 2 positive integers, got {sizes!r}")
    mods: list[nn.Module] = [layers.Flatten()]
    acts = _activations(len(sizes) - 1, spiking)
    mods += [layers.Linear(a, b, activation=f, **neuron)
             for a, b, f in zip(sizes[:-1], sizes[1:], acts, strict=True)]
    return _finish(SpikingNet(*mods), init, seed)


def cnn(
    *,
    in_channels: int = 1,
    image_size: int = 28,
    channels: Sequence[int] = (15, 40),
    kernel_size: int = 5,
    hidden: Sequence[int] = (300,),
    classes: int = 10,
    init: str = "paper",
    seed: int | None = None,
    spiking: bool = True,
    **neuron,
) -> SpikingNet:
    """The paper's CNN, 28×28-15C5-P2-40C5-P2-300-10, by default.

    Each ``C`` is a 'same'-padded conv + LIF, each ``P2`` a 2×2 average pooling of spikes.
    Input spikes ``[T, B, in_channels, image_size, image_size]``; output ``[T, B, classes]``.
    ``spiking=False`` builds the ANN of the same shape (ReLU hidden layers, linear output).
    """
    _check_neuron("cnn", neuron)
    if kernel_size % 2 == 0:
        raise StbpError(f"cnn kernel_size must be odd (same padding), got {kernel_size}")
    size = image_size
    mods: list[nn.Module] = []
    prev = in_channels
    dims_count = len(channels) + len(hidden) + 1
    acts = iter(_activations(dims_count, spiking))
    for c in channels:
        if size < 2:
            raise StbpError(f"cnn: image_size {image_size} is too small for {len(channels)} pools")
        mods += [
            layers.Conv2d(prev, c, kernel_size, padding=kernel_size // 2, activation=next(acts),
                          **neuron),
            layers.AvgPool2d(2),
        ]
        prev, size = c, size // 2
    mods.append(layers.Flatten())
    dims = [prev * size * size, *hidden, classes]
    mods += [layers.Linear(a, b, activation=next(acts), **neuron)
             for a, b in zip(dims[:-1], dims[1:], strict=True)]
    return _finish(SpikingNet(*mods), init, seed)


def build(kind: str, **kwargs) -> SpikingNet:
    """Build a model by name ("mlp" or "cnn") from keyword settings (as in a preset's [model])."""
    if kind == "mlp":
        return mlp(**kwargs)
    if kind == "cnn":
        return cnn(**kwargs)
    raise StbpError(f"unknown model kind {kind!r}; choose 'mlp' or 'cnn'")
