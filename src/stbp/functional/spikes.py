"""Spikes held as bytes: the value a spiking layer hands the next layer, and the way back.

A layer of neurons on the fused CPU kernels makes its spikes as bytes (one ``uint8`` 0/1 per
neuron and step). :class:`Spikes` is that value, typed: the bytes, the float dtype they stand
for, a divisor (1 for spikes; k² for the window sums of a k×k average pooling of spikes), and
an :class:`Origin` — the way a gradient on these spikes goes back to the tensor that made
them. A layer that can sum bytes (an event-driven synapse, a pooling) reads ``codes``; any
other consumer calls :meth:`Spikes.float` and gets an ordinary differentiable tensor.

The gradient route is fixed in the forward, by the consumer: it applies its own autograd
Function to ``origin.input`` (a tensor of the graph, such as the neurons' input current) and,
in its backward, passes the gradient on the spikes to :meth:`Origin.backward` as a
:class:`GradTerm` — dense (:class:`DenseTerm`), or factored in the consumer's own form (a
synapse's ε and W, a pooling's pooled gradient), which the origin turns into the dense
gradient a few samples at a time while it runs, so that the ``[T, B, neurons]`` gradient on a
hidden layer's spikes is never made whole. Each consumer's backward is its own; autograd sums
what they return for ``origin.input``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["Spikes", "Origin", "GradTerm", "DenseTerm"]


class GradTerm(ABC):
    """The gradient ∂L/∂o on spikes ``[T, B, ...]`` in a consumer's form (E6's spatial term)."""

    @abstractmethod
    def add_to(self, out: Tensor, b0: int, b1: int) -> None:
        """Add ∂L/∂o of samples ``b0:b1`` (all T steps) to ``out`` (contiguous,
        ``[T, b1 − b0, ...]`` with the spikes' trailing shape)."""

    def write_to(self, out: Tensor, b0: int, b1: int) -> None:
        """Write (not add) ∂L/∂o of samples ``b0:b1`` into ``out``; a term that can make it in
        place of the values there overrides this (saving a pass that zeroes ``out``)."""
        out.zero_()
        self.add_to(out, b0, b1)

    def whole(self) -> Tensor | None:
        """∂L/∂o as one tensor when the term already holds it (no need to make it in parts)."""
        return None

    def dense(self, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """∂L/∂o made whole, ``shape`` ``[T, B, ...]``."""
        held = self.whole()
        if held is not None:
            return held.reshape(shape).to(dtype)
        out = torch.zeros(shape, dtype=dtype)
        self.add_to(out, 0, shape[1])
        return out


class DenseTerm(GradTerm):
    """∂L/∂o given as a tensor (of the spikes' shape, or the same number of values)."""

    def __init__(self, grad: Tensor) -> None:
        self.grad = grad

    def add_to(self, out: Tensor, b0: int, b1: int) -> None:
        g = self.grad.reshape(out.shape[0], -1, *out.shape[2:])
        out.add_(g[:, b0:b1])

    def whole(self) -> Tensor:
        return self.grad


class Origin(ABC):
    """Where spikes came from: the graph tensor their gradient flows into, and how."""

    #: the tensor of the autograd graph that a consumer's Function takes as its input (its
    #: gradient is what :meth:`backward` returns); ``None`` when no gradient is needed
    input: Tensor | None
    #: the state the backward needs is gone (written over by a first backward): a new consumer
    #: is refused by :meth:`use`
    spent: bool = False

    @abstractmethod
    def backward(self, term: GradTerm) -> Tensor:
        """∂L/∂``input`` for the gradient ``term`` on the spikes (called in a backward)."""

    def use(self) -> None:  # noqa: B027 - optional hook
        """A consumer takes these spikes (called in its forward); an origin that may reuse its
        saved state for the gradient counts the consumers."""


class Spikes:
    """Spikes (or pooled spikes) of shape ``[T, B, ...]`` held as bytes.

    ``codes``: ``uint8``, value = code / ``divisor``; ``dtype``: the float dtype they stand for;
    ``origin``: the way back for their gradient (``None``: no gradient). Made by the neuron
    functions (:func:`stbp.functional.lif_with` with ``as_spikes=True``) and by pooling; read by synapses
    (:mod:`stbp.functional.synapse`), pooling and :class:`stbp.layers.Flatten`.
    """

    __slots__ = ("codes", "dtype", "divisor", "origin")

    def __init__(self, codes: Tensor, dtype: torch.dtype, *, divisor: int = 1,
                 origin: Origin | None = None) -> None:
        if codes.dtype != torch.uint8:
            raise TypeError(f"Spikes hold uint8 codes, got {codes.dtype}")
        if not dtype.is_floating_point:
            raise TypeError(f"Spikes stand for a float dtype, got {dtype}")
        self.codes, self.dtype, self.divisor, self.origin = codes, dtype, int(divisor), origin

    # shape, as a tensor has it -----------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dim(self) -> int:
        return self.codes.dim()

    def numel(self) -> int:
        return self.codes.numel()

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def requires_grad(self) -> bool:
        return self.origin is not None and (self.origin.input is not None or self.origin.spent)

    # values --------------------------------------------------------------------------------
    def detach(self) -> Tensor:
        """The values as a float tensor with no gradient (for monitors, plots, statistics)."""
        values = self.codes.to(self.dtype)
        return values if self.divisor == 1 else values.div_(self.divisor)

    def float(self) -> Tensor:
        """The values as an ordinary float tensor; its gradient reaches the origin (densely)."""
        if not (self.requires_grad and torch.is_grad_enabled()):
            return self.detach()
        self.origin.use()
        return _ToFloat.apply(self.origin.input, self)

    def reshape(self, *shape: int) -> Spikes:
        """The same spikes in another shape that keeps ``[T, B]`` in front (a flatten): the
        gradient terms of the consumers are laid out per sample, so the origin is unchanged."""
        codes = self.codes.reshape(*shape)
        if codes.shape[:2] != self.shape[:2]:
            raise ValueError(f"Spikes.reshape must keep [T, B] = {tuple(self.shape[:2])}, got "
                             f"{tuple(codes.shape)}")
        return Spikes(codes, self.dtype, divisor=self.divisor, origin=self.origin)

    def flatten(self, start_dim: int = 2) -> Spikes:
        if start_dim < 2:
            raise ValueError("Spikes.flatten keeps [T, B]: start_dim must be >= 2")
        return self.reshape(*self.shape[:start_dim], -1)

    def __repr__(self) -> str:
        div = "" if self.divisor == 1 else f", divisor={self.divisor}"
        return f"Spikes(shape={tuple(self.shape)}, dtype={self.dtype}{div})"


class _ToFloat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source: Tensor, spikes: Spikes):  # type: ignore[override]
        ctx.origin = spikes.origin
        return spikes.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.origin.backward(DenseTerm(grad)), None


def chunk_samples(batch: int, per_sample_bytes: int, budget: int) -> int:
    """How many samples of a ``per_sample_bytes`` gradient fit in ``budget`` bytes (>= 1)."""
    return max(1, min(batch, budget // max(1, per_sample_bytes)))


def samples(shape: torch.Size) -> tuple[int, int]:
    """(B, values per sample and step) of ``[T, B, ...]``."""
    return shape[1], math.prod(shape[2:])
