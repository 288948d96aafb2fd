"""The LIF recurrence (E2–E4) and its STBP backward (E6–E7) through ``torch.compile``.

This is the GPU path: on CUDA, TorchInductor turns the unrolled T-step recurrence into fused
Triton kernels (one pass over the neurons instead of several small kernels per step); on a CPU
it generates C++ (a compiler must be present at run time — nothing is compiled at install
time). The code below is the same arithmetic as the eager reference in
:mod:`stbp.kernels.lif_torch` — ``u·f(o) + x`` rounded once, ``u >= V_th`` in the tensor's
dtype — so the spikes are the same and the gradients agree to float rounding (tested on the CPU
here and on CUDA whenever a GPU is present).

Compilation happens on first use for each (T, dtype, device, neuron settings); compiled
functions are cached by torch. Where compilation is impossible (no compiler, no Triton, an
unsupported surrogate callable), :func:`supported` says why: ``backend="auto"`` then keeps the
eager path, and ``backend="compile"`` falls back to it with a warning.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from stbp.kernels import lif_torch
from stbp.kernels.runtime import warn_once

__all__ = ["supported", "forward", "backward"]


def _forward_impl(x: Tensor, decay: float, threshold: float, zero_reset: bool):
    spikes, membrane = [], []
    u = x[0]
    o = None
    for t in range(x.shape[0]):
        if t:
            f = decay * (1 - o) if zero_reset else decay * torch.exp(-o / decay)
            u = torch.addcmul(x[t], u, f)
        o = (u >= threshold).to(x.dtype)
        spikes.append(o)
        membrane.append(u)
    return torch.stack(spikes), torch.stack(membrane)


def _backward_impl(membrane: Tensor, grad_spikes: Tensor | None, grad_membrane: Tensor | None,
                   surrogate: Any, decay: float, threshold: float, zero_reset: bool,
                   temporal: bool) -> Tensor:
    v = membrane - threshold
    h = surrogate.derivative(v)
    eps = grad_spikes * h if grad_spikes is not None else torch.zeros_like(membrane)
    if grad_membrane is not None:
        eps = eps + grad_membrane
    steps = membrane.shape[0]
    if not temporal or steps == 1:
        return eps
    o = (v >= 0).to(membrane.dtype)
    if zero_reset:
        f, f_grad = decay * (1 - o), torch.full_like(o, -decay)
    else:
        f, f_grad = decay * torch.exp(-o / decay), -torch.exp(-o / decay)
    carry = torch.addcmul(f, membrane * f_grad, h)  # ε^t += ε^{t+1} · (f + u·f'·h)
    out = [eps[steps - 1]]
    for t in range(steps - 2, -1, -1):
        out.append(torch.addcmul(eps[t], out[-1], carry[t]))
    return torch.stack(out[::-1])


@functools.cache
def _compiled(name: str):
    fn = {"forward": _forward_impl, "backward": _backward_impl}[name]
    # static shapes and settings, each guarded (dynamic=None made a float setting symbolic and,
    # on torch 2.13, reused one setting's backward for another: wrong gradients); past dynamo's
    # recompile limit :func:`_run` falls back to the eager code
    return torch.compile(fn, fullgraph=True, dynamic=False)


@functools.cache
def _probe(device_type: str) -> str | None:
    """Compile and run a tiny case once per device type; ``None`` if that works."""
    try:
        x = torch.randn(3, 4, device=device_type)
        s, m = _compiled("forward")(x, 0.5, 0.1, True)
        if not torch.equal(s, (m >= 0.1).to(x.dtype)):
            return "the compiled forward gave wrong spikes"
    except Exception as err:  # noqa: BLE001 - any compiler/toolchain failure means "not here"
        return f"torch.compile failed on {device_type} ({err.__class__.__name__}: {str(err)[:160]})"
    return None


def supported(current: Tensor, p: Any) -> str | None:
    """``None`` when the compiled path can run this case, else the reason it cannot."""
    if current.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"dtype {current.dtype}"
    if not getattr(p.surrogate, "compilable", False):
        return f"surrogate {p.surrogate!r} is not one torch.compile is known to take"
    return _probe(current.device.type)


def _run(name: str, *args: Any):
    """The compiled function, or ``None`` (after a warning, once) where compiling this case
    fails — a recompile limit, a toolchain error — so that the caller runs the eager code."""
    try:
        return _compiled(name)(*args)
    except Exception as err:  # noqa: BLE001 - any compiler failure: the eager path instead
        warn_once(f"stbp: torch.compile failed for a case ({type(err).__name__}: "
                   f"{str(err)[:200]}); running the eager path for it")
        return None


def forward(current: Tensor, p: Any, overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """Spikes and membrane potentials of all T steps (E2–E4'); ``overwrite`` is not used."""
    x = current.detach()
    flat = x.reshape(x.shape[0], -1)  # [T, neurons]: one compiled shape per T, any batch
    out = _run("forward", flat, p.decay, p.threshold, p.reset == "zero")
    if out is None:
        return lif_torch.forward(current, p, overwrite)
    spikes, membrane = out
    return spikes.view(x.shape), membrane.view(x.shape)


def backward(eps: Tensor, p: Any, grad_spikes: Tensor | None, grad_membrane: Tensor | None,
             columns: tuple[int, int] | None = None) -> None:
    """Turn u^t in ``eps[:, lo:hi]`` into ε = ∂L/∂x for all T steps (E6–E7), in place."""
    lo, hi = (0, eps.shape[1]) if columns is None else columns
    out = _run("backward", eps[:, lo:hi], grad_spikes, grad_membrane, p.surrogate, p.decay,
               p.threshold, p.reset == "zero", p.temporal)
    if out is None:
        lif_torch.backward(eps, p, grad_spikes, grad_membrane, columns)
    else:
        eps[:, lo:hi] = out
