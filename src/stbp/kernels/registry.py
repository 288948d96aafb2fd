"""The neuron backends by name: what runs the LIF recurrence and its STBP backward.

Each backend says which cases it can run (``supported``), runs the forward, and runs the
backward over a range of neurons. ``backend="auto"`` takes, for the current's device type, the
first registered backend that lists that device and can run the case; a named backend is used
as asked (an error says why it cannot run). A new backend — a CUDA kernel, say — is one file
under :mod:`stbp.kernels` that calls :func:`register` (docs/design.md, "How to add a kernel
backend").

Backends that make their spikes as bytes (``makes_bytes``) feed the event-driven layers: the
neuron functions hand their spikes on as :class:`stbp.functional.Spikes`; the others return
float spikes through an ordinary autograd Function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from stbp.errors import StbpError
from stbp.kernels.runtime import warn_once

__all__ = ["NeuronBackend", "register", "unregister", "get", "names", "choose"]


@dataclass(frozen=True)
class NeuronBackend:
    """A way to run the LIF neuron (E2–E4 forward, E6–E7 backward).

    Attributes:
        name: what ``backend=`` names it by.
        devices: device types (``"cpu"``, ``"cuda"``) that ``backend="auto"`` picks it for,
            in registration order.
        makes_bytes: ``forward`` returns the spikes as ``uint8`` (for event-driven layers) or
            as floats of the current's dtype.
        supported: ``(current, params) -> None`` or the reason it cannot run this case.
        forward: ``(current, params, overwrite) -> (spikes, membrane)``; with ``overwrite`` it
            may write the membrane over the (contiguous) current.
        backward: ``(eps, params, grad_spikes, grad_membrane, columns)``: turns the membrane
            potentials ``eps[:, lo:hi]`` (``[T, N]``) into ε = ∂L/∂x in place, given the
            gradients on those neurons' spikes and membrane (``[T, hi − lo]`` or ``None``).
        fallback: a backend to run instead, with a warning, when this one is asked for by
            name and cannot run the case (``None``: an error says why).
    """

    name: str
    devices: tuple[str, ...]
    makes_bytes: bool
    supported: Callable[[Tensor, object], str | None]
    forward: Callable[[Tensor, object, bool], tuple[Tensor, Tensor]]
    backward: Callable[..., None]
    fallback: str | None = None


_BACKENDS: dict[str, NeuronBackend] = {}


def register(backend: NeuronBackend) -> NeuronBackend:
    """Add (or replace) a backend; returns it."""
    if backend.name == "auto":
        raise StbpError("'auto' is not a backend name; it chooses among the backends")
    _BACKENDS[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove a backend (a test's, say)."""
    _BACKENDS.pop(name, None)


def names() -> tuple[str, ...]:
    """The names ``backend=`` takes: "auto" and every registered backend."""
    return ("auto", *_BACKENDS)


def get(name: str) -> NeuronBackend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise StbpError(f"unknown backend {name!r}; choose one of: {', '.join(names())}") from None


def choose(name: str, current: Tensor, params: object) -> NeuronBackend:
    """The backend that runs ``current`` for the setting ``name`` ("auto" or a backend's)."""
    if name != "auto":
        backend = get(name)
        why = backend.supported(current, params)
        if why is not None and backend.fallback is not None:
            warn_once(f"stbp: backend {name!r} falls back to the {backend.fallback!r} backend "
                       f"({why})")
            return get(backend.fallback)
        if why is not None:
            raise StbpError(f"backend {name!r} cannot run this case: {why}; use backend 'auto'")
        return backend
    device = current.device.type
    for backend in _BACKENDS.values():
        if device in backend.devices and backend.supported(current, params) is None:
            return backend
    return get("torch")
