"""The LIF recurrence (E2–E4) and its STBP backward (E6–E7) in eager PyTorch: the reference
backend (``backend="torch"``), on any device and dtype, with any surrogate.

Forward: a handful of whole-tensor ops per step — ``u·f(o) + x`` rounded once (``addcmul``),
``u >= V_th`` in the tensor's dtype. Backward: h, f and f' evaluated for all steps at once,
leaving one fused multiply-add per step::

    ε^t = (δ^t + ε^{t+1} · u^t · f'(o^t)) · h(u^t − V_th) + ε^{t+1} · f(o^t)

``smooth=True`` (an analysis tool, not a neuron model) replaces the firing step by the
surrogate's primitive, whose derivative is h: the STBP backward is then the exact gradient,
which lets a finite-difference check verify the recursion.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["supported", "forward", "backward"]


def supported(current: Tensor, p) -> str | None:
    """The eager path runs everything (``None``: no reason it cannot)."""
    return None


def forward(current: Tensor, p, overwrite: bool, smooth: bool = False) -> tuple[Tensor, Tensor]:
    """(spikes, membrane u^t before reset), both shaped like ``current``.

    With ``overwrite`` the membrane is written over the current x (u^t replaces x^t once step
    t has read it), saving one ``[T, ...]`` buffer.
    """
    x = current.detach()
    spikes = torch.empty_like(x)
    membrane = x if overwrite and x.is_contiguous() else torch.empty_like(x)
    u = x[0]
    for t in range(x.shape[0]):
        if t:
            u = torch.addcmul(x[t], u, p.leak(spikes[t - 1]))
        membrane[t] = u
        if smooth:
            spikes[t] = p.surrogate.primitive(u - p.threshold)
        else:
            torch.ge(u, p.threshold, out=spikes[t])
    return spikes, membrane


def backward(eps: Tensor, p, grad_spikes: Tensor | None, grad_membrane: Tensor | None,
             columns: tuple[int, int] | None = None, spikes: Tensor | None = None) -> None:
    """Turn u^t in ``eps`` ``[T, N]`` into ε^t = ∂L/∂x^t for the neurons ``columns`` (in place).

    ``spikes``: the smooth spikes of a ``smooth`` forward (else recomputed as u ≥ V_th)."""
    lo, hi = (0, eps.shape[1]) if columns is None else columns
    membrane = eps[:, lo:hi]
    v = membrane - p.threshold
    h = p.surrogate.derivative(v)
    # direct term of ε^t: δ^t · h(u^t) (+ any gradient on the exposed membrane itself)
    out = grad_spikes * h if grad_spikes is not None else torch.zeros_like(membrane)
    if grad_membrane is not None:
        out = out + grad_membrane
    if p.temporal and membrane.shape[0] > 1:
        o = spikes[:, lo:hi] if spikes is not None else (v >= 0).to(membrane.dtype)
        # coefficient of ε^{t+1} in ε^t: f(o^t) + u^t · f'(o^t) · h(u^t)   (E6 into E7)
        carry = torch.addcmul(p.leak(o), membrane * p.leak_grad(o), h)
        for t in range(membrane.shape[0] - 2, -1, -1):
            out[t].addcmul_(out[t + 1], carry[t])
    membrane.copy_(out)
