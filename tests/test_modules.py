"""Encoding, loss, init, multi-step layers and the paper's models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stbp import encoding, layers, models
from stbp.errors import StbpError
from stbp.functional import lif
from stbp.functional.lif import LIFParams, lif_with
from stbp.init import paper_init_
from stbp.loss import predict, rate_cross_entropy, rate_mse

NEURON = dict(decay=0.1, threshold=0.5)


def test_bernoulli_rates_and_seed(mnist):
    x = mnist["val"].images[:64].float() / 255
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = encoding.bernoulli(x, 200, generator=g1)
    b = encoding.bernoulli(x, 200, generator=g2)
    assert a.shape == (200, 64, 28, 28) and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    # per-pixel firing probability = intensity (binomial std ≤ 0.5/sqrt(200) ≈ 0.035)
    assert (a.mean(0) - x).abs().max() < 0.2
    assert abs(a.mean().item() - x.mean().item()) < 0.005
    assert (a[:, x == 0] == 0).all() and (a[:, x == 1] == 1).all()


def test_bernoulli_counter_based_draws_are_fair_and_independent():
    """The CPU kernel's uniforms (SplitMix64 keyed by the generator, indexed by (t, input)):
    firing frequency = p, neighbours in time and in space independent, the same spikes for
    any thread count, fresh spikes on every call, the same result for every dtype."""
    p = torch.full((4, 250), 0.3)
    g = torch.Generator().manual_seed(0)
    s = encoding.bernoulli(p, 1000, generator=g, dtype=torch.uint8).float()  # 10^6 draws
    n, sd = s.numel(), (0.3 * 0.7 / s.numel()) ** 0.5
    assert abs(s.mean().item() - 0.3) < 5 * sd
    both_t = (s[1:] * s[:-1]).mean().item()  # consecutive steps of one input
    both_i = (s[..., 1:] * s[..., :-1]).mean().item()  # neighbouring inputs, same step
    for both in (both_t, both_i):
        assert abs(both - 0.09) < 5 * (0.09 * 0.91 / (n * 0.99)) ** 0.5
    assert not torch.equal(s, encoding.bernoulli(p, 1000, generator=g).float())  # new draws
    x = torch.rand(3, 40, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    try:
        spikes = []
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            spikes.append(encoding.bernoulli(x, 7, generator=torch.Generator().manual_seed(9)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(spikes[0], spikes[1])
    as64 = encoding.bernoulli(x.double(), 7, generator=torch.Generator().manual_seed(9))
    assert as64.dtype == torch.float64 and torch.equal(as64.float(), spikes[0])
    assert encoding.bernoulli(torch.empty(0, 5), 3).shape == (3, 0, 5)
    xh = x.bfloat16()  # half precision: compared in float32, the same kernel
    half = encoding.bernoulli(xh, 7, generator=torch.Generator().manual_seed(9))
    ref = encoding.bernoulli(xh.float(), 7, generator=torch.Generator().manual_seed(9))
    assert half.dtype == torch.bfloat16 and torch.equal(half.float(), ref)
    assert encoding.bernoulli(x, np.int64(3)).shape == (3, 3, 40)  # any integer type for T


def test_encoding_errors():
    with pytest.raises(StbpError, match="T must be an integer >= 1"):
        encoding.bernoulli(torch.rand(2, 3), 0)
    with pytest.raises(StbpError, match=r"\[0, 1\]"):
        encoding.bernoulli(torch.rand(2, 3) * 2, 4)
    with pytest.raises(StbpError, match="floating"):
        encoding.bernoulli(torch.ones(2, 3, dtype=torch.uint8), 4)
    with pytest.raises(StbpError, match="got NaN"):
        encoding.bernoulli(torch.tensor([0.5, float("nan")]), 4)
    with pytest.raises(StbpError, match="T must be an integer"):
        encoding.bernoulli(torch.rand(2, 3), 2.5)
    d = encoding.direct(torch.rand(2, 3), 5)
    assert d.shape == (5, 2, 3) and torch.equal(d[0], d[4])


def test_rate_mse_is_e5():
    spikes = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]])  # T=2, B=2, C=3
    target = torch.tensor([0, 2])
    # rates: s0 = [1, .5, 0], s1 = [0, .5, 1]; errors² s0: 0 + .25 + 0, s1: 0 + .25 + 0
    assert rate_mse(spikes, target).item() == pytest.approx(0.5 * (0.25 + 0.25) / 2)
    assert rate_cross_entropy(spikes, target).item() == pytest.approx(
        F.cross_entropy(10 * spikes.mean(0), target).item())


def test_cross_entropy_scale_option():
    from stbp.loss import get_loss

    out = torch.rand(30, 4, 10).round()
    y = torch.tensor([0, 1, 2, 3])
    assert torch.allclose(get_loss("cross_entropy", scale=10.0)(out, y), rate_cross_entropy(out, y))
    assert torch.allclose(get_loss("cross_entropy", scale=1.0)(out, y),
                          F.cross_entropy(out.mean(0), y))


def test_predict_ties_lowest_index():
    spikes = torch.tensor([[[0.0, 1, 1], [0, 0, 0]]])
    assert predict(spikes).tolist() == [1, 0]


def test_paper_init_unit_rows():
    net = models.cnn(**NEURON, seed=3)
    for m in net.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            w = m.weight.detach().reshape(m.weight.shape[0], -1)
            assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0]), atol=1e-5)
            assert (m.bias == 0).all()
    a, b = models.mlp([20, 5], **NEURON, seed=1), models.mlp([20, 5], **NEURON, seed=1)
    assert torch.equal(a[1].synapse.weight, b[1].synapse.weight)
    lin = torch.nn.Linear(3, 2)
    assert paper_init_(lin) is lin and lin.weight.abs().max() <= 1


def test_linear_layer_is_e1_then_lif():
    torch.manual_seed(0)
    layer = layers.Linear(6, 4, **NEURON)
    x = (torch.rand(5, 3, 6) < 0.5).float()
    expected = lif(x @ layer.synapse.weight.T + layer.synapse.bias, **NEURON)
    assert torch.equal(layer(x), expected)


def test_conv_layer_matches_per_step_conv():
    torch.manual_seed(0)
    layer = layers.Conv2d(2, 3, 3, padding=1, **NEURON)
    x = (torch.rand(4, 2, 2, 6, 6) < 0.5).float()
    current = torch.stack([layer.synapse(x[t]) for t in range(4)])
    assert torch.allclose(layer(x), lif(current, **NEURON))
    pooled = layers.AvgPool2d(2)(x)
    assert pooled.shape == (4, 2, 2, 3, 3)
    assert torch.allclose(pooled[1, 0], F.avg_pool2d(x[1, 0], 2))


def test_models_shapes_and_gradients():
    mlp = models.mlp([784, 800, 10], **NEURON)
    x = (torch.rand(3, 2, 1, 28, 28) < 0.3).float()
    assert mlp(x).shape == (3, 2, 10)
    assert mlp(x.flatten(2)).shape == (3, 2, 10)
    net = models.cnn(**NEURON, surrogate="gaussian")
    out = net(x)
    assert out.shape == (3, 2, 10)
    rate_mse(out, torch.tensor([1, 2])).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert [type(m).__name__ for m in net] == [
        "Conv2d", "AvgPool2d", "Conv2d", "AvgPool2d", "Flatten", "Linear", "Linear"]
    assert net[0].synapse.out_channels == 15 and net[2].synapse.out_channels == 40
    assert net[5].synapse.in_features == 40 * 7 * 7 and net[5].synapse.out_features == 300


def test_record_membrane():
    net = models.mlp([8, 4], **NEURON)
    lif_layer = net.lif_layers()[0]
    lif_layer.record = True
    net((torch.rand(5, 2, 8) < 0.5).float())
    assert lif_layer.membrane is not None and lif_layer.membrane.shape == (5, 2, 4)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: lif(torch.rand(0, 3), **NEURON), "T = 0"),
        (lambda: lif(torch.rand(5), **NEURON), "shape \\[T, ...\\]"),
        (lambda: lif(torch.ones(3, 2, dtype=torch.int64), **NEURON), "floating"),
        (lambda: lif(torch.rand(3, 2), decay=0.0, threshold=0.5), "decay must be in"),
        (lambda: lif(torch.rand(3, 2), decay=-1, threshold=0.5), "decay must be in"),
        (lambda: lif(torch.rand(3, 2), decay=0.5, threshold=0), "threshold must be"),
        (lambda: lif(torch.rand(3, 2), **NEURON, width=0), "width must be"),
        (lambda: lif(torch.rand(3, 2), **NEURON, width=-2), "width must be"),
        (lambda: lif(torch.rand(3, 2), **NEURON, surrogate="boxcar"), "unknown surrogate 'boxcar'"),
        (lambda: lif(torch.rand(3, 2), **NEURON, reset="soft"), "unknown reset 'soft'"),
        (lambda: models.mlp([784, 800, 10], **NEURON)(torch.rand(2, 784)), "shape \\[T, B"),
        (lambda: models.mlp([784, 10], **NEURON)(torch.rand(3, 2, 700)), "784 input features"),
        (lambda: models.mlp([784], **NEURON), "mlp sizes"),
        (lambda: models.build("rnn"), "unknown model kind"),
        (lambda: models.mlp([784, 10]), "needs the setting\\(s\\) decay, threshold"),
        (lambda: models.cnn(decay=0.1, threshold=0.5, tau=2), "unknown neuron setting\\(s\\) tau"),
        (lambda: rate_mse(torch.rand(3, 2, 10), torch.tensor([1, 10])), "class indices in \\[0, 10\\)"),
        (lambda: rate_mse(torch.rand(3, 2, 10), torch.tensor([1, 2, 3])), "do not match"),
        (lambda: rate_mse(torch.rand(3, 2, 10), torch.rand(2)), "integer tensor"),
        (lambda: lif_with(torch.rand(5), LIFParams(**NEURON)), "shape \\[T, ...\\]"),
    ],
)
def test_bad_input_messages(call, message):
    with pytest.raises(StbpError, match=message):
        call()


def test_backends_agree_on_real_digits(mnist):
    """The numba kernels and the eager path: same output spikes, same weight gradients."""
    images = mnist["test"].images[:64].reshape(64, -1).float() / 255
    x = encoding.bernoulli(images, 30, generator=torch.Generator().manual_seed(0))
    y = mnist["test"].labels[:64]
    grads = {}
    for backend in ("torch", "numba"):
        net = models.mlp([784, 200, 10], decay=0.1, threshold=0.5, backend=backend, seed=3)
        out = net(x)
        rate_mse(out, y).backward()
        grads[backend] = (out, [p.grad for p in net.parameters()])
    (out_t, g_t), (out_n, g_n) = grads["torch"], grads["numba"]
    assert torch.equal(out_t, out_n) and out_t.sum() > 0
    for a, b in zip(g_t, g_n, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), (a - b).abs().max()


def test_direct_input_computes_the_first_layer_once(mnist):
    """A stride-0 (direct) input gives the same spikes and gradients as its materialized copy."""
    images = mnist["train"].images[:8].unsqueeze(1).float() / 255
    x = encoding.encode("direct", images, 6)
    assert x.stride(0) == 0
    for net in (models.mlp([784, 30, 10], decay=0.2, threshold=0.3, seed=1),
                models.cnn(decay=0.2, threshold=0.3, channels=(4, 6), hidden=(20,), seed=1)):
        out_view = net(x)
        g_view = torch.autograd.grad(out_view.sum() + out_view.mean(0).pow(2).sum(),
                                     list(net.parameters()))
        out_copy = net(x.contiguous())
        g_copy = torch.autograd.grad(out_copy.sum() + out_copy.mean(0).pow(2).sum(),
                                     list(net.parameters()))
        assert torch.equal(out_view, out_copy) and out_view.sum() > 0
        for a, b in zip(g_view, g_copy, strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_synapses_keep_float32_neurons(mnist):
    images = mnist["test"].images[:32].reshape(32, -1).float() / 255
    x = encoding.bernoulli(images, 10, generator=torch.Generator().manual_seed(0))
    net = models.mlp([784, 100, 10], decay=0.1, threshold=0.5, seed=0)
    layer = net[1]
    layer.neuron.record = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.float32 and layer.neuron.membrane.dtype == torch.float32
    # the same network in float32 gives nearly the same spikes (bf16 rounds the weights)
    agree = (net(x) == out).float().mean()
    assert agree > 0.97, agree


def test_encode_by_name():
    x = torch.rand(3, 4)
    assert torch.equal(encoding.encode("direct", x, 2)[1], x)
    with pytest.raises(StbpError, match="unknown encoding 'poisson'"):
        encoding.encode("poisson", x, 2)


@pytest.mark.parametrize("make,message", [
    (lambda: layers.Conv2d(1, 4, 3, padding=(1, 2), decay=0.1, threshold=0.5), "Conv2d padding"),
    (lambda: layers.Conv2d(1, 4, 3, stride=(1, 2), decay=0.1, threshold=0.5), "Conv2d stride"),
    (lambda: layers.Conv2d(1, 4, 3, padding="same", decay=0.1, threshold=0.5), "Conv2d padding"),
    (lambda: layers.Conv2d(1, 4, (3, 5), decay=0.1, threshold=0.5), "Conv2d kernel_size"),
    (lambda: layers.AvgPool2d((2, 3)), "AvgPool2d kernel_size"),
    (lambda: layers.AvgPool2d(2, stride=0), "AvgPool2d stride"),
])
def test_layer_shapes_stbp_cannot_run_are_refused_at_construction(make, message):
    with pytest.raises(StbpError, match=message):
        make()
