"""Multi-step spiking layers on ``[T, B, ...]`` tensors.

Each synaptic layer runs one matmul/conv over all T steps at once (E1, no delay between layers),
then the LIF recurrence (:func:`stbp.functional.lif_with`) over the time axis.

What a layer takes and returns says what it is: a float tensor, a ``uint8``/``bool`` tensor of
spikes, or :class:`~stbp.functional.Spikes` (spikes held as bytes, with the way back for their
gradient). A spiking layer returns float spikes, or — ``layer(x, as_spikes=True)``, what
:class:`stbp.models.SpikingNet` asks of a layer whose next layer reads them — :class:`Spikes`
where its neuron's backend makes bytes. The layers that read :class:`Spikes` (``reads_spikes``)
are :class:`Linear`, :class:`Conv2d`, :class:`AvgPool2d` and :class:`Flatten`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stbp.errors import StbpError
from stbp.functional import synapse
from stbp.functional.lif import LIFParams, lif_with
from stbp.functional.pool import avg_pool2d
from stbp.functional.spikes import Spikes

__all__ = ["LIF", "Analog", "Linear", "Conv2d", "AvgPool2d", "Flatten", "ACTIVATIONS",
           "reads_spikes", "makes_spikes"]

#: what follows a layer's synapses: the LIF neuron (a spiking network) or, for the non-spiking
#: baseline of the same shape (an ANN), a ReLU (hidden layers) or nothing (the output layer)
ACTIVATIONS = ("lif", "relu", "identity")


def reads_spikes(module: nn.Module | None) -> bool:
    """Whether ``module`` takes :class:`~stbp.functional.Spikes` as its input."""
    return bool(getattr(module, "reads_spikes", False))


def makes_spikes(module: nn.Module | None) -> bool:
    """Whether ``module`` can return :class:`~stbp.functional.Spikes` (``as_spikes=True``)."""
    return bool(getattr(module, "makes_spikes", False))


def _check_steps_batch(x: Tensor | Spikes, min_dim: int, layer: str) -> None:
    if x.dim() < min_dim:
        raise StbpError(
            f"{layer} expects input of shape [T, B, ...] with at least {min_dim} dimensions, got "
            f"shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise StbpError(f"{layer} got T = 0 time steps; T must be >= 1")


def _constant_in_time(x: Tensor | Spikes) -> bool:
    """True for a view repeated along T (stride 0), as :func:`stbp.encoding.direct` makes."""
    return isinstance(x, Tensor) and x.shape[0] > 1 and x.stride(0) == 0


class LIF(nn.Module):
    """A layer of iterative LIF neurons (E2–E4) with STBP gradients; no parameters.

    Input: the current ``[T, ...]``; output: spikes of the same shape. ``params``: a
    :class:`~stbp.functional.LIFParams`, or its settings as keywords. After a forward pass with
    ``record=True`` the membrane potentials are kept in ``self.membrane`` (for plots/analysis).
    """

    makes_spikes = True

    def __init__(self, params: LIFParams | None = None, /, **settings) -> None:
        super().__init__()
        self.params = LIFParams.of(params, **settings)
        self.record = False
        self.membrane: Tensor | None = None

    def forward(self, current: Tensor, *, as_spikes: bool = False) -> Tensor | Spikes:
        return self.fire(current, as_spikes=as_spikes)

    def fire(self, current: Tensor, *, overwrite: bool = False,
             as_spikes: bool = False) -> Tensor | Spikes:
        """Spikes for ``current``; ``overwrite=True`` (for a temporary current, as the synaptic
        layers pass) stores the membrane potentials in the current's memory, and the backward
        may then write its gradient over them (a graph through the layer is differentiated
        once). ``as_spikes=True``: :class:`~stbp.functional.Spikes` where the backend makes
        bytes (:func:`stbp.functional.lif_with`)."""
        _check_steps_batch(current, 2, "LIF")
        if current.dtype in (torch.bfloat16, torch.float16):
            # mixed precision: half-precision synapses, membrane state kept in float32
            current = current.float()
            overwrite = True  # the float32 copy is ours
        if self.record:  # for reading only: the recorded potentials hold no graph
            spikes, membrane = lif_with(current, self.params, as_spikes=as_spikes,
                                        return_membrane=True, overwrite=overwrite)
            self.membrane = membrane.detach()
            return spikes
        return lif_with(current, self.params, as_spikes=as_spikes, overwrite=overwrite)

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"decay={p.decay:g}, threshold={p.threshold:g}, surrogate={p.surrogate!r}, "
            f"reset={p.reset!r}, temporal={p.temporal}, backend={p.backend!r}"
        )


class Analog(nn.Module):
    """The non-spiking stand-in for :class:`LIF` in an ANN of the same shape: ReLU (or identity)
    of the current at every step; no state, no parameters."""

    def __init__(self, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "identity"):
            raise StbpError(f"Analog activation must be 'relu' or 'identity', got {activation!r}")
        self.activation = activation

    def forward(self, current: Tensor, *, as_spikes: bool = False) -> Tensor:
        return self.fire(current)

    def fire(self, current: Tensor, *, overwrite: bool = False, as_spikes: bool = False) -> Tensor:
        """``relu(current)`` (or ``current``); the same call signature as :meth:`LIF.fire`
        (always a float tensor)."""
        del overwrite, as_spikes
        current = current.float() if isinstance(current, Spikes) else current
        return torch.relu(current) if self.activation == "relu" else current

    def extra_repr(self) -> str:
        return self.activation


def _neuron(activation: str, params: LIFParams | None, settings: dict) -> nn.Module:
    if activation == "lif":
        return LIF(params, **settings)
    if activation not in ACTIVATIONS:
        raise StbpError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return Analog(activation)


def _events_allowed(neuron: nn.Module) -> bool:
    """Event-driven synapses unless the layer is on the reference path (``backend="torch"``)."""
    return not (isinstance(neuron, LIF) and neuron.params.backend == "torch")


class Linear(nn.Module):
    """Fully connected synapses + LIF neurons: o^{t,n} = LIF(W o^{t,n-1} + b) for all t at once.

    Memory: a spiking input is kept for the backward as one byte per value
    (:mod:`stbp.functional.synapse`), and the membrane potentials take the current's place.
    Spikes held as bytes (a ``uint8`` tensor such as the trainer's Bernoulli input, or
    :class:`~stbp.functional.Spikes` from a previous layer) run event-driven
    (:mod:`stbp.functional.events`: the weight columns of the inputs that spiked are summed),
    except on the reference path (``backend="torch"``), which keeps the dense matmul.
    ``activation="relu"``/``"identity"`` replaces the LIF by :class:`Analog` (the ANN baseline).
    ``neuron``: :class:`~stbp.functional.LIFParams`, or its settings as keywords.
    """

    reads_spikes = True
    makes_spikes = True

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 activation: str = "lif", neuron: LIFParams | None = None, **settings) -> None:
        super().__init__()
        self.synapse = nn.Linear(in_features, out_features, bias=bias)
        self.neuron = _neuron(activation, neuron, settings)

    def forward(self, x: Tensor | Spikes, *, as_spikes: bool = False) -> Tensor | Spikes:
        _check_steps_batch(x, 3, "Linear")
        if x.shape[-1] != self.synapse.in_features:
            raise StbpError(
                f"Linear expects {self.synapse.in_features} input features, got shape "
                f"{tuple(x.shape)}"
            )
        if _constant_in_time(x):  # direct input: the same current at every step, computed once
            current = self.synapse(x[0])
            return self.neuron(current.unsqueeze(0).expand(x.shape[0], *current.shape))
        current = synapse.linear(x, self.synapse.weight, self.synapse.bias,
                                 events=_events_allowed(self.neuron))
        return self.neuron.fire(current, overwrite=True, as_spikes=as_spikes)


class Conv2d(nn.Module):
    """2-D convolution synapses + LIF neurons on ``[T, B, C, H, W]`` (one conv over T·B images).

    Memory as for :class:`Linear`: spiking (or average-pooled spiking) input is kept as bytes.
    """

    reads_spikes = True
    makes_spikes = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        activation: str = "lif",
        neuron: LIFParams | None = None,
        **settings,
    ) -> None:
        super().__init__()
        for name, value in (("kernel_size", kernel_size), ("stride", stride),
                            ("padding", padding)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (
                    1 if name != "padding" else 0):
                raise StbpError(f"Conv2d {name} must be an integer (the same in both dimensions) "
                                f">= {1 if name != 'padding' else 0}, got {value!r}")
        self.synapse = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )
        self.neuron = _neuron(activation, neuron, settings)

    def forward(self, x: Tensor | Spikes, *, as_spikes: bool = False) -> Tensor | Spikes:
        _check_steps_batch(x, 5, "Conv2d")
        steps, batch = x.shape[:2]
        if _constant_in_time(x):  # direct input: one conv for all steps
            current = self.synapse(x[0])
            return self.neuron(current.unsqueeze(0).expand(steps, *current.shape))
        conv = self.synapse
        flat = x if isinstance(x, Spikes) else x.flatten(0, 1)
        current = synapse.conv2d(flat, conv.weight, conv.bias, conv.stride[0], conv.padding[0],
                                 events=_events_allowed(self.neuron), steps=steps)
        return self.neuron.fire(current.unflatten(0, (steps, batch)), overwrite=True,
                                as_spikes=as_spikes)


class AvgPool2d(nn.Module):
    """Average pooling of spikes over ``[T, B, C, H, W]`` (the paper's P2 layers); keeps no
    activations for the backward (:func:`stbp.functional.pool.avg_pool2d`).
    :class:`~stbp.functional.Spikes` are pooled from their bytes into :class:`Spikes` (window
    sums), whose gradient goes back to the neurons unexpanded."""

    reads_spikes = True

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        stride = stride if stride is not None else kernel_size
        for name, value in (("kernel_size", kernel_size), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StbpError(f"AvgPool2d {name} must be an integer >= 1 (square windows), got "
                                f"{value!r}")
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor | Spikes) -> Tensor | Spikes:
        _check_steps_batch(x, 5, "AvgPool2d")
        if isinstance(x, Spikes):
            return avg_pool2d(x, self.kernel_size, self.stride)
        steps, batch = x.shape[:2]
        y = avg_pool2d(x.flatten(0, 1), self.kernel_size, self.stride)
        return y.unflatten(0, (steps, batch))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Flatten(nn.Module):
    """Flatten everything after ``[T, B]`` (of a tensor or of :class:`~stbp.functional.Spikes`)."""

    reads_spikes = True

    def forward(self, x: Tensor | Spikes) -> Tensor | Spikes:
        _check_steps_batch(x, 2, "Flatten")
        if x.dim() <= 2:
            return x
        return x.flatten(2)
