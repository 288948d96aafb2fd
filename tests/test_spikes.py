"""Spikes held as bytes (stbp.functional.Spikes): the networks against the eager reference,
the gradient terms their consumers hand back, and the extension points (a consumer, a
surrogate and a backend defined here)."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import math
import weakref

import numba
import pytest
import torch
import torch.nn.functional as F

from stbp import encoding, kernels, layers, models
from stbp.errors import StbpError
from stbp.functional import (
    SURROGATES,
    DenseTerm,
    GradTerm,
    LIFParams,
    Spikes,
    Surrogate,
    lif,
    lif_with,
    synapse,
)
from stbp.functional.events import LinearTerm
from stbp.functional.pool import PoolTerm, avg_pool2d
from stbp.kernels import lif_torch
from stbp.kernels.runtime import Tuning
from stbp.loss import rate_mse
from stbp.stats import FiringMonitor

NEURON = dict(decay=0.1, threshold=0.5)


def _digits(mnist, n, steps, seed=0, image=False, dtype=torch.uint8):
    images = mnist["val"].images[:n].float().div(255)
    images = images.unsqueeze(1) if image else images.flatten(1)
    x = encoding.bernoulli(images, steps, generator=torch.Generator().manual_seed(seed),
                           dtype=dtype)
    return x, mnist["val"].labels[:n]


def _step(net, x, labels):
    out = net(x)
    rate_mse(out, labels).backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def _nodes(out):
    seen, todo = [], [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.append(node)
            todo += [f for f, _ in node.next_functions]
    return [type(n).__name__ for n in seen]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_networks_equal_the_eager_reference_for_every_input_dtype(kind, dtype, mnist):
    """The MLP 784-800-10 and the paper's CNN on real digits: the default path (bytes between
    the layers, event-driven synapses, factored gradients) gives the eager reference's
    (backend="torch": eager neurons, dense layers) spikes, and its gradients to float
    rounding, whatever dtype the input spikes come in."""
    if kind == "mlp":
        x, labels = _digits(mnist, 32, 12, dtype=dtype)
        build = lambda b: models.mlp([784, 800, 10], seed=0, surrogate="polynomial",  # noqa: E731
                                     backend=b, **NEURON)
    else:
        x, labels = _digits(mnist, 6, 6, image=True, dtype=dtype)
        build = lambda b: models.cnn(seed=0, decay=0.2, threshold=0.3, backend=b)  # noqa: E731
    net = build("auto")
    out = net(x)
    kinds = _nodes(out)
    # every synapse runs event-driven: the input spikes whatever their dtype (float 0/1 found
    # in one pass), the hidden spikes passed as bytes
    if kind == "mlp":
        assert kinds.count("_EventLinearBackward") == 2
    else:
        assert kinds.count("_EventConv2dBackward") == 2
        assert kinds.count("_EventLinearBackward") == 2
    rate_mse(out, labels).backward()
    fast = out.detach(), [p.grad.clone() for p in net.parameters()]
    slow = _step(build("torch"), x, labels)
    assert fast[0].sum() > 0 and torch.equal(fast[0], slow[0])
    assert all(g.abs().sum() > 0 for g in fast[1])
    for a, b in zip(fast[1], slow[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_layers_return_spikes_only_when_asked_and_made_as_bytes():
    x = (torch.rand(5, 3, 40, generator=torch.Generator().manual_seed(0)) < 0.3).to(torch.uint8)
    fused = models.mlp([40, 30, 4], seed=0, **NEURON)
    spikes = fused[1](x, as_spikes=True)
    assert isinstance(spikes, Spikes) and spikes.shape == (5, 3, 30)
    assert spikes.codes.dtype == torch.uint8 and spikes.dtype == torch.float32
    floats = fused[1](x)
    assert isinstance(floats, torch.Tensor) and torch.equal(spikes.detach(), floats)
    assert torch.equal(fused[2](spikes), fused[2](floats))
    eager = models.mlp([40, 30, 4], seed=0, backend="torch", **NEURON)
    assert isinstance(eager[1](x, as_spikes=True), torch.Tensor)  # no bytes made: floats
    assert isinstance(layers.Flatten()(spikes), Spikes)
    assert torch.equal(layers.Flatten()(spikes).detach(), floats)


def test_the_spikes_value():
    codes = torch.tensor([[[0, 1, 2, 4]]], dtype=torch.uint8).expand(2, 3, 4)
    s = Spikes(codes, torch.float64, divisor=4)
    assert s.shape == (2, 3, 4) and s.dim() == 3 and s.numel() == 24 and not s.requires_grad
    assert s.detach().dtype == torch.float64
    assert s.detach()[0, 0].tolist() == [0.0, 0.25, 0.5, 1.0]
    assert torch.equal(s.float(), s.detach())
    assert "divisor=4" in repr(s)
    assert s.reshape(2, 3, 2, 2).shape == (2, 3, 2, 2) and s.flatten(2).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="keep \\[T, B\\]"):
        s.reshape(6, 4)
    with pytest.raises(TypeError, match="uint8"):
        Spikes(codes.float(), torch.float32)
    with pytest.raises(TypeError, match="float dtype"):
        Spikes(codes, torch.int64)


def _current(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * 0.6 + 0.25).requires_grad_(True)


@pytest.mark.parametrize("chunk", [1, 6 * 5 * 8 * 2, 1 << 30])  # a sample, 2 samples, all
@pytest.mark.parametrize(
    "surrogate,reset,temporal",
    list(itertools.product(sorted(SURROGATES), ["zero", "paper"], [True, False])))
def test_linear_term_made_in_chunks_equals_the_dense_gradient(surrogate, reset, temporal, chunk):
    """The neurons' backward forming a next layer's ∂L/∂o = ε W a few samples at a time
    gives the gradient of the dense ∂L/∂o, whatever the chunk size."""
    p = LIFParams(decay=0.3, threshold=0.4, surrogate=surrogate, width=0.8, reset=reset,
                  temporal=temporal)
    steps, batch, feats, k = 6, 5, 8, 4
    g = torch.Generator().manual_seed(9)
    err = torch.randn(steps * batch, k, generator=g, dtype=torch.float64)
    w = torch.randn(k, feats, generator=g, dtype=torch.float64)
    err[1] = 0
    x = _current((steps, batch, feats), seed=3)
    spikes = lif_with(x * 1.0, p, as_spikes=True, tuning=Tuning(neuron_chunk_bytes=chunk))
    ours = spikes.origin.backward(LinearTerm(err, w))
    spikes = lif_with(x * 1.0, p, as_spikes=True)
    ref = spikes.origin.backward(DenseTerm((err @ w).reshape(steps, batch, feats)))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (eager,) = torch.autograd.grad(lif(x, dataclasses.replace(p, backend="torch")),
                                   x, (err @ w).reshape(steps, batch, feats))
    torch.testing.assert_close(ours, eager, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 1 << 30])
@pytest.mark.parametrize("k,size", [(2, (6, 6)), (2, (7, 5)), (3, (6, 9))])
def test_pooled_gradient_spread_in_chunks_equals_the_dense_one(k, size, chunk):
    """A k×k average pooling of spikes, from their bytes: the pooled values of F.avg_pool2d,
    and its gradient spread over the windows a few samples at a time inside the neurons'
    backward equals the dense one (odd sizes, cut edges, included)."""
    p = LIFParams(decay=0.2, threshold=0.5)
    x = _current((5, 2, 3, *size), seed=4, dtype=torch.float32)
    spikes = lif_with(x * 1.0, p, as_spikes=True, tuning=Tuning(neuron_chunk_bytes=chunk))
    pooled = avg_pool2d(spikes, k)
    assert isinstance(pooled, Spikes) and pooled.divisor == k * k
    floats = lif(x, p)
    ref = F.avg_pool2d(floats.flatten(0, 1), k).unflatten(0, (5, 2))
    assert torch.equal(pooled.detach(), ref.detach())
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    ours = pooled.origin.backward(DenseTerm(g))
    (dense,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and with no graph at all
        assert torch.equal(avg_pool2d(lif_with(x, p, as_spikes=True), k).detach(), ref)


class _RowTerm(GradTerm):
    """∂L/∂o of y = c · Σ_neurons o (per step and sample): c · g broadcast over the neurons."""

    def __init__(self, grad, c):
        self.grad, self.c = grad, c

    def add_to(self, out, b0, b1):
        out.add_(self.c * self.grad[:, b0:b1].reshape(*out.shape[:2], *[1] * (out.dim() - 2)))


class _RowSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, spikes, c):
        ctx.origin, ctx.c = spikes.origin, c
        return c * spikes.detach().flatten(2).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        return ctx.origin.backward(_RowTerm(grad, ctx.c)), None, None


def test_a_consumer_defined_here_hands_its_own_gradient_term_back():
    """How to add a consumer (docs/design.md): its own autograd Function on the origin's input
    and its own GradTerm; the neurons' backward makes it a few samples at a time."""
    p = LIFParams(decay=0.3, threshold=0.2, surrogate="sigmoid")
    x = _current((7, 6, 3, 4), seed=2, dtype=torch.float32)
    spikes = lif_with(x * 1.0, p, as_spikes=True, tuning=Tuning(neuron_chunk_bytes=1))
    spikes.origin.use()
    y = _RowSum.apply(spikes.origin.input, spikes, 0.5)
    err = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    (ours,) = torch.autograd.grad(y, x, err)
    ref = 0.5 * lif(x, p).flatten(2).sum(-1)
    (dense,) = torch.autograd.grad(ref, x, err)
    torch.testing.assert_close(y, ref.detach())
    torch.testing.assert_close(ours, dense, rtol=1e-5, atol=1e-6)


