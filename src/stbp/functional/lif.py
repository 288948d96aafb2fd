"""The iterative LIF neuron of STBP and its spatio-temporal backward pass.

Forward (Wu et al. 2018, our E1–E4 in ``STBP.md``), for t = 1..T with u^0 = 0, o^0 = 0::

    u^t = u^{t-1} · f(o^{t-1}) + x^t          (E2; x^t = W o^{t,n-1} + b is the input current, E1)
    o^t = 1[u^t >= V_th]                       (E3)
    f(o) = τ · (1 − o)        reset="zero"    (E4', the authors' code; the default)
    f(o) = τ · exp(−o / τ)    reset="paper"   (E4)

Backward (E6–E7), with ε^t = ∂L/∂u^t, δ^t = ∂L/∂o^t from the layer above, h the approximated
derivative, run t = T..1::

    ε^t = (δ^t + ε^{t+1} · u^t · f'(o^t)) · h(u^t − V_th) + ε^{t+1} · f(o^t)

and ∂L/∂x^t = ε^t, so E8–E9 (weight and bias gradients) follow from the layer's own matmul or
conv. All T steps run inside one :class:`torch.autograd.Function`; h, f and f' are evaluated
for all steps at once, leaving one fused multiply-add per step in the recursion. With
``temporal=False`` (the paper's "SD only" ablation) the two ε^{t+1} terms vanish.

:func:`lif_reference` is the same neuron written per step with plain autograd; it is kept as the
reference that the fused function is tested against.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from stbp.errors import StbpError
from stbp.functional import lif_compiled, lif_numba, spike_bytes
from stbp.functional.surrogate import Surrogate, SurrogateLike, get_surrogate

__all__ = ["lif", "lif_reference", "LIFParams", "RESETS", "BACKENDS"]

RESETS = ("zero", "paper")
#: "auto": the fused numba CPU kernels where they apply (CPU, float32/64, a built-in surrogate),
#: the torch.compile path on a CUDA GPU, else the eager PyTorch path; "numba" insists on the
#: kernels; "torch" is the eager reference; "compile" runs the recurrence through torch.compile
#: (fused Triton kernels on CUDA, C++ on a CPU), falling back to the eager path where it cannot.
BACKENDS = ("auto", "numba", "torch", "compile")


@dataclass(frozen=True)
class LIFParams:
    """Validated neuron settings shared by the functional core and the modules."""

    decay: float
    threshold: float
    surrogate: Surrogate
    reset: str = "zero"
    temporal: bool = True
    backend: str = "auto"

    @classmethod
    def make(
        cls,
        *,
        decay: float,
        threshold: float,
        surrogate: SurrogateLike = "rectangular",
        width: float = 1.0,
        reset: str = "zero",
        temporal: bool = True,
        backend: str = "auto",
    ) -> LIFParams:
        try:
            decay = float(decay)
            threshold = float(threshold)
        except (TypeError, ValueError) as err:
            raise StbpError(f"decay and threshold must be numbers: {err}") from None
        if not math.isfinite(decay) or not 0 < decay <= 1:
            raise StbpError(f"decay must be in (0, 1], got {decay!r}")
        if not math.isfinite(threshold) or threshold <= 0:
            raise StbpError(f"threshold must be a finite number > 0, got {threshold!r}")
        if reset not in RESETS:
            raise StbpError(f"unknown reset {reset!r}; choose one of: {', '.join(RESETS)}")
        if not isinstance(temporal, bool):
            raise StbpError(f"temporal must be true or false, got {temporal!r}")
        if backend not in BACKENDS:
            raise StbpError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        return cls(decay, threshold, get_surrogate(surrogate, width), reset, temporal, backend)

    # f(o) and f'(o) of E4 / E4' -------------------------------------------------------------
    def leak(self, spikes: Tensor) -> Tensor:
        """f(o): the factor that carries u^t into u^{t+1} (decay and reset)."""
        if self.reset == "zero":
            return self.decay * (1 - spikes)
        return self.decay * torch.exp(-spikes / self.decay)

    def leak_grad(self, spikes: Tensor) -> Tensor:
        """f'(o) = ∂f/∂o."""
        if self.reset == "zero":
            return torch.full_like(spikes, -self.decay)
        return -torch.exp(-spikes / self.decay)


