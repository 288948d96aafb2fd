"""Spikes that carry a byte copy of themselves, for the next layer's event-driven synapses.

The fused LIF kernel (:mod:`stbp.functional.lif_numba`) writes each spike twice: into the float
tensor that autograd and the user see, and as one byte. The bytes ride along on the float
tensor; a synaptic layer that receives those spikes sums weight columns over them
(:mod:`stbp.functional.events`) and keeps them for its weight gradient, instead of scanning
and packing the floats again. The copy is trusted only while the float tensor is unchanged
(its in-place version counter is compared), and only for the very tensor it was attached to
(a view, a reshape or a copy does not carry it), so a modified input can never be summed from
stale bytes.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["attach", "lookup"]

_ATTR = "_stbp_spike_bytes"


def attach(spikes: Tensor, codes: Tensor) -> None:
    """Let ``spikes`` carry ``codes`` (``uint8``, same shape, value = spike)."""
    setattr(spikes, _ATTR, (codes, spikes._version))


def lookup(x: Tensor) -> Tensor | None:
    """The bytes attached to ``x``, if any and if ``x`` has not been modified since."""
    entry = getattr(x, _ATTR, None)
    if entry is None:
        return None
    codes, version = entry
    if version != x._version or codes.shape != x.shape:
        return None
    return codes
