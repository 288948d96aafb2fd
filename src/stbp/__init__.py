"""stbp — spiking neural networks trained with spatio-temporal backpropagation.

Wu, Deng, Li, Zhu, Shi (2018), "Spatio-Temporal Backpropagation for Training High-Performance
Spiking Neural Networks", Frontiers in Neuroscience 12:331.
"""

from stbp import encoding, functional, layers, loss, models
from stbp.errors import StbpError
from stbp.functional import lif

__version__ = "0.1.0"

__all__ = ["StbpError", "encoding", "functional", "layers", "lif", "loss", "models", "__version__"]