def _check_current(current: Tensor) -> None:
    if not isinstance(current, Tensor):
        raise StbpError(f"current must be a torch.Tensor, got {type(current).__name__}")
    if not current.is_floating_point():
        raise StbpError(f"current must be a floating tensor, got dtype {current.dtype}")
    if current.dim() < 2:
        raise StbpError(
            f"current must have shape [T, ...] with at least one dimension after T, got shape "
            f"{tuple(current.shape)}"
        )
    if current.shape[0] == 0:
        raise StbpError("current has T = 0 time steps; T must be >= 1")


def _forward(x: Tensor, p: LIFParams, smooth: bool, overwrite: bool) -> tuple[Tensor, Tensor]:
    """Run the recurrence; return (spikes, membrane u^t before reset).

    With ``overwrite`` the membrane is written over the current x (u^t replaces x^t once step t
    has read it), saving one ``[T, ...]`` buffer.
    """
    spikes = torch.empty_like(x)
    membrane = x.detach() if overwrite else torch.empty_like(x)
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


def _use_compiled(current: Tensor, p: LIFParams, smooth: bool) -> bool:
    """backend "compile", or "auto" on a GPU: the torch.compile path where it works."""
    on_gpu = current.device.type == "cuda"
    if smooth or not (p.backend == "compile" or (p.backend == "auto" and on_gpu)):
        return False
    why = lif_compiled.available(current, p.surrogate)
    if why is not None and p.backend == "compile":
        _warn_once(f"stbp: backend 'compile' falls back to the eager path: {why}")
    return why is None


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _use_numba(current: Tensor, p: LIFParams, smooth: bool) -> bool:
    if p.backend in ("torch", "compile"):
        return False
    why = "smooth spikes are an eager-path analysis tool" if smooth else lif_numba.supported(
        current, p.surrogate)
    if why is not None and p.backend == "numba":
        raise StbpError(f"backend 'numba' cannot run this case: {why}; use backend 'auto'")
    return why is None


