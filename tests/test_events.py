"""Event-driven synapses for byte spikes: F.linear's current and gradients from summed columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stbp import encoding, layers, models
from stbp.errors import StbpError
from stbp.functional import Spikes, events, synapse
from stbp.kernels import sparse_conv, sparse_linear
from stbp.kernels.runtime import TUNING, Tuning
from stbp.loss import rate_mse

NEURON = dict(decay=0.1, threshold=0.5)


def _bytes(*shape, rate=0.1, seed=0, high=1):
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(*shape, generator=g) < rate
    values = torch.randint(1, high + 1, shape, generator=g)
    return (on * values).to(torch.uint8)


def _grads(fn, x, w, b):
    w = w.clone().requires_grad_()
    b = None if b is None else b.clone().requires_grad_()
    out = fn(x, w, b)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(g)
    return out.detach(), w.grad, None if b is None else b.grad


def _reference(x, w, b):
    return F.linear(x.to(w.dtype), w, b)


@pytest.mark.parametrize("shape", [(30, 20, 97), (1, 1, 5), (7, 3, 40), (2, 64)])
@pytest.mark.parametrize("high", [1, 5])  # spikes, and event counts up to 5
@pytest.mark.parametrize("bias", [True, False])
def test_matches_f_linear(shape, high, bias):
    x = _bytes(*shape, high=high)
    w = torch.randn(13, shape[-1])
    b = torch.randn(13) if bias else None
    ours = _grads(events.linear, x, w, b)
    ref = _grads(_reference, x, w, b)
    assert ours[0].shape == ref[0].shape and ours[0].dtype == torch.float32
    for a, r in zip(ours, ref, strict=True):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_bool_float64_and_no_gradients():
    x = _bytes(6, 4, 50).bool()
    w = torch.randn(9, 50, dtype=torch.float64)
    b = torch.randn(9, dtype=torch.float64)
    ours = _grads(events.linear, x, w, b)
    ref = _grads(_reference, x, w, b)
    assert ours[0].dtype == torch.float64
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        out = events.linear(x, w.requires_grad_(), b)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(30, 20, 97), (7, 3, 40)])
def test_float_spikes_run_event_driven_with_f_linear_gradients(shape):
    """Float 0/1 spikes — ``(torch.rand(...) < p).float()``, what PyTorch users write — and
    event counts as floats run event-driven (found in one pass over the values), with F.linear's
    current and gradients, the input's own gradient included when it asks for one."""
    x = _bytes(*shape, high=3).float().requires_grad_()
    w, b = torch.randn(13, shape[-1], requires_grad=True), torch.randn(13, requires_grad=True)
    err = torch.randn(*shape[:-1], 13, generator=torch.Generator().manual_seed(1))
    ours = synapse.linear(x, w, b)
    assert type(ours.grad_fn).__name__ == "_EventLinearBackward"
    ref = F.linear(x, w, b)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(torch.autograd.grad(ours, (x, w, b), err),
                    torch.autograd.grad(ref, (x, w, b), err), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)
    assert events.linear(x.detach() + 0.5, w) is None  # not whole numbers: the dense path
    assert events.linear(x.detach() * 300, w) is None  # beyond a byte: the dense path


