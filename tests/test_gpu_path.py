"""The torch.compile backend (the GPU path) and device placement.

On the CPU the compiled path is checked against the eager reference here; the CUDA tests run
wherever a GPU is present and are skipped (saying so) elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from stbp.errors import StbpError
from stbp.functional import lif
from stbp.kernels import lif_compiled

CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA GPU here: the GPU path is tested where one is present")


def _current(shape, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 0.6 + 0.25
    return x.to(device).requires_grad_(True)


def _compare(x, **kw):
    s_c, u_c = lif(x, backend="compile", return_membrane=True, **kw)
    s_e, u_e = lif(x, backend="torch", return_membrane=True, **kw)
    near = (u_e - kw["threshold"]).abs() < 1e-5  # a spike may differ only at the threshold
    assert torch.equal(s_c[~near], s_e[~near])
    assert torch.allclose(u_c, u_e, atol=1e-5)
    assert 0 < s_e.mean() < 1
    g = torch.randn_like(s_e)
    (a,) = torch.autograd.grad((s_c * g).sum() + u_c.sum(), x)
    (b,) = torch.autograd.grad((s_e * g).sum() + u_e.sum(), x)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("surrogate,reset,temporal", [
    ("polynomial", "zero", True), ("gaussian", "paper", False)])
def test_compiled_backend_matches_eager_on_cpu(surrogate, reset, temporal):
    x = _current((6, 3, 40), seed=3)
    why = lif_compiled._probe("cpu")
    if why is not None:
        pytest.skip(f"torch.compile cannot run on this machine: {why}")
    _compare(x, decay=0.3, threshold=0.4, surrogate=surrogate, width=0.8, reset=reset,
             temporal=temporal)


def test_compile_falls_back_with_a_warning():
    x = _current((4, 5))
    user = lambda v: torch.exp(-v * v)  # noqa: E731 - a surrogate torch.compile is not given
    with pytest.warns(RuntimeWarning, match="backend .compile. falls back to the .torch. backend"):
        s = lif(x, decay=0.5, threshold=0.3, surrogate=user, backend="compile")
    assert torch.equal(s, lif(x, decay=0.5, threshold=0.3, surrogate=user, backend="torch"))


def test_cuda_device_without_a_gpu_is_a_clear_error(monkeypatch):
    from stbp.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StbpError, match="device = 'cuda', but torch finds no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@CUDA
@pytest.mark.parametrize("surrogate,reset,temporal", [
    ("rectangular", "zero", True), ("polynomial", "paper", True), ("sigmoid", "zero", False)])
def test_compiled_backend_matches_eager_on_cuda(surrogate, reset, temporal):
    x = _current((30, 64, 500), seed=1, device="cuda")
    _compare(x, decay=0.1, threshold=0.5, surrogate=surrogate, width=1.0, reset=reset,
             temporal=temporal)


@CUDA
def test_gpu_agrees_with_the_cpu_kernels():
    x = _current((30, 32, 300), seed=2)
    kw = dict(decay=0.1, threshold=0.5, surrogate="polynomial", return_membrane=True)
    s_cpu, u_cpu = lif(x, backend="auto", **kw)
    xg = x.detach().cuda().requires_grad_(True)
    s_gpu, u_gpu = lif(xg, backend="auto", **kw)  # auto = the compiled path on a GPU
    near = (u_cpu - 0.5).abs() < 1e-5
    assert torch.equal(s_cpu[~near], s_gpu.cpu()[~near])
    g = torch.randn_like(s_cpu)
    (a,) = torch.autograd.grad((s_cpu * g).sum(), x)
    (b,) = torch.autograd.grad((s_gpu * g.cuda()).sum(), xg)
    assert torch.allclose(a, b.cpu(), atol=1e-4, rtol=1e-4)


@CUDA
def test_training_on_the_gpu_learns(mnist_dir, tmp_path):
    from stbp.config import load_config
    from stbp.train import train

    cfg = load_config("mnist-mlp", overrides=["model.sizes=[784, 100, 10]", "data.shift=0",
                                              "train.epochs=2", "train.device='cuda'"])
    s = train(cfg, tmp_path / "gpu", data_dir=mnist_dir, limit_train=1000, limit_eval=500,
              progress=False)
    assert s["device"].startswith("cuda")
    assert s["best_val_acc"] > 40, "a 784-100-10 STBP net must learn from 1000 digits on a GPU"


def test_compiled_backend_over_many_shapes_never_crashes():
    """Batch sizes and settings change during training and evaluation: the compiled path
    recompiles with the sizes symbolic (or, past any compiler limit, runs the eager code with
    a warning) — it never raises, and gives the eager spikes and gradients."""
    why = lif_compiled._probe("cpu")
    if why is not None:
        pytest.skip(f"torch.compile cannot run on this machine: {why}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fallback may warn; it must not raise
        for i, batch in enumerate(range(2, 13)):
            x = (torch.randn(5, batch, 7, generator=torch.Generator().manual_seed(i)) * 0.6
                 + 0.3).requires_grad_()
            kw = dict(decay=0.2 + 0.01 * (i % 3), threshold=0.3)
            s_c = lif(x, backend="compile", **kw)
            s_e = lif(x, backend="torch", **kw)
            assert torch.equal(s_c, s_e)
            g = torch.randn(s_c.shape, generator=torch.Generator().manual_seed(9))
            (a,) = torch.autograd.grad(s_c, x, g)
            (b,) = torch.autograd.grad(s_e, x, g)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