class _LIFFunction(torch.autograd.Function):
    """All T steps of E2–E4 forward; E6–E7 written out as the backward."""

    @staticmethod
    def forward(ctx, current: Tensor, p: LIFParams, smooth: bool,  # type: ignore[override]
                overwrite: bool, release: bool, handoff: spike_bytes.Handoff, as_codes: bool):
        # returns (spikes, membrane, link); with ``as_codes`` on the fused path the spikes come
        # as their bytes alone (uint8), for a next layer that reads nothing else
        compiled = _use_compiled(current, p, smooth)
        fused = not compiled and _use_numba(current, p, smooth)
        overwrite = overwrite and current.is_contiguous() and not compiled
        # the backward may write ε over the saved membrane when nobody else can read it
        ctx.release = release and overwrite and fused
        ctx.released = False
        link = current.new_zeros(())  # routes a next layer's factored gradient here
        ctx.handoff = None
        if fused:
            spikes, membrane, codes = lif_numba.forward(current, p, overwrite=overwrite,
                                                        floats=not as_codes)
            ctx.handoff = handoff
            if spikes is None:
                spikes = codes
                ctx.mark_non_differentiable(codes)
            else:  # for a next layer that sums events, and hands ∂L/∂o back factored
                spike_bytes.attach(spikes, codes, handoff, link)
        elif compiled:
            spikes, membrane = lif_compiled.forward(current, p)
        else:
            spikes, membrane = _forward(current, p, smooth, overwrite)
        ctx.p = p
        ctx.smooth = smooth
        ctx.fused = fused
        ctx.compiled = compiled
        ctx.save_for_backward(membrane, spikes if smooth else None)
        ctx.set_materialize_grads(False)
        return spikes, membrane, link

    @staticmethod
    def backward(ctx, grad_spikes: Tensor | None, grad_membrane: Tensor | None,  # type: ignore[override]
                 grad_link: Tensor | None):
        membrane, saved_spikes = ctx.saved_tensors
        p: LIFParams = ctx.p
        # the factored terms next layers left this pass (grad_link counts them)
        terms = ([] if grad_link is None or ctx.handoff is None
                 else ctx.handoff.take(round(float(grad_link))))
        if grad_spikes is None and grad_membrane is None and not terms:
            return None, None, None, None, None, None, None
        if ctx.released:
            raise StbpError(
                "backward through an stbp layer a second time: its saved membrane potentials "
                "were released by the first backward (to save memory); to differentiate twice, "
                "build the layers with backend='torch'"
            )
        if ctx.fused:
            ctx.released = ctx.release
            factored = None
            for term in terms:  # one factored term goes to the kernel, the rest made densely
                if factored is None and term[0] != "dense":
                    factored = term
                    continue
                dense = spike_bytes.dense(term, membrane.shape)
                grad_spikes = dense if grad_spikes is None else grad_spikes + dense
            eps = lif_numba.backward(membrane, grad_spikes, grad_membrane, p,
                                     in_place=ctx.release, factored=factored)
            return eps, None, None, None, None, None, None
        if ctx.compiled:
            eps = lif_compiled.backward(membrane, grad_spikes, grad_membrane, p)
            return eps, None, None, None, None, None, None
        v = membrane - p.threshold
        h = p.surrogate.derivative(v)
        # direct term of ε^t: δ^t · h(u^t) (+ any gradient on the exposed membrane itself)
        eps = grad_spikes * h if grad_spikes is not None else torch.zeros_like(membrane)
        if grad_membrane is not None:
            eps = eps + grad_membrane
        if p.temporal and membrane.shape[0] > 1:
            spikes = saved_spikes if ctx.smooth else (v >= 0).to(membrane.dtype)
            # coefficient of ε^{t+1} in ε^t: f(o^t) + u^t · f'(o^t) · h(u^t)   (E6 into E7)
            carry = torch.addcmul(p.leak(spikes), membrane * p.leak_grad(spikes), h)
            for t in range(membrane.shape[0] - 2, -1, -1):
                eps[t].addcmul_(eps[t + 1], carry[t])
        return eps, None, None, None, None, None, None