@numba.njit(inline="always", fastmath=True)
def _h_cosine(x, c0, c1, zero):  # a raised-cosine bump of width a: (1 + cos(πx/a)) / (2a)
    z = x * c0  # c0 = π/a, c1 = 1/(2a)
    return c1 * (1 + math.cos(z)) if abs(z) < math.pi else zero


class Cosine(Surrogate):
    """A surrogate defined in a test: h(x) = (1 + cos(π x / a)) / (2a) on |x| < a."""

    name = "cosine"
    curve = staticmethod(_h_cosine)

    def constants(self):
        return math.pi / self.width, 1 / (2 * self.width)

    def derivative(self, x):
        a = self.width
        return torch.where(x.abs() < a, (1 + torch.cos(math.pi * x / a)) / (2 * a),
                           torch.zeros_like(x))


def test_a_surrogate_defined_here_takes_the_fused_path():
    """How to add a surrogate: a curve of its own as a numba function takes the fused CPU
    kernels (backend "numba" accepts it) and matches the eager path."""
    x = _current((9, 4, 30), seed=7, dtype=torch.float32)
    kw = dict(decay=0.3, threshold=0.3, surrogate=Cosine(0.8))
    s_n = lif(x, **kw, backend="numba")
    s_t = lif(x, **kw, backend="torch")
    assert torch.equal(s_n, s_t) and 0 < s_n.mean() < 1
    g = torch.randn(s_n.shape, generator=torch.Generator().manual_seed(1))
    (a,) = torch.autograd.grad(s_n, x, g)
    (b,) = torch.autograd.grad(s_t, x, g)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert a.abs().sum() > 0