def test_float_spike_images_run_event_driven_with_f_conv2d_gradients():
    x = _bytes(6, 2, 9, 9, rate=0.15).float().requires_grad_()
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 2, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    ours = synapse.conv2d(x, w, b, 1, 1)
    assert type(ours.grad_fn).__name__ == "_EventConv2dBackward"
    ref = F.conv2d(x, w, b, 1, 1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    err = torch.randn(ref.shape, generator=g)
    for a, r in zip(torch.autograd.grad(ours, (x, w, b), err),
                    torch.autograd.grad(ref, (x, w, b), err), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


def test_silent_rows_inputs_and_all_silent():
    x = _bytes(10, 30, rate=0.2)
    x[3] = 0  # a row with no spike: the current is the bias
    x[:, 5:9] = 0  # inputs that never spike: their weight gradient is zero
    w, b = torch.randn(4, 30), torch.randn(4)
    out, gw, gb = _grads(events.linear, x, w, b)
    torch.testing.assert_close(out[3], b.expand(4))
    assert torch.equal(gw[:, 5:9], torch.zeros(4, 4))
    zeros = torch.zeros(5, 30, dtype=torch.uint8)
    out, gw, _ = _grads(events.linear, zeros, w, b)
    torch.testing.assert_close(out, b.expand(5, 4))
    assert torch.equal(gw, torch.zeros_like(w))


def test_many_rows_and_columns_use_wide_indices():
    """Over 32,767 rows (or columns) the CSR's 2-byte indices widen; results stay exact."""
    x = _bytes(33_000, 6, rate=0.05)
    w, b = torch.randn(3, 6), torch.randn(3)
    ours, ref = _grads(events.linear, x, w, b), _grads(_reference, x, w, b)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)
    assert sparse_linear.to_csr(x).transpose().index.dtype == np.int32
    wide = _bytes(2, 33_000, rate=0.01)
    assert sparse_linear.to_csr(wide).index.dtype == np.int32
    w = torch.randn(2, 33_000)
    ours, ref = _grads(events.linear, wide, w, None), _grads(_reference, wide, w, None)
    for a, r in zip(ours, ref, strict=True):
        if a is not None:
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_csr_round_trip_and_transpose():
    x = _bytes(9, 11, rate=0.4, high=3)
    c = sparse_linear.to_csr(x)
    dense = np.zeros((9, 11), np.uint8)
    for r in range(9):
        for j in range(c.indptr[r], c.indptr[r + 1]):
            dense[r, c.index[j]] = c.value[j]
    assert np.array_equal(dense, x.numpy()) and c.nnz == int((x > 0).sum())
    t = c.transpose()
    assert t.shape == (11, 9)
    back = np.zeros((11, 9), np.uint8)
    for r in range(11):
        rows = t.index[t.indptr[r]:t.indptr[r + 1]]
        assert np.all(np.diff(rows) > 0)  # rows in increasing order
        back[r, rows] = t.value[t.indptr[r]:t.indptr[r + 1]]
    assert np.array_equal(back, x.numpy().T)


def test_dense_input_and_other_cases_fall_back():
    w = torch.randn(3, 20)
    assert events.linear(_bytes(5, 20, rate=0.6), w) is None  # denser than Tuning.max_density
    assert events.linear(torch.rand(5, 20), w) is None  # not bytes
    assert events.linear(_bytes(0, 20), w) is None  # empty
    assert events.linear(_bytes(5, 20), w.to(torch.bfloat16)) is None
    assert events.linear(_bytes(5, 20), w, tuning=Tuning(max_density=0.0)) is None
    # synapse.linear then runs the dense matmul, with the same result
    x = _bytes(5, 20, rate=0.6)
    torch.testing.assert_close(synapse.linear(x, w), _reference(x, w, None))


def test_shape_mismatch_is_a_clear_error():
    w = torch.randn(8, 5)
    with pytest.raises(StbpError, match=r"input of shape \(2, 7\) does not fit a weight of shape \(8, 5\)"):
        events.linear(_bytes(2, 7, rate=0.2), w)
    with pytest.raises(StbpError, match="bias of shape"):
        events.linear(_bytes(2, 5, rate=0.2), w, torch.zeros(3))


def test_second_backward_with_retain_graph():
    x = _bytes(4, 3, 30, rate=0.2)
    w = torch.randn(5, 30, requires_grad=True)
    out = events.linear(x, w)
    out.sum().backward(retain_graph=True)
    first = w.grad.clone()
    out.sum().backward()
    torch.testing.assert_close(w.grad, 2 * first)


def test_synapse_dispatches_byte_spikes_unless_told_not_to():
    x, w = _bytes(3, 2, 40), torch.randn(6, 40, requires_grad=True)

    def kind(out):
        return type(out.grad_fn).__name__

    assert kind(synapse.linear(x, w)) == "_EventLinearBackward"
    assert kind(synapse.linear(x, w, events=False)) == "_LinearBackward"
    assert kind(synapse.linear(x.float(), w)) == "_EventLinearBackward"  # float 0/1: events
    assert kind(synapse.linear(x.float() * 0.5, w)) == "_LinearBackward"  # analog: dense
    assert kind(synapse.linear(x.double(), w.double())) == "_EventLinearBackward"
    # the reference path (backend="torch") keeps the dense matmul in the layers
    def synapse_kind(net):
        return type(net(x).grad_fn.next_functions[0][0]).__name__

    assert synapse_kind(models.mlp([40, 6], seed=0, backend="torch", **NEURON)) == "_LinearBackward"
    assert synapse_kind(models.mlp([40, 6], seed=0, **NEURON)) == "_EventLinearBackward"


def test_mnist_mlp_event_path_equals_dense_path(mnist):
    """Real digits as Bernoulli bytes through the MLP 784-800-10: the event-driven layers
    (bytes in, and hidden spikes carrying their bytes) give the dense path's spikes and, after
    a few Adam steps, the same weights."""
    images = mnist["train"].images[:64].float().div(255).flatten(1)
    labels = mnist["train"].labels[:64]
    x = encoding.bernoulli(images, 20, generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    assert 0.05 < x.float().mean() < TUNING.max_density  # MNIST's density: the event path runs
    results = []
    for use_events in (True, False):
        net = models.mlp([784, 800, 10], seed=0, **NEURON)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        spikes, losses = [], []
        for _ in range(3):
            current = synapse.linear(x, net[1].synapse.weight, net[1].synapse.bias,
                                     events=use_events)
            hidden = net[1].neuron.fire(current, overwrite=True, as_spikes=use_events)
            out = net[2].neuron.fire(synapse.linear(  # hidden spikes: events, or dense
                hidden, net[2].synapse.weight, net[2].synapse.bias, events=use_events))
            loss = rate_mse(out, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            spikes.append(out.detach())
            losses.append(loss.item())
        results.append((spikes, losses, [p.detach().clone() for p in net.parameters()]))
    (s1, l1, p1), (s2, l2, p2) = results
    assert s1[0].sum() > 0
    assert torch.equal(s1[0], s2[0])  # the first forward: identical spikes
    np.testing.assert_allclose(l1, l2, rtol=1e-4)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_weight_gradient_summed_over_row_chunks():
    """The weight gradient is summed over chunks of rows (to stay in the cache): the same
    result for any chunk size, including a last, partial chunk."""
    x = _bytes(1000, 50, rate=0.15, high=3)
    w, b = torch.randn(7, 50), torch.randn(7)
    ref = _grads(_reference, x, w, b)
    for cache_bytes in (1, 300 * 7 * 4, 1 << 30):  # 256-row chunks, 300-row chunks, one chunk
        tuning = Tuning(private_bytes=0, cache_bytes=cache_bytes)  # not the narrow-result path
        ours = _grads(lambda *a, t=tuning: events.linear(*a, tuning=t), x, w, b)
        torch.testing.assert_close(ours[1], ref[1], rtol=1e-5, atol=1e-4)
    c = sparse_linear.to_csr(x)
    part = c.rows(300, 700)
    assert part.shape == (400, 50) and part.indptr[0] == 0
    assert np.array_equal(part.matmul(w.t().contiguous().numpy()),
                          c.matmul(w.t().contiguous().numpy())[300:700])


# ------------------------------------------------------------------- hidden spikes as Spikes
def _hidden(seed=0, steps=6, batch=5, n=40):
    g = torch.Generator().manual_seed(seed)
    current = (torch.randn(steps, batch, n, generator=g) * 0.4).requires_grad_()
    lif = layers.LIF(**NEURON)
    return current, lif.fire(current * 1.0, overwrite=True, as_spikes=True)


def test_hidden_spikes_run_event_driven_with_the_dense_gradients():
    w, b = torch.randn(7, 40), torch.randn(7)
    results = []
    for use_events in (True, False):
        current, spikes = _hidden()
        assert isinstance(spikes, Spikes)
        assert 0 < spikes.detach().mean() < TUNING.max_density  # the next layer sums events
        wp, bp = w.clone().requires_grad_(), b.clone().requires_grad_()
        out = synapse.linear(spikes, wp, bp, events=use_events)
        assert (type(out.grad_fn).__name__ == "_EventLinearBackward") == use_events
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)))
        results.append((out.detach(), wp.grad, bp.grad, current.grad))
    for a, r in zip(*results, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    assert results[0][3].abs().sum() > 0  # the gradient reached the current through the LIF


@pytest.mark.parametrize("how", ["grad", "retain", "hook"])
def test_the_gradient_on_hidden_spikes_is_read_from_their_floats(how):
    """A user who wants the gradient on hidden spikes asks for their floats
    (``Spikes.float()``) and reads it there — autograd.grad, retain_grad or a hook."""
    w = torch.randn(7, 40)
    err = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(3))
    current, spikes = _hidden()
    floats = spikes.float()
    if how == "retain":
        floats.retain_grad()
    out = synapse.linear(floats, w)
    expected = (err.reshape(-1, 7) @ w).reshape(spikes.shape)
    if how == "grad":
        (got,) = torch.autograd.grad(out, floats, err)
    elif how == "hook":
        seen = []
        floats.register_hook(seen.append)
        out.backward(err)
        got = seen[0]
    else:
        out.backward(err)
        got = floats.grad
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_parameters_are_contiguous_for_flat_views_and_lbfgs():
    """Parameters (and their gradients) stay plain contiguous tensors: parameters_to_vector
    and LBFGS (which view them flat) work on the default path."""
    net = models.mlp([784, 30, 10], seed=0, **NEURON)
    x = _bytes(4, 3, 784, rate=0.1)
    labels = torch.tensor([1, 2, 3])
    opt = torch.optim.LBFGS(net.parameters(), max_iter=2)

    def closure():
        opt.zero_grad()
        loss = rate_mse(net(x), labels)
        loss.backward()
        return loss

    opt.step(closure)
    assert all(p.is_contiguous() and p.grad.is_contiguous() for p in net.parameters())
    assert torch.nn.utils.parameters_to_vector(net.parameters()).numel() == sum(
        p.numel() for p in net.parameters())


