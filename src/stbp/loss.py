"""Losses on the output layer's firing rate (paper Eq. 5, our E5) and the prediction rule."""

from __future__ import annotations

import functools

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


def _check_target(rate: Tensor, target: Tensor) -> None:
    if not isinstance(target, Tensor) or target.dtype not in (torch.int64, torch.int32, torch.int16,
                                                             torch.uint8, torch.int8):
        raise StbpError("targets must be an integer tensor of class indices [B]")
    if target.shape != rate.shape[:-1]:
        raise StbpError(
            f"targets of shape {tuple(target.shape)} do not match output spikes [T, B, C] of rate "
            f"shape {tuple(rate.shape)}; expected {tuple(rate.shape[:-1])}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= rate.shape[-1]):
        raise StbpError(
            f"targets must be class indices in [0, {rate.shape[-1]}), got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )


def rate_mse(spikes: Tensor, target: Tensor) -> Tensor:
    """E5: L = 1/(2S) Σ_s ‖y_s − (1/T) Σ_t o_s^{t,N}‖² with y_s the one-hot label.

    ``target`` holds class indices ``[B]``; returns the mean over the batch (the 1/S).
    """
    rate = firing_rate(spikes)
    _check_target(rate, target)
    onehot = F.one_hot(target.long(), rate.shape[-1]).to(rate.dtype)
    return 0.5 * ((onehot - rate) ** 2).sum(dim=-1).mean()


def rate_cross_entropy(spikes: Tensor, target: Tensor, *, scale: float = 10.0) -> Tensor:
    """Cross-entropy on the firing rate (an option, not the paper's loss): softmax(scale · rate)."""
    rate = firing_rate(spikes)
    _check_target(rate, target)
    return F.cross_entropy(scale * rate, target.long())


def predict(spikes: Tensor) -> Tensor:
    """Predicted class = argmax of the firing rate; ties go to the lowest class index."""
    rate = firing_rate(spikes)
    # torch.argmax documents no tie rule; make it explicit: first maximal index.
    is_max = rate == rate.max(dim=-1, keepdim=True).values
    idx = torch.arange(rate.shape[-1], device=rate.device).expand_as(rate)
    return torch.where(is_max, idx, rate.shape[-1]).min(dim=-1).values


LOSSES = {"mse": rate_mse, "cross_entropy": rate_cross_entropy}


def get_loss(name: str, **options):
    """The loss called ``name``, with keyword ``options`` bound (e.g. ``scale`` for cross_entropy)."""
    if name not in LOSSES:
        raise StbpError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return functools.partial(LOSSES[name], **options) if options else LOSSES[name]
