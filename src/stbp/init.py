"""The paper's weight initialisation (Sec. 3): U[−1, 1], then unit-norm incoming weights."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["paper_init_"]


@torch.no_grad()
def paper_init_(module: nn.Module, *, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every Linear/Conv2d in ``module`` the paper's way, in place.

    Each neuron's incoming weight vector (a row of a Linear's weight, or one output channel's
    ``[in, k, k]`` kernel) is drawn from U[−1, 1] and scaled to unit L2 norm; biases are zeroed.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            w = torch.rand(m.weight.shape, generator=generator, dtype=m.weight.dtype) * 2 - 1
            flat = w.reshape(w.shape[0], -1)
            flat /= flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
            m.weight.copy_(flat.reshape(m.weight.shape))
            if m.bias is not None:
                m.bias.zero_()
    return module
