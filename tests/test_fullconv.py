"""A window network run over whole images (stbp.fullconv) and the detector's shared windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stbp import budget, layers
from stbp.config import load_config, resolve_dataset
from stbp.detect import Detector
from stbp.errors import StbpError
from stbp.fullconv import fully_convolutional
from stbp.models import cnn, mlp
from stbp.runs import build_model


def _dyadic(net, scale=4.0):
    """Weights on a 1/64 grid: with 0/1 inputs every sum is exact in float32, in any order, so
    the shared pass and the window pass give the same spikes bit for bit."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((p * scale * 64).round() / 64)
    return net


def _net(spiking=True, **kw):
    torch.manual_seed(0)
    settings = dict(decay=0.25, threshold=0.25)
    return _dyadic(cnn(channels=[4, 6], hidden=[12], classes=3, kernel_size=5, padding="valid",
                       spiking=spiking, init="default", **settings, **kw).eval())


@pytest.mark.parametrize("spiking", [True, False])
@pytest.mark.parametrize("hw", [(28, 28), (44, 36), (31, 57)])
def test_every_window_equals_the_window_network(spiking, hw):
    net = _net(spiking)
    fc = fully_convolutional(net)
    assert (fc.window, fc.stride) == (28, 4)
    h, w = hw
    x = (torch.rand(6, 2, 1, h, w, generator=torch.Generator().manual_seed(1)) < 0.4).to(torch.uint8)
    with torch.no_grad():
        out = fc.net(x)
        rows, cols = fc.windows(h, w)
        assert out.shape == (6, 2, 3, rows, cols)
        assert rows == (h - 28) // 4 + 1 and cols == (w - 28) // 4 + 1
        for i in range(rows):
            for j in range(cols):
                ref = net(x[:, :, :, 4 * i:4 * i + 28, 4 * j:4 * j + 28].contiguous())
                if spiking:
                    assert torch.equal(ref, out[:, :, :, i, j]), (i, j)
                else:  # ReLU values carry more bits than float32 keeps: summation order shows
                    torch.testing.assert_close(ref, out[:, :, :, i, j], rtol=1e-5, atol=1e-5)
    if spiking:
        assert 0.05 < float(out.mean()) < 0.95, "the check needs outputs that spike sometimes"


def test_every_second_window_equals_the_window_network():
    net = _net(True)
    fc = fully_convolutional(net, step=2)
    assert (fc.window, fc.stride) == (28, 8)
    x = (torch.rand(6, 1, 1, 53, 61, generator=torch.Generator().manual_seed(3)) < 0.4).to(torch.uint8)
    with torch.no_grad():
        out = fc.net(x)
        rows, cols = fc.windows(53, 61)
        assert out.shape[-2:] == (rows, cols) == (4, 5)
        for i in range(rows):
            for j in range(cols):
                ref = net(x[:, :, :, 8 * i:8 * i + 28, 8 * j:8 * j + 28].contiguous())
                assert torch.equal(ref, out[:, :, :, i, j]), (i, j)
    with pytest.raises(StbpError, match="step must be an integer >= 1"):
        fully_convolutional(net, step=0)


def test_float_input_and_a_copy_of_the_weights():
    net = _net(True)
    fc = fully_convolutional(net)
    x = (torch.rand(5, 1, 1, 32, 32) < 0.3).float()  # float 0/1 spikes, as users write them
    with torch.no_grad():
        ref = net(x[..., 4:32, 0:28].contiguous())
        assert torch.equal(fc.net(x)[..., 1, 0], ref)
        net[0].synapse.weight.mul_(0)  # the shared network holds its own copy
        assert torch.equal(fc.net(x)[..., 1, 0], ref)


def test_what_cannot_be_shared_is_refused():
    with pytest.raises(StbpError, match="padding = \"valid\""):
        fully_convolutional(cnn(channels=[4], hidden=[8], classes=2, decay=0.1, threshold=0.5))
    with pytest.raises(StbpError, match="no Flatten"):
        fully_convolutional(torch.nn.Sequential(torch.nn.Identity()))
    with pytest.raises(StbpError, match="must start with convolutions"):
        fully_convolutional(mlp([784, 10], decay=0.1, threshold=0.5))
    with pytest.raises(StbpError, match="neither a Conv2d nor an AvgPool2d"):
        fully_convolutional(torch.nn.Sequential(torch.nn.ReLU(), layers.Flatten()))


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_padding_setting_builds_what_budget_counts(padding):
    cfg = load_config("mnist-cnn", overrides=[f"model.padding='{padding}'"])
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == budget.parameter_count(cfg)
    inputs, neurons = budget.layer_sizes(cfg)
    x = torch.zeros(1, 1, 1, 28, 28, dtype=torch.uint8)
    seen = []
    for layer in model:
        x = layer(x)
        if hasattr(layer, "neuron"):
            seen.append(int(np.prod(x.shape[2:])))
    assert inputs == 784 and seen == neurons
    assert model[0].synapse.padding == ((2, 2) if padding == "same" else (0, 0))


