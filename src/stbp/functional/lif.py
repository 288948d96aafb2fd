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
conv. With ``temporal=False`` (the paper's "SD only" ablation) the two ε^{t+1} terms vanish.

The neuron runs on a backend (:mod:`stbp.kernels.registry`): the fused numba kernels on a CPU,
``torch.compile`` on a GPU, the eager PyTorch code anywhere. A backend that makes its spikes
as bytes hands them on as :class:`~stbp.functional.spikes.Spikes` whose origin
(:class:`NeuronOrigin`) runs E6–E7 for whatever gradient a consumer hands back; the others
return float spikes through one autograd Function for all T steps.

:func:`lif_reference` is the same neuron written per step with plain autograd; it is kept as the
reference that the backends are tested against.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields

import torch
from torch import Tensor

from stbp import kernels
from stbp.errors import StbpError
from stbp.functional.spikes import GradTerm, Origin, Spikes, chunk_samples, samples
from stbp.functional.surrogate import Surrogate, get_surrogate
from stbp.kernels import lif_torch
from stbp.kernels.runtime import TUNING, Tuning

__all__ = ["lif", "lif_with", "lif_reference", "LIFParams", "NeuronOrigin", "RESETS"]

RESETS = ("zero", "paper")


@dataclass(frozen=True)
class LIFParams:
    """The neuron's settings — defaults here and nowhere else, validated once, on construction.

    Args:
        decay: τ of E4/E4', in (0, 1] (paper: 0.1 for MNIST, 0.2 for N-MNIST).
        threshold: V_th of E3, > 0.
        surrogate: approximated derivative — "rectangular", "polynomial", "sigmoid", "gaussian"
            (h1–h4), "atan", "fast_sigmoid", a :class:`~stbp.functional.Surrogate` or a callable
            (held as a :class:`~stbp.functional.Surrogate` after construction).
        width: the paper's ``a`` for a named surrogate (a surrogate object brings its own).
        reset: "zero" (E4', u ← τ·u·(1−o) + x) or "paper" (E4, u ← u·τ·exp(−o/τ) + x).
        temporal: False drops the temporal-domain error path (the paper's "SD only" ablation).
        backend: "auto" or a registered backend (:func:`stbp.kernels.names`): "numba" (the
            fused CPU kernels), "compile" (torch.compile, the GPU path), "torch" (eager).
    """

    decay: float
    threshold: float
    surrogate: Surrogate = "rectangular"  # type: ignore[assignment]  # resolved on construction
    width: float = 1.0
    reset: str = "zero"
    temporal: bool = True
    backend: str = "auto"

    def __post_init__(self) -> None:
        try:
            decay, threshold = float(self.decay), float(self.threshold)
        except (TypeError, ValueError) as err:
            raise StbpError(f"decay and threshold must be numbers: {err}") from None
        if not math.isfinite(decay) or not 0 < decay <= 1:
            raise StbpError(f"decay must be in (0, 1], got {self.decay!r}")
        if not math.isfinite(threshold) or threshold <= 0:
            raise StbpError(f"threshold must be a finite number > 0, got {self.threshold!r}")
        if self.reset not in RESETS:
            raise StbpError(f"unknown reset {self.reset!r}; choose one of: {', '.join(RESETS)}")
        if not isinstance(self.temporal, bool):
            raise StbpError(f"temporal must be true or false, got {self.temporal!r}")
        if self.backend not in kernels.names():
            raise StbpError(f"unknown backend {self.backend!r}; choose one of: "
                            f"{', '.join(kernels.names())}")
        surrogate = get_surrogate(self.surrogate, self.width)
        object.__setattr__(self, "decay", decay)
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "surrogate", surrogate)
        object.__setattr__(self, "width", surrogate.width)

    @classmethod
    def defaults(cls) -> dict:
        """The settings that have a default, with it (``decay`` and ``threshold`` have none)."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def of(cls, params: LIFParams | None = None, /, **settings) -> LIFParams:
        """``params`` as given, or a new one from keyword ``settings`` (not both)."""
        if params is None:
            names = [f.name for f in fields(cls)]
            unknown = sorted(set(settings) - set(names))
            if unknown:
                raise StbpError(f"unknown neuron setting(s) {', '.join(unknown)}; the neuron "
                                f"takes {', '.join(names)}")
            missing = [k for k in ("decay", "threshold") if k not in settings]
            if missing:
                raise StbpError(f"the neuron needs the setting(s) {', '.join(missing)}, e.g. "
                                f"decay=0.1, threshold=0.5 as in the paper's MNIST networks")
            return cls(**settings)
        if not isinstance(params, LIFParams):
            raise StbpError(f"neuron parameters must be a LIFParams, got {type(params).__name__}")
        if settings:
            raise StbpError(f"give the neuron either LIFParams or settings, not both "
                            f"(got {', '.join(sorted(settings))} besides)")
        return params

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


_SECOND_BACKWARD = (
    "backward through an stbp layer a second time (or its spikes used again after a "
    "backward): its saved membrane potentials were released by the first backward (to save "
    "memory); to differentiate twice, call stbp.functional.lif itself, or build the layers "
    "with backend='torch'"
)


class NeuronOrigin(Origin):
    """The way back through a layer of neurons whose spikes a backend made as bytes.

    Holds the membrane potentials u^t ``[T, B, ...]`` (the only state E6–E7 need; the spikes
    are u ≥ V_th again) and runs the backend's backward for the gradient a consumer hands back
    — dense, or made a few samples at a time from the consumer's factored term
    (:meth:`~stbp.functional.spikes.GradTerm.add_to`), so that the gradient on the spikes is
    never made whole. ``reusable``: the membrane lives in a temporary nobody else reads (a
    layer's current), so the backward of its only consumer writes ε over it; a second
    backward through the same graph is then an error.
    """

    def __init__(self, current: Tensor, membrane: Tensor, params: LIFParams,
                 backend: kernels.NeuronBackend, *, reusable: bool, tuning: Tuning = TUNING):
        self.input = current
        self.membrane, self.params, self.backend = membrane, params, backend
        self.reusable, self.tuning = reusable, tuning
        self.uses = 0
        self.spent = False

    def use(self) -> None:
        if self.spent:
            raise StbpError(_SECOND_BACKWARD)
        self.uses += 1

    def backward(self, term: GradTerm | None, grad_membrane: Tensor | None = None) -> Tensor:
        if self.spent:
            raise StbpError(_SECOND_BACKWARD)
        shape = self.membrane.shape
        steps = shape[0]
        flat = self.membrane.reshape(steps, -1)
        in_place = self.reusable and self.uses <= 1
        eps = flat if in_place else flat.clone()  # u^t, turned into ε^t by the backend
        if in_place:  # the returned gradient is the only owner of that memory from now on
            self.spent, self.membrane, self.input = True, None, None
        run = self.backend.backward
        held = None if term is None else term.whole()
        if term is None or held is not None or grad_membrane is not None:
            gs = None if term is None else term.dense(shape, eps.dtype).reshape(steps, -1)
            gm = None if grad_membrane is None else grad_membrane.reshape(steps, -1)
            run(eps, self.params, gs, gm, None)
            return eps.view(shape)
        batch, per = samples(shape)
        step = chunk_samples(batch, steps * per * eps.element_size(),
                             self.tuning.neuron_chunk_bytes)
        buf = torch.empty(steps * step * per, dtype=eps.dtype, device=eps.device)
        for b0 in range(0, batch, step):
            b1 = min(batch, b0 + step)
            part = buf[:steps * (b1 - b0) * per].view(steps, b1 - b0, *shape[2:])
            term.write_to(part, b0, b1)
            run(eps, self.params, part.view(steps, -1), None, (b0 * per, b1 * per))
        return eps.view(shape)


class _Membrane(torch.autograd.Function):
    """The membrane potentials of a :class:`NeuronOrigin` as a differentiable tensor (a copy)."""

    @staticmethod
    def forward(ctx, source: Tensor, origin: NeuronOrigin):  # type: ignore[override]
        ctx.origin = origin
        return origin.membrane.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.origin.backward(None, grad_membrane=grad), None


class _FloatLIF(torch.autograd.Function):
    """All T steps of E2–E4 on a float backend; E6–E7 as its backward."""

    @staticmethod
    def forward(ctx, current: Tensor, p: LIFParams,  # type: ignore[override]
                backend: kernels.NeuronBackend, overwrite: bool, smooth: bool):
        if smooth:
            spikes, membrane = lif_torch.forward(current, p, overwrite, smooth=True)
        else:
            spikes, membrane = backend.forward(current, p, overwrite)
        ctx.p, ctx.backend, ctx.smooth = p, backend, smooth
        ctx.save_for_backward(membrane, spikes if smooth else None)
        ctx.set_materialize_grads(False)
        return spikes, membrane

    @staticmethod
    def backward(ctx, grad_spikes: Tensor | None, grad_membrane: Tensor | None):  # type: ignore[override]
        membrane, saved_spikes = ctx.saved_tensors
        if grad_spikes is None and grad_membrane is None:
            return None, None, None, None, None
        steps = membrane.shape[0]

        def flat(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.reshape(steps, -1)

        eps = membrane.reshape(steps, -1).clone()
        if ctx.smooth:
            lif_torch.backward(eps, ctx.p, flat(grad_spikes), flat(grad_membrane),
                               spikes=flat(saved_spikes))
        else:
            ctx.backend.backward(eps, ctx.p, flat(grad_spikes), flat(grad_membrane), None)
        return eps.view(membrane.shape), None, None, None, None


def lif_with(
    current: Tensor,
    p: LIFParams,
    *,
    as_spikes: bool = False,
    return_membrane: bool = False,
    overwrite: bool = False,
    smooth: bool = False,
    tuning: Tuning = TUNING,
) -> Tensor | Spikes | tuple[Tensor | Spikes, Tensor]:
    """:func:`lif` with :class:`LIFParams` (what the layers call).

    ``as_spikes=True`` returns the spikes as :class:`~stbp.functional.spikes.Spikes` (bytes)
    where the backend makes bytes — for a next layer that reads them — and as a float tensor
    elsewhere. ``overwrite=True`` lets the membrane potentials (which the backward keeps) take
    the place of ``current`` in memory: for a caller whose current is a temporary nobody else
    reads, such as the output of a layer's matmul; ``current`` then holds u^t afterwards, and on
    a bytes backend the backward writes ∂L/∂x over them (a graph through the layer is then
    differentiated once). ``smooth=True`` (eager path) replaces the firing step by the
    surrogate's primitive: then the STBP backward is the exact gradient, which lets a
    finite-difference check verify the recursion. It is an analysis tool, not a neuron model.
    """
    _check_current(current)
    backend = kernels.get("torch") if smooth else kernels.choose(p.backend, current, p)
    if not backend.makes_bytes:
        spikes, membrane = _FloatLIF.apply(current, p, backend, overwrite, smooth)
        return (spikes, membrane) if return_membrane else spikes
    codes, membrane = backend.forward(current, p, overwrite)
    graph = torch.is_grad_enabled() and current.requires_grad
    origin = NeuronOrigin(current, membrane, p, backend, reusable=overwrite,
                          tuning=tuning) if graph else None
    out: Tensor | Spikes = Spikes(codes, current.dtype, origin=origin)
    if not as_spikes:
        out = out.float()
    if not return_membrane:
        return out
    if origin is None:
        return out, membrane.clone() if overwrite else membrane
    origin.use()
    return out, _Membrane.apply(current, origin)


def lif(current: Tensor, params: LIFParams | None = None, *, return_membrane: bool = False,
        **settings) -> Tensor | tuple[Tensor, Tensor]:
    """Spikes of a layer of iterative LIF neurons driven by ``current`` (E2–E4), trained by STBP.

    Args:
        current: floating tensor ``[T, ...]`` — the input current x^t + b of E1 for every step.
        params: a :class:`LIFParams`, or its settings as keywords (``decay``, ``threshold``,
            ``surrogate``, ``width``, ``reset``, ``temporal``, ``backend``; see there).
        return_membrane: also return the membrane potentials u^t (before reset).

    Every backend gives the same spikes (on "compile", except where u^t lies within float
    rounding of V_th) and gradients equal to float rounding.

    Returns:
        Spikes o^t (0/1) with the shape and dtype of ``current``; with ``return_membrane``, the
        pair ``(spikes, membrane)``. Gradients flow to ``current`` through E6–E7.
    """
    return lif_with(current, LIFParams.of(params, **settings), return_membrane=return_membrane)


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


def lif_reference(current: Tensor, params: LIFParams | None = None, *,
                  return_membrane: bool = False, **settings) -> Tensor | tuple[Tensor, Tensor]:
    """Per-step plain-autograd version of :func:`lif` (same arguments, same results).

    Autograd through this graph is exactly E6–E9 because the spike's backward returns h(u) and
    f(o) stays in the graph; with ``temporal=False`` u^t and o^t enter step t+1 detached.
    """
    p = LIFParams.of(params, **settings)
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