def lif(
    current: Tensor,
    *,
    decay: float,
    threshold: float,
    surrogate: SurrogateLike = "rectangular",
    width: float = 1.0,
    reset: str = "zero",
    temporal: bool = True,
    return_membrane: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Spikes of a layer of iterative LIF neurons driven by ``current`` (E2–E4), trained by STBP.

    Args:
        current: floating tensor ``[T, ...]`` — the input current x^t + b of E1 for every step.
        decay: τ of E4/E4', in (0, 1] (paper: 0.1 for MNIST, 0.2 for N-MNIST).
        threshold: V_th of E3, > 0.
        surrogate: approximated derivative — "rectangular", "polynomial", "sigmoid", "gaussian"
            (h1–h4), "atan", "fast_sigmoid", a :class:`~stbp.functional.Surrogate` or a callable.
        width: the paper's ``a`` for a named surrogate.
        reset: "zero" (E4', u ← τ·u·(1−o) + x) or "paper" (E4, u ← u·τ·exp(−o/τ) + x).
        temporal: False drops the temporal-domain error path (the paper's "SD only" ablation).
        return_membrane: also return the membrane potentials u^t (before reset).
        backend: "auto" (the fused numba CPU kernels where they apply, else eager PyTorch),
            "numba" (insist on the kernels), "torch" (the eager path) or "compile"
            (torch.compile: fused Triton kernels on a GPU, else eager where it cannot
            compile). The spikes agree (on "compile", except where u^t lies within float
            rounding of V_th); gradients agree to float rounding.

    Returns:
        Spikes o^t (0/1) with the shape and dtype of ``current``; with ``return_membrane``, the
        pair ``(spikes, membrane)``. Gradients flow to ``current`` through E6–E7.
    """
    p = LIFParams.make(
        decay=decay, threshold=threshold, surrogate=surrogate, width=width, reset=reset,
        temporal=temporal, backend=backend,
    )
    return lif_with(current, p, return_membrane=return_membrane)


def lif_with(
    current: Tensor,
    p: LIFParams,
    *,
    return_membrane: bool = False,
    smooth: bool = False,
    overwrite: bool = False,
    release: bool = False,
    as_codes: bool = False,
) -> Tensor | spike_bytes.Codes | tuple[Tensor | spike_bytes.Codes, Tensor]:
    """:func:`lif` with already-validated :class:`LIFParams` (what the modules call).

    ``smooth=True`` replaces the firing step by the surrogate's primitive (a smooth step whose
    derivative is h): then the STBP backward is the exact gradient, which lets a
    finite-difference check verify the recursion. It is an analysis tool, not a neuron model.

    ``overwrite=True`` lets the membrane potentials (which the backward keeps) take the place of
    ``current`` in memory: for a caller whose current is a temporary nobody else reads, such as
    the output of a layer's matmul; ``current`` then holds u^t afterwards. ``release=True``
    (with ``overwrite``, on the fused path) also lets the backward write ∂L/∂x over those saved
    potentials, so a second backward through the same graph raises an error.

    ``as_codes=True`` returns the spikes as :class:`~stbp.functional.spike_bytes.Codes` (their
    bytes alone, no float tensor) where the fused kernels run, else as floats: for a caller
    whose next layer reads the bytes (:class:`stbp.models.SpikingNet` between its layers).
    """
    _check_current(current)
    handoff = spike_bytes.Handoff()
    spikes, membrane, link = _LIFFunction.apply(current, p, smooth, overwrite,
                                                release and not return_membrane, handoff,
                                                as_codes)
    if spikes.dtype == torch.uint8:
        spikes = spike_bytes.Codes(spikes, membrane.dtype, handoff, link)
    return (spikes, membrane) if return_membrane else spikes


class _SpikeFunction(torch.autograd.Function):
    """o = 1[v >= 0] forward; h(v) backward (one step, for the reference)."""

    @staticmethod
    def forward(ctx, v: Tensor, surrogate: Surrogate):  # type: ignore[override]
        ctx.save_for_backward(v)
        ctx.surrogate = surrogate
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(v), None


def lif_reference(
    current: Tensor,
    *,
    decay: float,
    threshold: float,
    surrogate: SurrogateLike = "rectangular",
    width: float = 1.0,
    reset: str = "zero",
    temporal: bool = True,
    return_membrane: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-step plain-autograd version of :func:`lif` (same arguments, same results).

    Autograd through this graph is exactly E6–E9 because the spike's backward returns h(u) and
    f(o) stays in the graph; with ``temporal=False`` u^t and o^t enter step t+1 detached.
    """
    p = LIFParams.make(
        decay=decay, threshold=threshold, surrogate=surrogate, width=width, reset=reset,
        temporal=temporal,
    )
    u = torch.zeros_like(current[0])
    o = torch.zeros_like(current[0])
    spikes, membranes = [], []
    for t in range(current.shape[0]):
        if p.temporal:
            u = u * p.leak(o) + current[t]
        else:
            u = u.detach() * p.leak(o.detach()) + current[t]
        o = _SpikeFunction.apply(u - p.threshold, p.surrogate)
        spikes.append(o)
        membranes.append(u)
    out = torch.stack(spikes)
    return (out, torch.stack(membranes)) if return_membrane else out