def test_a_backend_registered_here_runs_every_layer():
    """How to add a kernel backend: register it; a bytes-making one feeds the event-driven
    layers. Here: the eager code, handing its spikes on as bytes."""

    def forward(current, p, overwrite):
        spikes, membrane = lif_torch.forward(current, p, overwrite)
        return spikes.to(torch.uint8), membrane

    kernels.register(kernels.NeuronBackend(
        "eager-bytes", devices=(), makes_bytes=True, supported=lif_torch.supported,
        forward=forward, backward=lif_torch.backward))
    try:
        x = (torch.rand(6, 5, 40, generator=torch.Generator().manual_seed(0)) < 0.2).to(
            torch.uint8)
        labels = torch.arange(5) % 4
        ours = models.mlp([40, 30, 4], seed=0, backend="eager-bytes", **NEURON)
        out = ours(x)
        assert "_EventLinearBackward" in _nodes(out)
        rate_mse(out, labels).backward()
        ref = _step(models.mlp([40, 30, 4], seed=0, backend="torch", **NEURON), x, labels)
        assert torch.equal(out.detach(), ref[0])
        for p, r in zip(ours.parameters(), ref[1], strict=True):
            torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-6)
    finally:
        kernels.unregister("eager-bytes")
    with pytest.raises(StbpError, match="unknown backend 'eager-bytes'"):
        LIFParams(**NEURON, backend="eager-bytes")


def test_hooks_and_monitors_see_the_same_computation(mnist):
    """A hook on a hidden layer receives its Spikes; a firing monitor and membrane recording
    count the same values; none of them changes what the network computes."""
    x, labels = _digits(mnist, 8, 6)
    ref = _step(models.mlp([784, 100, 10], seed=0, **NEURON), x, labels)
    net = models.mlp([784, 100, 10], seed=0, **NEURON)
    seen = []
    handles = [net[1].register_forward_hook(lambda _m, _i, out: seen.append(out)),
               net[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))]
    with FiringMonitor(net) as mon:
        got = _step(net, x, labels)
    for h in handles:
        h.remove()
    assert isinstance(seen[0], Spikes) and seen[0] is seen[1] and seen[0].shape == (6, 8, 100)
    assert mon.layers()[1].input_events == pytest.approx(float(seen[0].detach().sum()) / 8)
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1], ref[1], strict=True):
        assert torch.equal(a, b)
    net[1].neuron.record = True
    out = net(x)
    assert net[1].neuron.membrane.shape == (6, 8, 100) and out.shape == (6, 8, 10)