def _detector(tmp_path, **kw):
    from PIL import Image

    for c in ("background", "object"):
        (tmp_path / "set" / c).mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28), 0).save(tmp_path / "set" / c / "a.png")
    cfg = resolve_dataset(load_config(
        "detect-cnn", dataset=f"folder:{tmp_path / 'set'}",
        overrides=["model.padding='valid'", "model.readout='rate'", "model.channels=[4, 6]",
                   "model.hidden=[12]",
                   "encoding.kind='direct'", "encoding.steps=4", "neuron.decay=0.25",
                   "neuron.threshold=0.25", "model.init='default'"]))
    torch.manual_seed(0)
    return Detector(_dyadic(build_model(cfg)), cfg, **kw)


@pytest.mark.parametrize("readout", ["rate", "current"])
def test_detector_shared_windows_equal_each_window(tmp_path, readout):
    """At a scale needing no resize, with exactly summed inputs (a 0/255 image, direct
    encoding), the shared pass scores exactly the windows the reference path crops one by one."""
    shared = _detector(tmp_path, scales=[28], stride=4 / 28, readout=readout)
    each = _detector(tmp_path, scales=[28], stride=4 / 28, windows="each", readout=readout)
    assert shared.windows == "shared" and each.windows == "each"
    rng = np.random.default_rng(0)
    image = (rng.random((1, 60, 52)) < 0.3).astype(np.uint8) * 255
    b1, s1, l1 = shared.score_windows(image)
    b2, s2, l2 = each.score_windows(image)
    order1, order2 = np.lexsort(b1.T[::-1]), np.lexsort(b2.T[::-1])
    assert np.array_equal(b1[order1], b2[order2])
    assert np.array_equal(s1[order1], s2[order2]) and np.array_equal(l1[order1], l2[order2])
    assert len(set(s1.tolist())) > 2, "the check needs windows that score differently"


def test_detector_pyramid_boxes_lie_in_the_image(tmp_path):
    det = _detector(tmp_path, scales=[24, 32, 42])
    image = np.random.default_rng(1).integers(0, 256, (1, 96, 80), dtype=np.uint8)
    boxes, scores, labels = det.score_windows(image)
    sides = boxes[:, 2] - boxes[:, 0]
    assert set(sides.tolist()) == {24, 32, 42} and np.array_equal(sides, boxes[:, 3] - boxes[:, 1])
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 80 and boxes[:, 3].max() <= 96
    for side, level in det.pyramid(image):  # every window of every level is scored
        rows, cols = det.shared.windows(*level.shape[-2:])
        assert (sides == side).sum() == rows * cols
    assert len(scores) == len(labels) == len(boxes)


def test_detector_windows_setting_is_checked(tmp_path):
    with pytest.raises(StbpError, match="windows must be one of"):
        _detector(tmp_path, windows="all")
    with pytest.raises(StbpError, match="readout must be one of"):
        _detector(tmp_path, readout="membrane")
    cfg = resolve_dataset(load_config("detect-cnn", dataset=f"folder:{tmp_path / 'set'}",
                                      overrides=["model.padding='same'"]))
    assert Detector(build_model(cfg), cfg).windows == "each"  # 'same' padding: no sharing
    with pytest.raises(StbpError, match="unpadded convolutions"):
        Detector(build_model(cfg), cfg, windows="shared")


def test_current_readout_is_graded_where_rates_tie(tmp_path):
    """The rate of T steps takes T + 1 values; the mean input current tells tied windows apart."""
    rate = _detector(tmp_path, scales=[28], stride=4 / 28)
    current = _detector(tmp_path, scales=[28], stride=4 / 28, readout="current")
    image = (np.random.default_rng(2).random((1, 80, 80)) < 0.3).astype(np.uint8) * 255
    _, s_rate, _ = rate.score_windows(image)
    _, s_cur, _ = current.score_windows(image)
    assert len(set(s_cur.tolist())) > len(set(s_rate.tolist()))
    assert ((0 < s_cur) & (s_cur < 1)).all()


def test_evaluate_groups_classes():
    """``evaluate(groups=...)``: right when the prediction falls in the label's group — all in one
    group is 100 %, one group per class is the plain accuracy, and between them it is between."""
    from stbp.data.splits import ImageSplit
    from stbp.runs import evaluate

    torch.manual_seed(0)
    net = cnn(channels=[4], hidden=[16], classes=4, decay=0.25, threshold=0.25, init="default")
    images = torch.randint(0, 256, (60, 28, 28), dtype=torch.uint8)
    split = ImageSplit(images, torch.arange(60) % 4)
    plain = evaluate(net, split, 4, seed=0)
    same = evaluate(net, split, 4, seed=0, groups=torch.arange(4))
    pairs = evaluate(net, split, 4, seed=0, groups=torch.tensor([0, 1, 1, 1]))
    one = evaluate(net, split, 4, seed=0, groups=torch.zeros(4, dtype=torch.long))
    assert same == plain and one == 100.0 and plain <= pairs <= 100.0
