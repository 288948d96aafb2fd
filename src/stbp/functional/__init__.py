"""The paper's equations as small pure functions (the functional core of stbp)."""

from stbp.functional.lif import BACKENDS, RESETS, LIFParams, lif, lif_reference, lif_with
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
    "lif", "lif_reference", "lif_with", "LIFParams", "RESETS", "BACKENDS",
    "Surrogate", "Rectangular", "Polynomial", "Sigmoid", "Gaussian", "ATan", "FastSigmoid",
    "SURROGATES", "get_surrogate",
]
