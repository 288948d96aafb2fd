"""Firing statistics (rate per layer, synaptic operations) and traces of one sample."""

from __future__ import annotations

import json

import pytest
import torch

from stbp import layers
from stbp.errors import StbpError
from stbp.models import SpikingNet, cnn, mlp
from stbp.stats import FiringMonitor, trace

NEURON = dict(decay=0.2, threshold=0.3)


def test_linear_rates_and_synops_are_counted_exactly():
    gen = torch.Generator().manual_seed(0)
    net = mlp([12, 7, 3], seed=0, **NEURON)
    x = (torch.rand(5, 4, 12, generator=gen) < 0.4).float()
    with torch.no_grad(), FiringMonitor(net) as mon:
        out = net(x)
    s = mon.summary()
    with torch.no_grad():
        hidden = net[1](x)
    assert s["samples"] == 4 and s["steps"] == 5
    first, second = s["layers"]
    assert first["name"] == "Linear 12-7" and second["name"] == "Linear 7-3"
    assert first["synops"] == pytest.approx(float(x.sum()) * 7 / 4)
    assert second["synops"] == pytest.approx(float(hidden.sum()) * 3 / 4)
    assert first["rate"] == pytest.approx(float(hidden.mean()))
    assert second["rate"] == pytest.approx(float(out.mean()))
    assert first["ann_macs"] == 12 * 7 and second["ann_macs"] == 7 * 3
    assert s["synops_per_sample"] == pytest.approx(first["synops"] + second["synops"])
    assert s["mean_rate"] == pytest.approx(float(hidden.sum() + out.sum()) / (4 * 5 * 10))
    json.dumps(s)  # plain data
    # hooks are gone after the block: another pass changes nothing
    net(x)
    assert mon.summary()["samples"] == 4


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_conv_synops_match_a_brute_force_count(stride, padding):
    gen = torch.Generator().manual_seed(stride * 10 + padding)
    layer = layers.Conv2d(2, 3, 3, stride=stride, padding=padding, **NEURON)
    net = SpikingNet(layer)
    x = (torch.rand(2, 2, 2, 6, 5, generator=gen) < 0.3).float()
    with FiringMonitor(net) as mon:
        out = net(x)
    h_out, w_out = out.shape[-2:]
    brute = 0
    for _t, _b, _c, y, xx in torch.nonzero(x).tolist():
        for oy in range(h_out):
            for ox in range(w_out):
                if 0 <= y - (oy * stride - padding) < 3 and 0 <= xx - (ox * stride - padding) < 3:
                    brute += 3  # one accumulate into each output channel
    (st,) = mon.layers()
    assert st.synops == pytest.approx(brute / 2)
    assert st.ann_macs == 3 * h_out * w_out * 2 * 9
    assert st.input_events == pytest.approx(float(x.sum()) / 2)


def test_monitor_errors():
    with pytest.raises(StbpError, match="no stbp Linear or Conv2d"):
        FiringMonitor(torch.nn.Sequential(torch.nn.Identity()))
    net = mlp([4, 2], **NEURON)
    with pytest.raises(StbpError, match="no forward pass"):
        FiringMonitor(net).summary()
    with FiringMonitor(net):
        net(torch.ones(3, 1, 4))
        with pytest.raises(StbpError, match="T = 5 after T = 3"):
            net(torch.ones(5, 1, 4))


def test_trace_records_every_layer_and_leaves_the_model_as_it_was():
    net = cnn(in_channels=1, image_size=8, channels=[2], hidden=[6], classes=3, seed=0, **NEURON)
    net.train()
    x = (torch.rand(4, 2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    got = trace(net, x)
    names = [r["name"] for r in got["layers"]]
    assert names == ["Conv2d 1-2 5x5", "Linear 32-6", "Linear 6-3"]
    out = got["layers"][-1]
    assert torch.equal(out["spikes"], net.eval()(x))
    for r in got["layers"]:
        assert r["membrane"].shape == r["spikes"].shape
        # a spike exactly where the membrane reached the threshold (E3)
        assert torch.equal(r["spikes"] > 0, r["membrane"] >= NEURON["threshold"])
    assert all(not n.record and n.membrane is None for n in net.lif_layers())


def test_eval_reports_firing_on_real_mnist(tiny_runs, capsys):
    from stbp.cli import main

    assert main(["eval", "--run", str(tiny_runs["cnn"]), "--limit-eval", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["val_size"] == result["test_size"] == 100
    firing = result["firing"]
    assert firing["samples"] == 100 and firing["steps"] == 8
    assert [x["name"] for x in firing["layers"]] == [
        "Conv2d 1-6 5x5", "Conv2d 6-12 5x5", "Linear 588-64", "Linear 64-10"]
    assert 0 < firing["mean_rate"] < 1 and firing["layers"][-1]["spikes"] > 0
    # the first layer's input events are the Bernoulli input spikes: ~ mean MNIST intensity
    # (0.13) x 784 pixels x 8 steps
    assert 400 < firing["layers"][0]["input_events"] < 1400
    assert firing["synops_per_sample"] == pytest.approx(sum(x["synops"] for x in firing["layers"]))
