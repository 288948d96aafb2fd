"""Gradients summed over the nonzero values of an error (zero wherever the surrogate of the
neurons is): a convolution's gradient on its input (:func:`stbp.kernels.sparse_conv.input_grad`)
against torch's transposed convolution for generated errors of the shapes the kernel meets, a
fully connected layer's ε W made whole (:class:`stbp.functional.events.LinearTerm`), the choice
between them and the dense paths, and the trained CNN's gradients on real digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stbp import encoding, layers, pretrained
from stbp.functional import events
from stbp.functional.events import LinearTerm
from stbp.kernels import dense_rows, density, sparse_conv
from stbp.kernels.runtime import Tuning
from stbp.loss import rate_mse


def _error(n, c, h, w, rate, gen, dtype=torch.float32, silent_planes=0.5):
    """An error like a layer of neurons hands back: zero where the surrogate is, whole
    channels of an image silent."""
    keep = torch.rand(n, c, h, w, generator=gen) < rate
    keep &= torch.rand(n, c, 1, 1, generator=gen) >= silent_planes
    return (torch.randn(n, c, h, w, generator=gen) * keep).to(dtype)


@pytest.mark.parametrize("n,cin,cout,h,w,k,pad", [
    (3, 1, 4, 8, 8, 5, 2), (2, 3, 5, 9, 7, 3, 0), (2, 15, 40, 14, 14, 5, 2),
    (1, 17, 3, 6, 6, 3, 1), (2, 2, 2, 4, 4, 5, 2), (2, 16, 1, 5, 5, 1, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_grad_matches_conv2d_input(n, cin, cout, h, w, k, pad, dtype):
    gen = torch.Generator().manual_seed(n * 100 + cin + cout)
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    weight = torch.randn(cout, cin, k, k, generator=gen).to(dtype)
    shape = torch.Size((n, cin, h, w))
    for rate in (0.05, 0.3, 1.0):
        g = _error(n, cout, ho, wo, rate, gen, dtype)
        ours = sparse_conv.input_grad(g, weight, shape, pad)
        assert ours.dtype == dtype and ours.shape == shape and ours.is_contiguous()
        ref = torch.nn.grad.conv2d_input(shape, weight, g, 1, pad)
        tol = 1e-4 if dtype == torch.float32 else 1e-12  # sums of up to 1000 terms ~ 30
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_input_grad_of_a_silent_error_is_zero_and_does_not_touch_its_inputs():
    weight = torch.randn(4, 3, 5, 5)
    g = torch.zeros(2, 4, 6, 6)
    keep = weight.clone()
    out = sparse_conv.input_grad(g, weight, torch.Size((2, 3, 6, 6)), 2)
    assert torch.equal(out, torch.zeros(2, 3, 6, 6)) and torch.equal(weight, keep)


def test_nonzero_fraction_counts_every_value_that_is_not_zero():
    x = torch.tensor([[0.0, -0.0, 1.0, float("nan")], [2.0, 0.0, float("-inf"), 1e-30]])
    assert density.nonzero_fraction(x) == 5 / 8
    assert density.nonzero_fraction(torch.zeros(0, 3)) == 0.0
    assert density.nonzero_fraction(torch.ones(3, 2, 2, dtype=torch.float64)) == 1.0


def _hidden_spikes_into_conv(tuning, gen_seed=0):
    """LIF spikes (bytes with an origin) into an event-driven convolution; the gradient on the
    neurons' input current, with ``tuning``."""
    gen = torch.Generator().manual_seed(gen_seed)
    current = torch.randn(4, 3, 2, 9, 9, generator=gen).mul_(0.6).requires_grad_()
    spikes = layers.LIF(decay=0.2, threshold=0.3)(current, as_spikes=True)
    weight = torch.randn(6, 2, 5, 5, generator=gen, requires_grad=True)
    out = events.conv2d(spikes, weight, None, 1, 2, tuning=tuning)
    assert out is not None
    err = torch.randn(out.shape, generator=gen) * (torch.rand(out.shape, generator=gen) < 0.1)
    return torch.autograd.grad(out, (current, weight), err)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_events_are_taken_below_the_limit_and_agree_with_the_dense_gradient(bf16, monkeypatch):
    taken = []
    real = sparse_conv.input_grad
    monkeypatch.setattr(sparse_conv, "input_grad", lambda *a: taken.append(1) or real(*a))
    results = {}
    # every error below the limit / none, the dense one in one chunk / in chunks of 3 images
    # ([12, 2, 9, 9] inputs: 162 values each)
    for limit, chunk in ((1.0, 1 << 18), (0.0, 1 << 18), (0.0, 500)):
        tuning = Tuning(max_grad_density=limit, max_grad_density_bf16=limit, conv_chunk=chunk)
        taken.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            results[limit, chunk] = _hidden_spikes_into_conv(tuning)
        assert bool(taken) == (limit == 1.0)
    tol = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-5, atol=1e-5)
    for dense in ((0.0, 1 << 18), (0.0, 500)):
        for a, b in zip(results[1.0, 1 << 18], results[dense], strict=True):
            assert a.abs().sum() > 0
            torch.testing.assert_close(a, b, **tol)


