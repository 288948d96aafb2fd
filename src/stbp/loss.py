"""Losses on the output layer's firing rate (paper Eq. 5, our E5) and the prediction rule."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stbp.errors import StbpError

__all__ = ["firing_rate", "rate_mse", "rate_cross_entropy", "predict", "LOSSES", "get_loss"]


def firing_rate(spikes: Tensor) -> Tensor:
    """(1/T) Σ_t o^{t,N}: mean over the leading time axis of ``[T, B, C]`` spikes."""
    if spikes.dim() < 2:
        raise StbpError(f"output spikes must have shape [T, B, ...], got {tuple(spikes.shape)}")
    return spikes.mean(dim=0)


def rate_mse(spikes: Tensor, target: Tensor) -> Tensor:
    """E5: L = 1/(2S) Σ_s ‖y_s − (1/T) Σ_t o_s^{t,N}‖² with y_s the one-hot label.

    ``target`` holds class indices ``[B]``; returns the mean over the batch (the 1/S).
    """
    rate = firing_rate(spikes)
    onehot = F.one_hot(target, rate.shape[-1]).to(rate.dtype)
    return 0.5 * ((onehot - rate) ** 2).sum(dim=-1).mean()


def rate_cross_entropy(spikes: Tensor, target: Tensor, *, scale: float = 10.0) -> Tensor:
    """Cross-entropy on the firing rate (an option, not the paper's loss): softmax(scale · rate)."""
    return F.cross_entropy(scale * firing_rate(spikes), target)


def predict(spikes: Tensor) -> Tensor:
    """Predicted class = argmax of the firing rate; ties go to the lowest class index."""
    rate = firing_rate(spikes)
    # torch.argmax documents no tie rule; make it explicit: first maximal index.
    is_max = rate == rate.max(dim=-1, keepdim=True).values
    idx = torch.arange(rate.shape[-1], device=rate.device).expand_as(rate)
    return torch.where(is_max, idx, rate.shape[-1]).min(dim=-1).values


LOSSES = {"mse": rate_mse, "cross_entropy": rate_cross_entropy}


def get_loss(name: str):
    if name not in LOSSES:
        raise StbpError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]
