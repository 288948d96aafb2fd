"""The paper's equations as small pure functions (the functional core of stbp).

- :mod:`~stbp.functional.lif` — the LIF neuron (E2–E4) and its STBP backward (E6–E7):
  :func:`lif`, :class:`LIFParams`, :func:`lif_reference`.
- :mod:`~stbp.functional.surrogate` — the approximated spike derivatives h1–h4 (+ extras).
- :mod:`~stbp.functional.spikes` — :class:`Spikes`, spikes held as bytes, and the gradient
  terms by which their consumers hand a gradient back.
- :mod:`~stbp.functional.synapse` — E1 (linear, conv2d) with compact saved state;
  :mod:`~stbp.functional.events` — the event-driven form for spikes held as bytes;
  :mod:`~stbp.functional.pool` — average pooling of spikes.
"""

from stbp.functional.lif import (
    RESETS,
    LIFParams,
    NeuronOrigin,
    lif,
    lif_reference,
    lif_with,
)
from stbp.functional.spikes import DenseTerm, GradTerm, Origin, Spikes
from stbp.functional.surrogate import (
    SURROGATES,
    ATan,
    FastSigmoid,
    Gaussian,
    Polynomial,
    Rectangular,
    Sigmoid,
    Surrogate,
    get_surrogate,
)

__all__ = [
    "lif", "lif_reference", "lif_with", "LIFParams", "NeuronOrigin", "RESETS",
    "Spikes", "Origin", "GradTerm", "DenseTerm",
    "Surrogate", "Rectangular", "Polynomial", "Sigmoid", "Gaussian", "ATan", "FastSigmoid",
    "SURROGATES", "get_surrogate",
]