def test_the_trained_cnn_on_real_digits_sums_over_its_errors_with_the_dense_gradients(
        mnist, monkeypatch):
    """The shipped CNN's errors are sparse (its surrogate is zero at most neurons): its second
    convolution's gradient on its input runs over them, and so does its first FC layer's
    gradient on the pooled spikes (ε W made whole); every parameter's gradient equals the one
    made densely. (The targets are the next class: the network gets these digits right, its
    output saturated, and their own labels leave no error at all.)"""
    images = mnist["val"].images[:8].float().div(255).unsqueeze(1)
    x = encoding.bernoulli(images, 12, generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    labels = (mnist["val"].labels[:8] + 1) % 10
    seen, taken = [], []
    count, conv_grad, rows = density.nonzero_fraction, sparse_conv.input_grad, dense_rows.error_times_weight
    monkeypatch.setattr(density, "nonzero_fraction", lambda g: seen.append((g.dim(), count(g))) or count(g))
    monkeypatch.setattr(sparse_conv, "input_grad", lambda *a: taken.append("conv") or conv_grad(*a))
    monkeypatch.setattr(dense_rows, "error_times_weight",
                        lambda g, *a: taken.append(g.shape[0]) or rows(g, *a))

    def grads():
        net = pretrained.load("mnist-cnn").train()
        rate_mse(net(x), labels).backward()
        return [p.grad.clone() for p in net.parameters()]

    fast = grads()
    conv = [d for n, d in seen if n == 4]
    fc = [d for n, d in seen if n == 2]
    assert conv and max(conv) < Tuning().max_grad_density and "conv" in taken
    assert fc and max(fc) < Tuning().max_linear_grad_density and 1 in taken  # ε W whole: [1, R, K]
    monkeypatch.setattr(density, "nonzero_fraction", lambda g: 1.0)  # every error dense
    taken.clear()
    dense = grads()
    assert "conv" not in taken and 1 not in taken
    for a, b in zip(fast, dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(a.abs().sum() > 0 for a in fast)


def test_a_linear_term_made_whole_skips_the_zeros_of_its_error_below_the_limit(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(7, 33, generator=gen)
    calls, real = [], dense_rows.error_times_weight
    monkeypatch.setattr(dense_rows, "error_times_weight", lambda *a: calls.append(1) or real(*a))
    rows = torch.rand(60, 1, generator=gen) < 0.3
    for dtype in (torch.float32, torch.float64):
        g = (torch.randn(60, 7, generator=gen) * rows * (torch.rand(60, 7, generator=gen) < 0.4)).to(dtype)
        w = weight.to(dtype)
        shape = torch.Size((5, 12, 33))
        ref = (g @ w).reshape(shape)
        for limit, sparse in ((1.0, True), (0.0, False)):
            calls.clear()
            out = LinearTerm(g, w, Tuning(max_linear_grad_density=limit)).dense(shape, dtype)
            assert bool(calls) == sparse and out.dtype == dtype and out.shape == shape
            torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    empty = LinearTerm(torch.zeros(0, 7), weight).dense(torch.Size((0, 4, 33)), torch.float32)
    assert empty.shape == (0, 4, 33)


def test_peers_benchmark_starts_every_network_from_a_checkpoint(capsys, benchmark):
    """benchmarks/peers.py --cnn-weights: the checkpoint's weights in stbp's CNN and in a peer's
    (its Conv2d/Linear layers, in order); a checkpoint of another network, or no file, is one
    clear error."""
    from torch import nn

    from stbp import models

    bench = benchmark("peers")
    nets = bench.peer_nets
    path = pretrained.path("mnist-cnn")
    ours = models.cnn(seed=5, decay=0.1, threshold=0.5)
    peer = nn.Sequential(nn.Conv2d(1, 15, 5, padding=2), nn.ReLU(), nn.Conv2d(15, 40, 5, padding=2),
                         nn.Flatten(), nn.Linear(1960, 300), nn.Linear(300, 10))
    want = list(pretrained.load("mnist-cnn").parameters())
    for net in (ours, peer):
        assert nets.load_weights(net, str(path)) >= 1
        got = [t for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               for t in (m.weight, m.bias)] if net is peer else list(net.parameters())
        assert len(got) == len(want) == 8
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(SystemExit, match="--mlp-weights .*not this network's"):
        nets.load_weights(models.mlp([784, 800, 10], seed=0, decay=0.1, threshold=0.5), str(path),
                          "--mlp-weights")
    for argv, message in (
            (["--cnn", "--cnn-weights", "/nonexistent/last.pt"],
             "--cnn-weights: checkpoint /nonexistent/last.pt: no such file"),
            (["--mlp-weights", str(path)], f"--mlp-weights {path}: its layers")):
        with pytest.raises(SystemExit) as err:
            bench.main([*argv, "--input", "noise"])
        assert err.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("n,cin,cout,h,w,k,pad", [
    (3, 1, 4, 8, 8, 5, 2), (2, 3, 5, 9, 7, 3, 0), (2, 15, 40, 14, 14, 5, 2),
    (1, 17, 3, 6, 6, 3, 1), (2, 2, 3, 5, 6, 1, 0), (2, 2, 2, 4, 4, 3, 3)])
@pytest.mark.parametrize("dtype,divisor", [(torch.float32, 1), (torch.float32, 4), (torch.float64, 1)])
def test_weight_grad_by_error_matches_conv2d_weight(n, cin, cout, h, w, k, pad, dtype, divisor, monkeypatch):
    """∂L/∂W and ∂L/∂b summed over the error's nonzero values: torch's, for byte inputs (value =
    code / divisor) and errors from silent to dense; the same bits for any thread count."""
    gen = torch.Generator().manual_seed(n + cin * 7 + k)
    codes = (torch.rand(n, cin, h, w, generator=gen) < 0.3).to(torch.uint8) * divisor
    codes[0, 0, 0, 0] = 3 * (divisor > 1) or 1
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    shape = torch.Size((cout, cin, k, k))
    x = codes.to(dtype) / divisor
    for rate in (0.0, 0.05, 0.4, 1.0):
        g = _error(n, cout, ho, wo, rate, gen, dtype)
        gw, gb = sparse_conv.weight_grad_by_error(codes, g, shape, pad, divisor)
        assert gw.dtype == dtype and gw.shape == shape and gw.is_contiguous()
        tol = 1e-4 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(gw, torch.nn.grad.conv2d_weight(x, shape, g, 1, pad), rtol=tol, atol=tol)
        torch.testing.assert_close(gb, g.sum((0, 2, 3)), rtol=tol, atol=tol)
        for threads in (1, 2):
            monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
            again = sparse_conv.weight_grad_by_error(codes, g, shape, pad, divisor)
            assert torch.equal(again[0], gw) and torch.equal(again[1], gb)
        monkeypatch.undo()


def test_the_weight_gradient_is_summed_over_whichever_is_fewer(monkeypatch):
    """The inputs' events times Cout against the error's nonzero values times Cin (padded):
    a sparse error takes the error's path, a dense one the inputs'; both F.conv2d's."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.rand(6, 2, 9, 9, generator=gen) < 0.3).to(torch.uint8)
    w = torch.randn(24, 2, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(24, generator=gen, requires_grad=True)
    taken = []
    by_error, by_input = sparse_conv.weight_grad_by_error, sparse_conv.weight_grad
    monkeypatch.setattr(sparse_conv, "weight_grad_by_error",
                        lambda *a: taken.append("error") or by_error(*a))
    monkeypatch.setattr(sparse_conv, "weight_grad", lambda *a: taken.append("input") or by_input(*a))
    ref = F.conv2d(x.float(), w, b, 1, 1)
    for rate, path in ((0.02, "error"), (1.0, "input")):
        err = _error(6, 24, 9, 9, rate, gen, silent_planes=0.0)
        taken.clear()
        ours = events.conv2d(x, w, b, 1, 1)
        got = torch.autograd.grad(ours, (w, b), err)
        assert taken == [path]
        for a, r in zip(got, torch.autograd.grad(ref, (w, b), err, retain_graph=True), strict=True):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)
