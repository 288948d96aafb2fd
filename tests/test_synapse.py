"""Synaptic layers with compact saved state: same gradients as F.linear / F.conv2d, less memory."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from stbp import encoding, layers, models
from stbp.errors import StbpError
from stbp.functional import synapse
from stbp.functional.lif import LIFParams, lif_with
from stbp.kernels import pack as pack_kernel
from stbp.kernels.runtime import HAVE_NUMBA, Tuning
from stbp.loss import rate_mse

NEURON = dict(decay=0.1, threshold=0.5)


def _spikes(*shape, rate=0.5, seed=0):  # denser than Tuning.max_density: the dense path
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < rate).float()


# ------------------------------------------------------------------------------------ pack
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pack_is_exact_for_spikes_and_pooled_spikes(dtype):
    s = _spikes(6, 2, 3, 8, 8).to(dtype)
    codes = synapse.pack(s)
    assert codes is not None and codes.dtype == torch.uint8 and codes.shape == s.shape
    assert torch.equal(synapse.unpack(codes, dtype), s)
    for k in (2, 3):  # average pools of spikes: multiples of 1/4 and 1/9
        pooled = F.avg_pool2d(s.flatten(0, 2), k)
        c = synapse.pack(pooled)
        assert c is not None and torch.equal(synapse.unpack(c, dtype), pooled)
        assert torch.equal(synapse._pack_torch(pooled), c)


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([0.0, 0.3]),  # analog intensity
        torch.tensor([1.0, -1.0]),  # negative
        torch.tensor([8.0, 0.0]),  # above 255/36
        torch.tensor([float("nan"), 1.0]),
        torch.tensor([float("inf"), 1.0]),
        torch.tensor([1.0, 1 / 7]),  # not a multiple of 1/36
    ],
)
def test_pack_refuses_values_it_cannot_restore(bad):
    assert synapse.pack(bad) is None
    assert synapse._pack_torch(bad) is None
    big = torch.zeros(3 * pack_kernel.BLOCK + 5)
    big[-1] = bad[1] if bad[0] in (0.0, 1.0) else bad[0]  # one bad value in the last block
    assert synapse.pack(big) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_code_round_trips(dtype):
    codes = torch.arange(256, dtype=torch.uint8).repeat(300)  # several blocks
    values = synapse.unpack(codes, dtype)
    assert values.dtype == dtype and values[255] == pytest.approx(255 / 36)
    assert torch.equal(synapse.pack(values), codes)  # each value decodes to exactly its code
    assert synapse.unpack(codes[:0], dtype).shape == (0,)


def test_pack_empty_and_other_dtypes():
    assert synapse.pack(torch.zeros(0, 4)).shape == (0, 4)
    c = synapse.pack(torch.ones(3, dtype=torch.bfloat16))  # torch fallback
    assert c is not None and c.tolist() == [36, 36, 36]
    assert synapse.pack(torch.ones(3, dtype=torch.int64)) is None


# ------------------------------------------------------------------------------- gradients
def _grads(fn, x, w, b):
    x, w = x.detach().clone().requires_grad_(x.requires_grad), w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    out = fn(x, w, b)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(g)
    return out, x.grad, w.grad, b.grad if b is not None else None


@pytest.mark.parametrize("spiking", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear(spiking, input_grad, bias):
    x = _spikes(5, 4, 12) if spiking else torch.rand(5, 4, 12)
    x.requires_grad_(input_grad)
    w = torch.randn(7, 12)
    b = torch.randn(7) if bias else None
    tuning = Tuning(dense_chunk=64)  # several chunks in the weight gradient
    ours = _grads(lambda *a: synapse.linear(*a, tuning=tuning), x, w, b)
    ref = _grads(F.linear, x, w, b)
    assert torch.equal(ours[0], ref[0])
    assert (ours[1] is not None) == input_grad
    for a, r in zip(ours[1:], ref[1:], strict=True):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("stride,padding", [(1, 2), (2, 0)])
@pytest.mark.parametrize("input_grad", [True, False])
def test_conv2d_matches_f_conv2d(pool, stride, padding, input_grad):
    x = F.avg_pool2d(_spikes(9, 3, 12, 12), pool)
    x.requires_grad_(input_grad)
    w = torch.randn(4, 3, 5, 5)
    b = torch.randn(4)
    tuning = Tuning(conv_chunk=500)  # several chunks in the forward and the backward
    ours = _grads(lambda x, w, b: synapse.conv2d(x, w, b, stride, padding, tuning=tuning), x, w, b)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, stride, padding), x, w, b)
    assert torch.equal(ours[0], ref[0])
    assert (ours[1] is not None) == input_grad
    for a, r in zip(ours[1:], ref[1:], strict=True):
        assert (a is None) == (r is None)
        if a is not None:
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("chunk", [100, 500, 1 << 18])
def test_conv2d_without_gradient_matches_f_conv2d_in_chunks(chunk):
    """Analog input with no gradient wanted: the dense convolution a chunk of images at a
    time ([7, 2, 10, 10]: 200 values each; 100 and 500 leave one and two images per chunk,
    the last chunk short), the same values as one F.conv2d."""
    gen = torch.Generator().manual_seed(3)
    x, w, b = (torch.rand(7, 2, 10, 10, generator=gen), torch.randn(5, 2, 3, 3, generator=gen),
               torch.randn(5, generator=gen))
    with torch.no_grad():
        ours = synapse.conv2d(x, w, b, 1, 1, tuning=Tuning(conv_chunk=chunk))
    torch.testing.assert_close(ours, F.conv2d(x, w, b, 1, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
@pytest.mark.parametrize("rows", [20, 5000])
def test_byte_spikes_give_the_float_spikes_results(dtype, rows):
    """Spikes given as bytes: the same current and weight gradients as float spikes, the input
    kept as it is (no float copy), the forward converted chunk by chunk for many rows."""
    tuning = Tuning(dense_chunk=64 * 12, dense_min_rows=64)  # 64-row chunks
    x = _spikes(rows, 2, 12)
    w = torch.randn(7, 12)
    b = torch.randn(7)
    ours = _grads(lambda *a: synapse.linear(*a, events=False, tuning=tuning), x.to(dtype), w, b)
    ref = _grads(F.linear, x, w, b)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-6, atol=1e-6)
    assert ours[1] is None  # bytes have no gradient
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours[3], ref[3], rtol=1e-5, atol=1e-4)
    xc = _spikes(3, 2, 2, 9, 9).flatten(0, 1)
    wc = torch.randn(4, 2, 3, 3)
    ours = _grads(lambda x, w, b: synapse.conv2d(x, w, b, 1, 1), xc.to(dtype), wc, None)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, 1, 1), xc, wc, None)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[2], ref[2], rtol=1e-5, atol=1e-4)


def test_bernoulli_bytes_are_the_float_spikes_and_train_the_same(mnist):
    images = mnist["val"].images[:16].float().div(255).flatten(1)
    a = encoding.bernoulli(images, 8, generator=torch.Generator().manual_seed(0))
    b = encoding.bernoulli(images, 8, generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    assert b.dtype == torch.uint8 and torch.equal(a, b.float())
    labels = mnist["val"].labels[:16]
    grads = []
    for x in (a, b):
        net = models.mlp([784, 50, 10], seed=0, **NEURON)
        out = net(x)
        rate_mse(out, labels).backward()
        grads.append((out, [p.grad for p in net.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for g1, g2 in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_torch_autocast():
    x = _spikes(30, 8, 64)
    w = torch.randn(32, 64) * 0.1
    b = torch.randn(32) * 0.1
    native = functools.partial(synapse.linear, tuning=Tuning(native_bf16=True))  # on any CPU
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _grads(native, x, w, b)
        ref = _grads(F.linear, x, w, b)
    assert ours[0].dtype == ref[0].dtype == torch.bfloat16
    assert torch.equal(ours[0], ref[0])
    assert ours[2].dtype == torch.float32
    # ours sums the weight gradient in float32; autocast's one bf16 matmul rounds to 8 bits
    torch.testing.assert_close(ours[2], ref[2], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours[3], ref[3], rtol=2e-2, atol=2e-2)


def test_no_graph_when_nothing_needs_gradients():
    x, w = _spikes(3, 4), torch.randn(2, 4)
    with torch.no_grad():
        assert synapse.linear(x, w.requires_grad_()).grad_fn is None
    assert synapse.linear(x, w.detach()).grad_fn is None


# ------------------------------------------------------------------ LIF over its current
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_lif_overwrite_gives_the_same_spikes_and_gradients(backend):
    p = LIFParams(**NEURON, backend=backend)
    base = torch.randn(20, 4, 50)
    results = []
    for overwrite in (False, True):
        leaf = base.clone().requires_grad_()
        current = leaf * 1.0  # a temporary, as a layer's matmul output
        s, m = lif_with(current, p, return_membrane=True, overwrite=overwrite)
        (s * torch.linspace(0, 1, 50)).sum().backward()
        results.append((s, m, leaf.grad))
        if overwrite:
            assert torch.equal(current, m)  # the membrane took the current's place
        else:
            assert torch.equal(current, base)
    leaf = base.clone().requires_grad_()
    s = lif_with(leaf * 1.0, p, overwrite=True)  # ε written over the membrane
    (s * torch.linspace(0, 1, 50)).sum().backward()
    assert torch.equal(leaf.grad, results[0][2])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_second_backward_through_a_released_layer_is_a_clear_error():
    x = _spikes(5, 3, 20)
    for backend in ("auto", "torch"):
        net = models.mlp([20, 30, 4], seed=0, backend=backend, **NEURON)
        loss = net(x).sum() + net[1](x).sum()
        loss.backward(retain_graph=True)
        if backend == "torch":  # the eager path keeps its state: a second backward works
            loss.backward()
            continue
        with pytest.raises(StbpError, match="second time.*backend='torch'"):
            loss.backward()


# ----------------------------------------------------------------------- what is saved
def _saved_bytes(fn) -> tuple[dict, object]:
    kept: dict[torch.dtype, int] = {}

    def pack_hook(t):
        if t.dim() >= 2 and t.numel() > 1000:  # activations, not small parameters
            kept[t.dtype] = kept.get(t.dtype, 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        out = fn()
    return kept, out


def test_mlp_keeps_spikes_as_bytes(mnist):
    steps, batch = 10, 32
    images = mnist["val"].images[:batch].float().div(255).flatten(1)
    x = encoding.bernoulli(images, steps, generator=torch.Generator().manual_seed(0))
    labels = mnist["val"].labels[:batch]
    net = models.mlp([784, 800, 10], seed=0, **NEURON)
    kept, out = _saved_bytes(lambda: net(x))
    # float input spikes (found to be 0/1) and hidden spikes (bytes, stbp.functional.Spikes)
    # go event-driven and are kept as sparse lists on the nodes, not as saved tensors; the
    # membranes (800 + 10 neurons, four bytes each) are held by the neurons' origins
    assert torch.uint8 not in kept
    weights = 800 * 784 * 4 + 10 * 800 * 4
    assert kept[torch.float32] == weights
    hidden = out.grad_fn.next_functions[0][0]  # the output layer's synapses
    assert type(hidden).__name__ == "_EventLinearBackward"
    assert hidden.csr.nnz < steps * batch * 800 * 0.25  # under Tuning.max_density
    assert hidden.origin.membrane.shape == (steps, batch, 800)
    assert hidden.origin.membrane.dtype == torch.float32
    first = hidden.origin.input.grad_fn  # the hidden layer's synapses, over the input spikes
    assert type(first).__name__ == "_EventLinearBackward" and first.csr.nnz > 0
    rate_mse(out, labels).backward()  # and the backward runs from that state
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_layers_use_the_compact_path():
    lin = layers.Linear(6, 3, **NEURON)
    x = _spikes(4, 2, 6)  # too dense to sum: the dense matmul, the input saved as bytes
    kept, _ = _saved_bytes(lambda: lin(x.expand(4, 2, 6).clone().repeat(1, 100, 1)))
    assert torch.uint8 in kept
    assert HAVE_NUMBA  # the dependency is installed where the tests run


# ----------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("kernel,stride,size", [(2, 2, 28), (2, 2, 7), (3, 3, 10), (3, 2, 9)])
def test_avg_pool_saves_nothing_and_matches_f_avg_pool2d(kernel, stride, size):
    from stbp.functional.pool import avg_pool2d

    x = _spikes(6, 3, size, size)
    grads = []
    for fn in (avg_pool2d, F.avg_pool2d):
        leaf = x.clone().requires_grad_()
        kept, y = _saved_bytes(lambda fn=fn, leaf=leaf: fn(leaf * 1.0, kernel, stride))
        if fn is avg_pool2d:
            assert kept == {}  # no activation kept for the backward
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
        y.backward(g)
        grads.append((y, leaf.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])