def test_narrow_weight_gradient_is_summed_in_private_parts(monkeypatch):
    """An output layer's small ∂L/∂Wᵀ is scattered into per-part copies: the same gradient as
    the chunked transpose path, and the same bits whatever the thread count."""
    x = _bytes(997, 60, rate=0.1, high=2)  # a row count that does not split evenly
    w, b = torch.randn(10, 60), torch.randn(10)
    ref = _grads(_reference, x, w, b)
    grads = []
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        grads.append(_grads(events.linear, x, w, b)[1])
    torch.testing.assert_close(grads[0], ref[1], rtol=1e-5, atol=1e-4)
    assert torch.equal(grads[0], grads[1])


def test_pool_larger_than_the_image_is_f_avg_pool2d_error():
    lif = layers.LIF(**NEURON)
    for spikes in (lif(torch.randn(2, 1, 2, 3, 5)), lif(torch.randn(2, 1, 2, 3, 5), as_spikes=True)):
        with pytest.raises(RuntimeError):
            layers.AvgPool2d(4)(spikes)


@pytest.mark.parametrize("shape,cout,k,pad", [((7, 1, 12, 11), 5, 5, 2), ((4, 3, 9, 9), 4, 3, 0),
                                              ((3, 2, 6, 6), 16, 3, 1), ((2, 1, 4, 4), 3, 5, 2),
                                              ((3, 2, 5, 6), 3, 1, 0), ((2, 2, 5, 5), 33, 3, 3)])
