"""Spikes that carry a byte copy of themselves, for the next layer's event-driven synapses.

The fused LIF kernel (:mod:`stbp.functional.lif_numba`) writes each spike twice: into the float
tensor that autograd and the user see, and as one byte. The bytes ride along on the float
tensor; a synaptic layer that receives those spikes sums weight columns over them
(:mod:`stbp.functional.events`) and keeps them for its weight gradient, instead of scanning
and packing the floats again. The copy is trusted only while the float tensor is unchanged
(its in-place version counter is compared), and only for the very tensor it was attached to
(a view, a reshape or a copy does not carry it), so a modified input can never be summed from
stale bytes. (Writes that bypass the version counter — through ``.data`` or a NumPy view —
are not seen; modify spikes through ordinary tensor operations.) The map from tensor to
bytes is weak and kept outside the tensor, so saving spikes with ``torch.save`` stores the
floats alone.

With the bytes comes a :class:`Handoff`: the way back for the spikes' gradient. When the
spikes no longer exist at backward time (inside a model, where nothing holds a hidden layer's
output), such a layer's ∂L/∂o = Wᵀ ε (E8's error passed down) is not made as a dense
``[T, B, neurons]`` tensor;
the layer leaves the factors (ε, W) with the handoff, and the LIF's backward kernel forms the
product one sample row at a time while it runs the recursion (E6–E7). To route the call,
the layer's autograd input is the handoff's ``link``, a scalar output of the LIF node: each
layer that left a term returns 1 as the link's gradient, so the LIF node receives the number
of terms this backward pass left (the newest ones), whatever partial passes came before.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["Handoff", "Codes", "attach", "lookup", "scaled", "carry", "handoff", "dense"]

# tensor → entry, held weakly (not as an attribute, so that torch.save of spikes stays plain)
_ENTRIES: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


class Handoff:
    """Factored gradient terms that next layers leave for the LIF node whose spikes they
    read: ``("linear", ε [rows, K], W [K, F])`` from event-driven synapses (∂L/∂o = ε W),
    ``("pool", g, k)`` from a k×k average pooling (∂L/∂o = g spread over each k×k window,
    / k²) and ``("dense", g)`` (∂L/∂o = g, from spikes made float again: :meth:`Codes.float`).

    The link rides on the spikes, not here: the LIF node holds its handoff, and a handoff
    that held the link — whose grad_fn is that node — would make a reference cycle that keeps
    the whole graph alive until the garbage collector runs.
    """

    __slots__ = ("terms",)

    def __init__(self) -> None:
        self.terms: list[tuple] = []

    def take(self, count: int) -> list[tuple]:
        """The newest ``count`` terms (this backward pass's); the list is emptied."""
        terms = self.terms[len(self.terms) - count:] if count > 0 else []
        self.terms = []
        return terms


class Codes:
    """A layer's spikes held as bytes only — no float tensor made.

    :class:`stbp.models.SpikingNet` passes a hidden layer's spikes this way to the next stbp
    layer (an event-driven Linear, an average pooling) when nothing else can read them (no
    hooks, no recording): the ``[T, B, neurons]`` float32 spikes, four times the bytes, are
    then never made, and the peak memory of a training step drops by that much. ``codes``:
    ``uint8`` 0/1 of the shape the spikes have; ``dtype``: the float dtype they stand for; the
    gradient on them goes back through ``handoff`` and ``link`` (as for :func:`attach`).
    """

    __slots__ = ("codes", "dtype", "handoff", "link")

    def __init__(self, codes: Tensor, dtype: torch.dtype, handoff: Handoff, link: Tensor) -> None:
        self.codes, self.dtype, self.handoff, self.link = codes, dtype, handoff, link

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dim(self) -> int:
        return self.codes.dim()

    def float(self) -> Tensor:
        """The spikes as an ordinary float tensor (carrying their bytes), for a consumer that
        needs one; its gradient reaches the LIF node as a ``("dense", g)`` term."""
        spikes = _Float.apply(self.link, self.codes, self.dtype, self.handoff)
        attach(spikes, self.codes)
        return spikes

    def __repr__(self) -> str:
        return f"Codes(shape={tuple(self.shape)}, dtype={self.dtype})"


class _Float(torch.autograd.Function):
    @staticmethod
    def forward(ctx, link: Tensor, codes: Tensor, dtype: torch.dtype,  # type: ignore[override]
                handoff: Handoff):
        ctx.handoff, ctx.link_dtype = handoff, link.dtype
        return codes.to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        ctx.handoff.terms.append(("dense", grad))
        return torch.ones((), dtype=ctx.link_dtype), None, None, None


def attach(spikes: Tensor, codes: Tensor, handoff: Handoff | None = None,
           link: Tensor | None = None, scale: float = 1.0) -> None:
    """Let ``spikes`` carry ``codes`` (``uint8``, same shape, value = code × ``scale``: spikes,
    or the window sums of pooled spikes with ``scale`` = 1/k²) and, when the LIF node can take
    a factored gradient, its ``handoff`` and ``link``. Inference tensors (no version counter
    to check) carry nothing."""
    if spikes.is_inference():
        return
    _ENTRIES[spikes] = (codes, spikes._version, handoff, link, scale)


def _entry(x: Tensor):
    if x.is_inference():
        return None
    entry = _ENTRIES.get(x)
    if entry is None:
        return None
    codes, version = entry[:2]
    if version != x._version or codes.shape != x.shape:
        return None
    return entry


def lookup(x: Tensor) -> Tensor | None:
    """The bytes attached to spikes ``x`` (values 0/1), if any and if ``x`` has not been
    modified since."""
    entry = _entry(x)
    return None if entry is None or entry[4] != 1.0 else entry[0]


def scaled(x: Tensor) -> tuple[Tensor, float] | None:
    """The bytes attached to ``x`` and their scale (value = code × scale: spikes, or pooled
    spikes), if any and if ``x`` has not been modified since."""
    entry = _entry(x)
    return None if entry is None else (entry[0], entry[4])


def carry(y: Tensor, x: Tensor, reshape) -> Tensor:
    """Let ``y`` — a reshaped view of ``x`` — carry ``x``'s bytes reshaped alike (no
    handoff: a gradient through the view goes the usual way)."""
    found = scaled(x)
    if found is not None and y is not x:
        attach(y, reshape(found[0]), scale=found[1])
    return y


def handoff(x: Tensor) -> tuple[Handoff, Tensor] | None:
    """The handoff and link of the LIF node that made ``x``, if any and if ``x`` is
    unmodified."""
    entry = _entry(x)
    return None if entry is None or entry[2] is None else (entry[2], entry[3])


def dense(term: tuple, shape: torch.Size) -> Tensor:
    """A handoff term made as the dense ``shape``-d gradient on the spikes."""
    if term[0] == "dense":
        return term[1].reshape(shape)
    if term[0] == "linear":
        _, g, w = term
        return (g @ w).reshape(shape)
    from stbp.functional.pool import expand

    _, g, k = term
    return expand(g, shape, k)
