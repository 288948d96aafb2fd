"""Multi-step spiking layers on ``[T, B, ...]`` tensors.

Each synaptic layer runs one matmul/conv over all T steps at once (E1, no delay between layers),
then the LIF recurrence (:func:`stbp.functional.lif`) over the time axis.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stbp.errors import StbpError
from stbp.functional import spike_bytes, synapse
from stbp.functional.lif import LIFParams, lif_with
from stbp.functional.pool import avg_pool2d, avg_pool2d_spikes
from stbp.functional.spike_bytes import Codes
from stbp.functional.surrogate import SurrogateLike

__all__ = ["LIF", "Analog", "Linear", "Conv2d", "AvgPool2d", "Flatten", "ACTIVATIONS"]

#: what follows a layer's synapses: the LIF neuron (a spiking network) or, for the non-spiking
#: baseline of the same shape (an ANN), a ReLU (hidden layers) or nothing (the output layer)
ACTIVATIONS = ("lif", "relu", "identity")


def _check_steps_batch(x: Tensor | Codes, min_dim: int, layer: str) -> None:
    if x.dim() < min_dim:
        raise StbpError(
            f"{layer} expects input of shape [T, B, ...] with at least {min_dim} dimensions, got "
            f"shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise StbpError(f"{layer} got T = 0 time steps; T must be >= 1")


def _constant_in_time(x: Tensor | Codes) -> bool:
    """True for a view repeated along T (stride 0), as :func:`stbp.encoding.direct` makes."""
    return isinstance(x, Tensor) and x.shape[0] > 1 and x.stride(0) == 0


def _floats(x: Tensor | Codes) -> Tensor:
    """Spikes held as bytes alone (:class:`~stbp.functional.spike_bytes.Codes`) as a float
    tensor, for a layer that needs one; anything else unchanged."""
    return x.float() if isinstance(x, Codes) else x


class LIF(nn.Module):
    """A layer of iterative LIF neurons (E2–E4) with STBP gradients; no parameters.

    Input: the current ``[T, ...]``; output: spikes of the same shape. After a forward pass with
    ``record=True`` the membrane potentials are kept in ``self.membrane`` (for plots/analysis).
    """

    def __init__(
        self,
        *,
        decay: float,
        threshold: float,
        surrogate: SurrogateLike = "rectangular",
        width: float = 1.0,
        reset: str = "zero",
        temporal: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.params = LIFParams.make(
            decay=decay, threshold=threshold, surrogate=surrogate, width=width, reset=reset,
            temporal=temporal, backend=backend,
        )
        self.record = False
        self.membrane: Tensor | None = None

    def forward(self, current: Tensor) -> Tensor:
        return self.fire(_floats(current))

    def fire(self, current: Tensor, *, overwrite: bool = False,
             as_codes: bool = False) -> Tensor | Codes:
        """Spikes for ``current``; ``overwrite=True`` (for a temporary current, as the synaptic
        layers pass) stores the membrane potentials in the current's memory, and the backward
        then writes its gradient over them (a graph through the layer is differentiated once,
        the usual case; ``backend="torch"`` keeps them for a second backward).
        ``as_codes=True``: the spikes as bytes alone where the fused kernels run
        (:func:`stbp.functional.lif_with`)."""
        _check_steps_batch(current, 2, "LIF")
        if current.dtype in (torch.bfloat16, torch.float16):
            # mixed precision: half-precision synapses, membrane state kept in float32
            current = current.float()
            overwrite = True  # the float32 copy is ours
        if self.record:
            spikes, self.membrane = lif_with(current, self.params, return_membrane=True,
                                             overwrite=overwrite)
            return spikes
        return lif_with(current, self.params, overwrite=overwrite, release=overwrite,
                        as_codes=as_codes)

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

    def forward(self, current: Tensor) -> Tensor:
        return self.fire(_floats(current))

    def fire(self, current: Tensor, *, overwrite: bool = False, as_codes: bool = False) -> Tensor:
        """``relu(current)`` (or ``current``); the same call signature as :meth:`LIF.fire`
        (always floats)."""
        del overwrite, as_codes
        return torch.relu(current) if self.activation == "relu" else current

    def extra_repr(self) -> str:
        return self.activation


def _neuron(activation: str, neuron: dict) -> nn.Module:
    if activation == "lif":
        return LIF(**neuron)
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
    Spikes given as bytes (the trainer's Bernoulli input), and a previous layer's spikes from
    the fused kernels (which carry their bytes, :mod:`stbp.functional.spike_bytes`), run
    event-driven
    (:mod:`stbp.functional.events`: the weight columns of the inputs that spiked are summed),
    except on the reference path (``backend="torch"``), which keeps the dense matmul.
    ``activation="relu"``/``"identity"`` replaces the LIF by :class:`Analog` (the ANN baseline).
    ``forward(x, as_codes=True)`` may return the spikes as bytes alone
    (:class:`~stbp.functional.spike_bytes.Codes`), which this layer and :class:`AvgPool2d`
    accept as input — what :class:`stbp.models.SpikingNet` passes between them.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 activation: str = "lif", **neuron) -> None:
        super().__init__()
        self.synapse = nn.Linear(in_features, out_features, bias=bias)
        self.neuron = _neuron(activation, neuron)

    def forward(self, x: Tensor | Codes, *, as_codes: bool = False) -> Tensor | Codes:
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
        return self.neuron.fire(current, overwrite=True, as_codes=as_codes)


class Conv2d(nn.Module):
    """2-D convolution synapses + LIF neurons on ``[T, B, C, H, W]`` (one conv over T·B images).

    Memory as for :class:`Linear`: spiking (or average-pooled spiking) input is kept as bytes.
    """

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
        **neuron,
    ) -> None:
        super().__init__()
        self.synapse = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )
        self.neuron = _neuron(activation, neuron)

    def forward(self, x: Tensor | Codes, *, as_codes: bool = False) -> Tensor | Codes:
        x = _floats(x)
        _check_steps_batch(x, 5, "Conv2d")
        steps, batch = x.shape[:2]
        if _constant_in_time(x):  # direct input: one conv for all steps
            current = self.synapse(x[0])
            return self.neuron(current.unsqueeze(0).expand(steps, *current.shape))
        conv = self.synapse
        flat = spike_bytes.carry(x.flatten(0, 1), x, lambda c: c.flatten(0, 1))
        current = synapse.conv2d(flat, conv.weight, conv.bias, conv.stride[0],
                                 conv.padding[0], events=_events_allowed(self.neuron),
                                 steps=steps)
        return self.neuron.fire(current.unflatten(0, (steps, batch)), overwrite=True,
                                as_codes=as_codes)


class AvgPool2d(nn.Module):
    """Average pooling of spikes over ``[T, B, C, H, W]`` (the paper's P2 layers); keeps no
    activations for the backward (:func:`stbp.functional.pool.avg_pool2d`). Spikes from the
    fused kernels are pooled from their bytes and the gradient goes back to the LIF kernel
    unexpanded (:func:`stbp.functional.pool.avg_pool2d_spikes`)."""

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size

    def forward(self, x: Tensor | Codes) -> Tensor:
        _check_steps_batch(x, 5, "AvgPool2d")
        steps, batch = x.shape[:2]
        if self.stride == self.kernel_size:  # spikes of the fused kernels: from their bytes
            y = avg_pool2d_spikes(x, self.kernel_size)
            if y is not None:
                return y
        x = _floats(x)
        y = avg_pool2d(x.flatten(0, 1), self.kernel_size, self.stride)
        return y.unflatten(0, (steps, batch))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Flatten(nn.Module):
    """Flatten everything after ``[T, B]``."""

    def forward(self, x: Tensor | Codes) -> Tensor:
        x = _floats(x)
        _check_steps_batch(x, 2, "Flatten")
        if x.dim() <= 2:
            return x
        return spike_bytes.carry(x.flatten(2), x, lambda c: c.flatten(2))