@pytest.mark.parametrize("high", [1, 3])
def test_event_conv_matches_f_conv2d(shape, cout, k, pad, high, monkeypatch):
    """Event-driven convolution of byte spikes (and counts): F.conv2d's current and weight and
    bias gradients, the weight gradient the same bits for any thread count."""
    x = _bytes(*shape, rate=0.15, high=high)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(cout, shape[1], k, k, generator=g, requires_grad=True)
    b = torch.randn(cout, generator=g, requires_grad=True)
    ours = synapse.conv2d(x, w, b, 1, pad)
    assert type(ours.grad_fn).__name__ == "_EventConv2dBackward"
    _check_conv(ours, x, w, b, pad, g, monkeypatch)


@pytest.mark.parametrize("steps", [0, 2])
def test_event_conv_in_float64_matches_f_conv2d(steps):
    """A float64 weight: the event-driven forward (over the changes along time too) and its
    weight and bias gradients are F.conv2d's in float64."""
    x = _bytes(4, 2, 7, 6, rate=0.2, high=3)
    g = torch.Generator().manual_seed(8)
    w = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    ours = synapse.conv2d(x, w, b, 1, 1, steps=steps)
    assert type(ours.grad_fn).__name__ == "_EventConv2dBackward" and ours.dtype == torch.float64
    ref = F.conv2d(x.double(), w, b, 1, 1)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    err = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, (w, b), err), torch.autograd.grad(ref, (w, b), err),
                    strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def _check_conv(ours, x, w, b, pad, g, monkeypatch, steps=0, **no_grad_tol):
    """``ours`` (the event-driven conv of ``x``) against F.conv2d: current, weight and bias
    gradients, the graph-free path, and the weight and bias gradients' bits for 1 and 2 threads
    (both summed in the same fixed parts)."""
    ref = F.conv2d(x.float(), w, b, 1, pad)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    err = torch.randn(ours.shape, generator=g)
    gw, gb = torch.autograd.grad(ours, (w, b), err)
    rw, rb = torch.autograd.grad(ref, (w, b), err)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-4)  # sums in any order (threads)
    with torch.no_grad():
        torch.testing.assert_close(events.conv2d(x, w, b, 1, pad, steps=steps), ref.detach(),
                                   **no_grad_tol)
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        again_w, again_b = torch.autograd.grad(synapse.conv2d(x, w, b, 1, pad, steps=steps), (w, b), err)
        assert torch.equal(again_w, gw) and torch.equal(again_b, gb)  # fixed parts, any threads


