"""The bfloat16 paths under ``torch.autocast`` (``[train] precision = "bf16"``): which layers take
them, and that they give float32's results up to bfloat16 rounding."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from stbp import encoding, models
from stbp.functional import events, synapse
from stbp.kernels import runtime
from stbp.kernels.runtime import HAVE_NUMBA, TUNING, Tuning
from stbp.loss import rate_mse

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="the event-driven paths need numba")


def _bytes(*shape, rate, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < rate).to(torch.uint8)


NATIVE = Tuning(native_bf16=True)  # the bfloat16 paths, whatever CPU the tests run on


def test_density_limit_by_dtype_and_width():
    t = NATIVE
    assert t.density_limit(torch.float32, 800) == t.max_density
    assert t.density_limit(torch.bfloat16, 800) == t.max_density_bf16 < t.max_density
    assert t.density_limit(torch.bfloat16, t.min_fan_out_bf16 - 1) == t.max_density  # a readout
    assert t.density_limit(torch.bfloat16) == t.max_density  # a convolution
    assert t.grad_density_limit(torch.bfloat16) == t.max_grad_density_bf16
    assert t.dense_dtype(torch.bfloat16) == torch.bfloat16


def test_without_native_bfloat16_the_fast_paths_stay_float32():
    """On a CPU that emulates bfloat16 the event sums run at any density and the dense
    gradient on a convolution's input in float32; float32 layers are unaffected."""
    t = Tuning(native_bf16=False)
    assert t.density_limit(torch.bfloat16, 800) == t.density_limit(torch.bfloat16) == 1.0
    assert t.density_limit(torch.float32, 800) == t.max_density
    assert t.dense_dtype(torch.bfloat16) == t.dense_dtype(torch.float32) == torch.float32
    assert t.grad_density_limit(torch.bfloat16) == t.max_grad_density


def test_cpu_flags_and_native_bfloat16(tmp_path, monkeypatch):
    """The flags come from /proc/cpuinfo's first "flags" (x86) or "Features" (Arm) line;
    an unreadable file means none (not Linux), so no native bfloat16."""
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert runtime.cpu_flags(str(x86)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert "bf16" in runtime.cpu_flags(str(arm))
    assert runtime.cpu_flags(str(tmp_path / "missing")) == frozenset()
    read = runtime.cpu_flags.__wrapped__  # uncached: a file per case
    for path, native in ((x86, True), (arm, True), (old, False), (tmp_path / "missing", False)):
        monkeypatch.setattr(runtime, "cpu_flags", lambda p=str(path): read(p))
        assert runtime.native_bf16() is native, path
        assert Tuning().bf16_is_native() is native


def test_bf16_precision_warns_on_a_cpu_without_native_bfloat16(monkeypatch):
    from stbp.runs import autocast

    runtime.warn_once.cache_clear()
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="precision = 'bf16' on a CPU without native bfloat16"):
        with autocast("bf16", "cpu"):
            pass
    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    runtime.warn_once.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with autocast("bf16", "cpu"), autocast("fp32", "cpu"):
            pass


def test_compute_dtype_follows_autocast():
    w = torch.zeros(3, 4)
    assert events.compute_dtype(w) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert events.compute_dtype(w) == torch.bfloat16
        assert events.compute_dtype(w.double()) == torch.float64  # autocast leaves float64 alone
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert events.compute_dtype(w) == torch.float32


def _run(x, w, b, tuning=NATIVE):
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    out = synapse.linear(x, w, b, tuning=tuning)
    err = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.float().backward(err)
    return out, w.grad, b.grad


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32])
def test_dense_spikes_take_the_bfloat16_matmul(dtype):
    """Spikes denser than ``max_density_bf16`` run one bfloat16 matmul (spikes are exact in it;
    the weight and the result are rounded to 8 bits); sparser ones, and a narrow readout, keep
    the event sums, exact in float32. Weight gradients are summed in float32 either way."""
    w, b = torch.randn(100, 64) * 0.1, torch.randn(100) * 0.1
    dense = _bytes(30, 8, 64, rate=0.3).to(dtype)
    sparse = _bytes(30, 8, 64, rate=0.1).to(dtype)
    assert TUNING.max_density_bf16 < 0.3 and 0.1 < TUNING.max_density_bf16
    ref = _run(dense.float(), w, b)  # float32, outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _run(dense, w, b)
        kept = _run(sparse, w, b)
        narrow = _run(dense, w[:10], b[:10])
        emulated = _run(dense, w, b, Tuning(native_bf16=False))  # the event sums at any density
    assert ours[0].dtype == torch.bfloat16 and type(ours[0].grad_fn).__name__ == "_LinearBackward"
    assert kept[0].dtype == torch.float32 and type(kept[0].grad_fn).__name__ == "_EventLinearBackward"
    assert narrow[0].dtype == emulated[0].dtype == torch.float32
    assert type(emulated[0].grad_fn).__name__ == "_EventLinearBackward"
    for got, want in zip(emulated, ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kept[0], F.linear(sparse.float(), w, b), rtol=1e-5, atol=1e-5)
    # bfloat16 keeps 8 bits: a current of ~1 is good to ~1 %, a gradient sum likewise
    torch.testing.assert_close(ours[0].float(), ref[0], rtol=0, atol=3e-2)
    assert ours[1].dtype == ours[2].dtype == torch.float32
    for got, want in zip(ours[1:], ref[1:], strict=True):
        assert (got - want).norm() <= 1e-2 * want.norm()


@pytest.mark.parametrize("native", [True, False])
def test_conv_input_gradient_in_bfloat16_on_real_digits(mnist, native, monkeypatch):
    """Under autocast the CNN's forward is unchanged (event sums in float32: the same spikes)
    and so are the gradients of every layer above the second convolution; its transposed
    convolution (the gradient to the first layer) runs in bfloat16 on a CPU with native
    bfloat16, so the first layer's gradients differ from float32's by rounding alone — and
    in float32 on one without, so that they are float32's."""
    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    images = mnist["val"].images[:8].float().div(255).unsqueeze(1)
    x = encoding.bernoulli(images, 8, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = mnist["val"].labels[:8]
    runs = []
    for bf16 in (False, True):
        net = models.cnn(channels=(6, 12), hidden=(50,), seed=0, decay=0.2, threshold=0.3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        rate_mse(out, labels).backward()
        runs.append((out.detach(), [(n, p.grad) for n, p in net.named_parameters()]))
    (out32, grads32), (out16, grads16) = runs
    assert out32.sum() > 0 and torch.equal(out32, out16)
    first = {"0.synapse.weight", "0.synapse.bias"}
    assert first <= {n for n, _ in grads32}
    for (name, g32), (_, g16) in zip(grads32, grads16, strict=True):
        if name in first and native:
            assert not torch.equal(g32, g16)  # the bfloat16 transposed convolution ran
            assert (g16 - g32).norm() <= 2e-2 * g32.norm(), name
        else:
            assert torch.equal(g32, g16), name


@pytest.mark.parametrize("args,message", [
    (["--nets", "mlp,cnn"], "--nets: unknown mlp"),
    (["--train", "0"], "--train must be in 1..55000"),
    (["--val", "6000"], "--val in 1..5000"),
])
def test_precision_benchmark_refuses_bad_options(args, message, capsys, benchmark):
    """benchmarks/precision.py names the option that is wrong before it loads any data."""
    bench = benchmark("precision")
    with pytest.raises(SystemExit) as err:
        bench.main(args)
    assert err.value.code == 2 and message in capsys.readouterr().err