def test_inference_second_backward_and_no_reference_cycle(mnist):
    x, labels = _digits(mnist, 8, 6)
    net = models.mlp([784, 100, 10], seed=0, **NEURON)
    with torch.no_grad():
        ref = models.mlp([784, 100, 10], seed=0, backend="torch", **NEURON)(x)
    with torch.inference_mode():
        assert torch.equal(net(x), ref)
    loss = rate_mse(net(x), labels)
    loss.backward(retain_graph=True)
    with pytest.raises(StbpError, match="a second time"):
        loss.backward()
    was = gc.isenabled()
    gc.disable()  # the graph (and the membranes its origins hold) is freed by reference counts
    try:
        spikes = net[1](x, as_spikes=True)
        origin = weakref.ref(spikes.origin)
        out = synapse.linear(spikes, net[2].synapse.weight)
        held = spikes.origin
        del spikes
        out.sum().backward()
        # the membrane (overwritten by ε) belongs to the gradient now, even while the graph lives
        assert held.spent and held.membrane is None and held.input is None
        del out, held
        assert origin() is None
    finally:
        if was:
            gc.enable()


def test_two_consumers_of_the_same_spikes():
    """Two event-driven layers read one layer's spikes: each hands its term back; the sum is
    the dense gradient, and the saved membrane is not overwritten by the first."""
    results = []
    for use_events in (True, False):
        x = _current((6, 5, 40), seed=1, dtype=torch.float32)
        spikes = layers.LIF(**NEURON).fire(x * 1.0, overwrite=True, as_spikes=use_events)
        g = torch.Generator().manual_seed(4)
        w1, w2 = torch.randn(7, 40, generator=g), torch.randn(3, 40, generator=g)
        loss = (synapse.linear(spikes, w1, events=use_events).pow(2).sum()
                + synapse.linear(spikes, w2, events=use_events).sum())
        loss.backward()
        results.append(x.grad)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("term_kind", ["linear", "pool"])
def test_terms_add_and_write_alike(term_kind):
    """A term's add_to (adds to what is there) and write_to (overwrites) agree."""
    g = torch.Generator().manual_seed(5)
    if term_kind == "linear":
        term = LinearTerm(torch.randn(4 * 6, 3, generator=g), torch.randn(3, 10, generator=g))
        shape = (4, 2, 10)
    else:
        term = PoolTerm(torch.randn(4, 6, 2, 3, 2, generator=g), 2)
        shape = (4, 2, 2, 7, 5)  # odd sizes: a cut edge that no window reaches
    base = torch.randn(shape, generator=g)
    added = base.clone()
    term.add_to(added, 1, 3)
    written = base.clone()
    term.write_to(written, 1, 3)
    torch.testing.assert_close(added - base, written, rtol=1e-5, atol=1e-6)


class _Tent(Surrogate):
    """A surrogate with a parameter of its own besides the width: the raised cosine above,
    scaled by ``height`` (through its constants)."""

    name = "tent"
    curve = staticmethod(_h_cosine)  # any numba curve; the constants carry the parameters

    def __init__(self, width: float = 1.0, height: float = 1.0) -> None:
        super().__init__(width)
        self.height = height

    def constants(self):
        return math.pi / self.width, self.height / (2 * self.width)

    def derivative(self, x):
        a = self.width
        return torch.where(x.abs() < a, self.height * (1 + torch.cos(math.pi * x / a)) / (2 * a),
                           torch.zeros_like(x))


def test_surrogates_differ_by_every_parameter_and_the_kernels_see_it():
    assert _Tent(1.0, 1.0) != _Tent(1.0, 3.0) and hash(_Tent(1.0, 2.0)) == hash(_Tent(1.0, 2.0))
    x = _current((6, 3, 20), seed=3, dtype=torch.float32)
    for height in (1.0, 3.0):  # the second must not reuse the first's cached constants
        kw = dict(decay=0.3, threshold=0.3, surrogate=_Tent(0.8, height))
        g = torch.randn(6, 3, 20, generator=torch.Generator().manual_seed(2))
        (a,) = torch.autograd.grad(lif(x, **kw, backend="numba"), x, g)
        (b,) = torch.autograd.grad(lif(x, **kw, backend="torch"), x, g)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_spikes_whose_layer_was_differentiated_through_are_refused_again():
    """After the backward that wrote ε over a layer's membrane, its Spikes cannot feed a new
    graph: an error, never a gradient silently dropped."""
    l1, l2 = layers.Linear(40, 30, **NEURON), layers.Linear(30, 4, **NEURON)
    x = (torch.rand(5, 3, 40, generator=torch.Generator().manual_seed(0)) < 0.3).to(torch.uint8)
    h = l1(x, as_spikes=True)
    l2(h).sum().backward()
    with pytest.raises(StbpError, match="a second time"):
        l2(h).sum().backward()