def test_event_conv_falls_back_where_it_does_not_apply():
    w = torch.randn(4, 1, 3, 3)
    x = _bytes(2, 1, 8, 8, rate=0.1)
    assert events.conv2d(x, w, None, stride=2) is None  # stride 1 only
    assert events.conv2d(x.float() * 0.3, w) is None  # analog floats: the dense convolution
    assert events.conv2d(_bytes(2, 1, 8, 8, rate=0.6), w) is None  # too dense
    assert events.conv2d(_bytes(2, 2, 8, 8), w) is None  # channel mismatch: F.conv2d's error
    dense = synapse.conv2d(x, w, None, 1, 1, events=False)
    torch.testing.assert_close(dense, F.conv2d(x.float(), w, None, 1, 1))


def test_scaled_input_leaves_a_one_output_weight_alone():
    """Pooled input (divisor 4) into a layer of one output: Wᵀ of a [1, in] weight is W's own
    memory, and the scaling must not be done in place."""
    w = torch.randn(1, 12)
    keep = w.clone()
    codes = _bytes(3, 2, 12, rate=0.2, high=4)
    out = events.linear(Spikes(codes, torch.float32, divisor=4), w, None)
    assert torch.equal(w, keep)
    torch.testing.assert_close(out, F.linear(codes.float() * 0.25, w))


