"""Hidden spikes passed between stbp layers as bytes alone (spike_bytes.Codes)."""

from __future__ import annotations

import pytest
import torch

from stbp import encoding, layers, models
from stbp.functional import events, spike_bytes
from stbp.loss import rate_mse
from stbp.stats import FiringMonitor

NEURON = dict(decay=0.1, threshold=0.5)


def _digits(mnist, n, steps, seed=0, image=False):
    images = mnist["val"].images[:n].float().div(255)
    images = images.unsqueeze(1) if image else images.flatten(1)
    x = encoding.bernoulli(images, steps, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    return x, mnist["val"].labels[:n]


def _step(net, x, labels):
    out = net(x)
    rate_mse(out, labels).backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def _floats_everywhere():
    """A global forward hook: every layer hands ordinary float spikes on."""
    return torch.nn.modules.module.register_module_forward_hook(lambda *_: None)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bytes_alone_give_the_float_path_exactly(kind, mnist, monkeypatch):
    """On real digits, the MLP 784-800-10 and the paper's CNN give the same spikes and the
    same gradients, bit for bit, whether the hidden spikes pass as bytes alone or as floats —
    and the bytes-alone path really runs between every pair of layers it applies to."""
    if kind == "mlp":
        x, labels = _digits(mnist, 32, 12)
        build = lambda: models.mlp([784, 800, 10], seed=0, surrogate="polynomial", **NEURON)  # noqa: E731
        expected = 1  # hidden -> output
    else:
        x, labels = _digits(mnist, 6, 6, image=True)
        build = lambda: models.cnn(seed=0, decay=0.2, threshold=0.3)  # noqa: E731
        expected = 3  # conv1 -> pool1, conv2 -> pool2, fc1 -> fc2
    made = []
    real = spike_bytes.Codes.__init__
    monkeypatch.setattr(spike_bytes.Codes, "__init__",
                        lambda self, *a, real=real: made.append(1) or real(self, *a))
    fast = _step(build(), x, labels)
    assert len(made) == expected
    made.clear()
    handle = _floats_everywhere()
    try:
        slow = _step(build(), x, labels)
    finally:
        handle.remove()
    assert not made
    assert fast[0].sum() > 0 and torch.equal(fast[0], slow[0])
    assert all(g.abs().sum() > 0 for g in fast[1])
    for a, b in zip(fast[1], slow[1], strict=True):
        assert torch.equal(a, b)


def test_layers_return_codes_only_when_asked_and_fused():
    x = (torch.rand(5, 3, 40, generator=torch.Generator().manual_seed(0)) < 0.3).to(torch.uint8)
    fused = models.mlp([40, 30, 4], seed=0, **NEURON)
    codes = fused[1](x, as_codes=True)
    assert isinstance(codes, spike_bytes.Codes) and codes.shape == (5, 3, 30)
    assert codes.codes.dtype == torch.uint8 and codes.dtype == torch.float32
    floats = fused[1](x)
    assert torch.equal(codes.codes.float(), floats)
    assert torch.equal(fused[2](codes), fused[2](floats))
    eager = models.mlp([40, 30, 4], seed=0, backend="torch", **NEURON)
    assert isinstance(eager[1](x, as_codes=True), torch.Tensor)  # no fused kernel: floats
    # a layer that needs floats takes codes too
    assert torch.equal(layers.Flatten()(codes), floats)
    assert torch.equal(layers.LIF(**NEURON)(codes), layers.LIF(**NEURON)(floats))


def test_bytes_made_float_again_when_the_next_layer_cannot_sum_them(mnist, monkeypatch):
    """Where the next layer cannot sum events (here: the event path switched off under it),
    the bytes become floats again and their gradient reaches the LIF node as a dense term."""
    x, labels = _digits(mnist, 16, 8)
    ref = _step(models.mlp([784, 100, 10], seed=0, **NEURON), x, labels)
    monkeypatch.setattr(events, "usable", lambda *_: False)
    terms = []
    real_take = spike_bytes.Handoff.take
    monkeypatch.setattr(spike_bytes.Handoff, "take",
                        lambda self, n, real=real_take: terms.extend(real(self, n)) or terms)
    got = _step(models.mlp([784, 100, 10], seed=0, **NEURON), x, labels)
    assert [t[0] for t in terms] == ["dense"]
    assert torch.equal(got[0], ref[0])
    for a, b in zip(got[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_anything_that_reads_hidden_spikes_gets_floats(mnist):
    """A hook on a layer, a firing monitor and membrane recording see ordinary tensors."""
    x, _ = _digits(mnist, 8, 6)
    net = models.mlp([784, 100, 10], seed=0, **NEURON)
    seen = []
    handle = net[1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    net(x)
    handle.remove()
    assert isinstance(seen[0], torch.Tensor) and seen[0].shape == (6, 8, 100)
    handle = net[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    net(x)
    handle.remove()
    assert isinstance(seen[1], torch.Tensor) and torch.equal(seen[0], seen[1])
    with FiringMonitor(net) as mon:
        net(x)
    assert mon.layers()[1].input_events == pytest.approx(float(seen[0].detach().sum()) / 8)
    net[1].neuron.record = True
    out = net(x)
    assert net[1].neuron.membrane is not None and out.shape == (6, 8, 10)


def test_inference_and_second_backward(mnist):
    x, labels = _digits(mnist, 8, 6)
    net = models.mlp([784, 100, 10], seed=0, **NEURON)
    with torch.no_grad():
        ref = models.mlp([784, 100, 10], seed=0, backend="torch", **NEURON)(x)
    with torch.inference_mode():
        assert torch.equal(net(x), ref)
    loss = rate_mse(net(x), labels)
    loss.backward(retain_graph=True)
    with pytest.raises(Exception, match="a second time"):
        loss.backward()