# ------------------------------------------------------------- sums over the changes along time
def _slow_spikes(steps, batch, cols, seed=0, high=1, flip=0.05):
    """Spike trains that change at few inputs from one step to the next (as Bernoulli-coded
    digits do, whose saturated strokes spike at every step): each input flips with ``flip``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(steps, batch, cols, dtype=torch.uint8)
    x[0] = (torch.rand(batch, cols, generator=g) < 0.2) * torch.randint(1, high + 1, (batch, cols),
                                                                       generator=g)
    for t in range(1, steps):
        flips = torch.rand(batch, cols, generator=g) < flip
        fresh = (torch.rand(batch, cols, generator=g) < 0.2) * torch.randint(
            1, high + 1, (batch, cols), generator=g)
        x[t] = torch.where(flips, fresh.to(torch.uint8), x[t - 1])
    return x


@pytest.mark.parametrize("wide", [False, True])  # the private-parts and the chunked path
@pytest.mark.parametrize("high", [1, 4])  # spikes, and pooled window sums / event counts
def test_sums_over_changes_along_time_match_f_linear(wide, high, monkeypatch):
    """Spikes that change little from step to step are summed over their changes
    (out^t = out^{t−1} + Δ^t W) and the weight gradient over suffix sums of the error; both
    equal F.linear's, with and without a graph, over any chunking of the rows."""
    out_features = 30 if wide else 7
    private = 0 if wide else TUNING.private_bytes
    x = _slow_spikes(9, 13, 50, high=high)
    used = []
    real = sparse_linear.csr_changes
    monkeypatch.setattr(sparse_linear, "csr_changes", lambda *a, **k: used.append(1) or real(*a, **k))
    w, b = torch.randn(out_features, 50), torch.randn(out_features)
    ref = _grads(_reference, x, w, b)
    for cache_bytes in (1, 5 * out_features * 4 * 9, 1 << 30):  # chunks of 2, 5, all samples
        tuning = Tuning(private_bytes=private, cache_bytes=cache_bytes)
        ours = _grads(lambda *a, t=tuning: events.linear(*a, tuning=t), x, w, b)
        for a, r in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(events.linear(x, w, b), ref[0], rtol=1e-5, atol=1e-4)
    assert len(used) == 4
    used.clear()  # the plain sums: same results
    plain = _grads(lambda *a: events.linear(*a, tuning=Tuning(changes_ratio=0.0)), x, w, b)
    assert not used
    for a, r in zip(plain, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


def test_changes_are_used_only_where_fewer_than_the_spikes(mnist):
    """Bernoulli-coded real digits change at about a third of their spikes from one step to
    the next: their sums run over the changes; independent noise (more changes than spikes),
    a single step, and rows without a time axis do not."""
    images = mnist["train"].images[:50].float().div(255).flatten(1)
    x = encoding.bernoulli(images, 30, generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    rows = sparse_linear.byte_rows(x)
    counts = sparse_linear.nonzero_counts(rows)
    changes = sparse_linear.change_counts(rows, x.shape, counts)
    assert changes is not None and 0.2 < changes.sum() / counts.sum() < 0.5
    noise = _bytes(30, 50, 784, rate=0.13)
    rows_n = sparse_linear.byte_rows(noise)
    assert sparse_linear.change_counts(rows_n, noise.shape, sparse_linear.nonzero_counts(rows_n)) is None
    assert sparse_linear.change_counts(rows[:50], x[:1].shape, counts[:50]) is None
    assert sparse_linear.change_counts(rows, torch.Size((1500, 784)), counts) is None


def test_changes_weight_gradient_does_not_depend_on_the_thread_count(monkeypatch):
    x = _slow_spikes(8, 11, 60)
    w, b = torch.randn(10, 60), torch.randn(10)
    grads = []
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        grads.append(_grads(events.linear, x, w, b)[1])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("high", [1, 4])
def test_event_conv_over_changes_along_time_matches_f_conv2d(high, monkeypatch):
    """Images that are T steps of slowly changing spike maps: the event-driven convolution
    runs each sample's sums on over time, adding the changes, and its weight gradient over
    suffix sums of the error — F.conv2d's results, the same bits for any thread count."""
    steps, batch, cin, size = 7, 5, 3, 9
    x = _slow_spikes(steps, batch, cin * size * size, high=high).reshape(
        steps * batch, cin, size, size)
    seen = []
    real = sparse_conv.forward
    monkeypatch.setattr(sparse_conv, "forward", lambda *a: seen.append(a[5]) or real(*a))
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, cin, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    ours = synapse.conv2d(x, w, b, 1, 1, steps=steps)
    assert seen == [steps]
    _check_conv(ours, x, w, b, 1, g, monkeypatch, steps, rtol=1e-5, atol=1e-5)
    seen.clear()  # independent noise changes more often than it spikes: the plain sums
    synapse.conv2d(_bytes(steps * batch, cin, size, size, rate=0.15), w, b, 1, 1, steps=steps)
    assert seen == [0]


def test_dense_float_spikes_are_read_once_and_saved_as_bytes(monkeypatch):
    """Float 0/1 input too dense to sum (50 % here) takes the dense matmul, from the bytes
    found in the one pass over its values — not checked again to be saved."""
    from stbp.kernels import pack as pack_kernel

    calls = []
    real = pack_kernel.pack
    monkeypatch.setattr(pack_kernel, "pack", lambda *a: calls.append(1) or real(*a))
    x = _bytes(6, 5, 50, rate=0.5).float()
    w = torch.randn(7, 50, requires_grad=True)
    out = synapse.linear(x, w)
    assert type(out.grad_fn).__name__ == "_LinearBackward" and len(calls) == 1
    saved = out.grad_fn.saved_tensors[0]
    assert saved.dtype == torch.uint8 and torch.equal(saved.float(), x.reshape(-1, 50))
    ref = F.linear(x, w)
    torch.testing.assert_close(out, ref)
    err = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.autograd.grad(out, w, err)[0],
                               torch.autograd.grad(ref, w, err)[0], rtol=1e-5, atol=1e-5)
