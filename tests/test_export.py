"""NIR export and import: round trips on real MNIST, snnTorch runs our graphs, bad graphs/files."""

from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from stbp.cli import main
from stbp.data.splits import load_splits
from stbp.errors import StbpError
from stbp.export import from_nir, read_nir, to_nir, write_nir
from stbp.models import mlp
from stbp.runs import load_checkpoint, model_from_checkpoint
from stbp.stats import trace


def _run(run: Path):
    model, cfg = model_from_checkpoint(load_checkpoint(run / "best.pt"), run / "best.pt")
    return model.eval(), cfg


def _digits(cfg, data, n=100):
    test = load_splits(cfg, data)[0]["test"]
    return test.inputs(torch.arange(n), steps=cfg["encoding"]["steps"],
                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind,shape", [("mlp", (784,)), ("cnn", (1, 28, 28))])
def test_round_trip_gives_the_same_spikes_on_real_mnist(kind, shape, tiny_runs, tmp_path):
    model, cfg = _run(tiny_runs[kind])
    path = write_nir(to_nir(model, shape), tmp_path / "net.nir")
    back = from_nir(read_nir(path))
    x = _digits(cfg, tiny_runs["data"])
    want, got = trace(model, x)["layers"], trace(back, x)["layers"]
    assert len(want) == len(got)
    for a, b in zip(want, got, strict=True):  # every layer's spikes, and its membrane potentials
        assert a["spikes"].sum() > 0, f"{a['name']} must spike for the check to mean anything"
        assert torch.equal(a["spikes"], b["spikes"])
        assert torch.allclose(a["membrane"], b["membrane"], rtol=0, atol=1e-6)
    # training settings come back from the metadata
    lif = back.lif_layers()[0].params
    assert lif.surrogate.name == cfg["neuron"]["surrogate"] and lif.decay == cfg["neuron"]["decay"]
    assert not list(tmp_path.glob("*.part"))


def test_neuron_parameters_follow_the_euler_mapping():
    net = mlp([6, 4], decay=0.25, threshold=0.7, seed=0)
    g = to_nir(net, (6,), dt=1e-3)
    lif = g.nodes["1.neuron"]
    assert isinstance(lif, nir.LIF) and isinstance(g.nodes["1.synapse"], nir.Affine)
    np.testing.assert_allclose(lif.tau, 1e-3 / 0.75)
    np.testing.assert_allclose(lif.r, 1 / 0.75)
    np.testing.assert_allclose(lif.v_threshold, 0.7)
    assert np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    assert g.metadata["dt"] == 1e-3
    # no leak (decay 1) is an integrate-and-fire neuron
    g = to_nir(mlp([6, 4], decay=1.0, threshold=0.7, seed=0), (6,))
    assert isinstance(g.nodes["1.neuron"], nir.IF)
    x = (torch.rand(7, 3, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    net1 = mlp([6, 4], decay=1.0, threshold=0.7, seed=0)
    assert torch.equal(net1(x), from_nir(g)(x))


def test_snntorch_runs_our_graph_to_the_same_spikes(tiny_runs):
    pytest.importorskip("nirtorch", reason="snnTorch's NIR import needs nirtorch (test extra)")
    import_nir = pytest.importorskip("snntorch.import_nir",
                                     reason="snntorch is not installed (test extra)")
    model, cfg = _run(tiny_runs["mlp"])
    net = import_nir.import_from_nir(to_nir(model, (784,)))
    x = _digits(cfg, tiny_runs["data"])
    with torch.no_grad():
        want = model(x)
        got = torch.stack([net(x[t].flatten(1).float())[0] for t in range(x.shape[0])])
    assert want.sum() > 0
    assert torch.equal(want, got)


@pytest.mark.parametrize("dt", [0, -1e-3, float("nan"), float("inf")])
def test_bad_dt_is_refused(dt, tiny_runs, tmp_path, capsys):
    with pytest.raises(StbpError, match="dt must be a finite number of seconds > 0"):
        to_nir(mlp([5, 3], decay=0.1, threshold=0.5, seed=0), (5,), dt=dt)
    assert main(["export", "--run", str(tiny_runs["mlp"]), "--out", str(tmp_path / "n.nir"),
                 "--dt", str(dt)]) == 2
    assert "dt must be" in capsys.readouterr().err
    assert not (tmp_path / "n.nir").exists()


def test_paper_reset_needs_approximate():
    net = mlp([5, 3], decay=0.1, threshold=0.5, reset="paper", seed=0)
    with pytest.raises(StbpError, match="reset E4"):
        to_nir(net, (5,))
    back = from_nir(to_nir(net, (5,), approximate=True))
    assert back.lif_layers()[0].params.reset == "zero"


def _chain(*nodes):
    names = ["input", *[f"n{i}" for i in range(len(nodes) - 2)], "output"]
    return nir.NIRGraph(dict(zip(names, nodes, strict=True)), list(zip(names[:-1], names[1:],
                                                                        strict=True)))


def _lif(n, **over):
    p = dict(tau=np.full(n, 2e-4), r=np.full(n, 2.0), v_leak=np.zeros(n),
             v_threshold=np.full(n, 0.5))
    p.update(over)
    return nir.LIF(**p)


def test_graphs_made_elsewhere_are_imported():
    w, b = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    g = _chain(nir.Input({"input": np.array([4])}), nir.Affine(w, b), _lif(3),
               nir.Output({"output": np.array([3])}))
    net = from_nir(g)  # no metadata: dt 1e-4, tau 2e-4 -> decay 0.5, gain r*dt/tau = 1
    assert net.lif_layers()[0].params.decay == 0.5
    x = torch.ones(3, 1, 4) * 0.2  # current 0.8 each step: spikes at once
    assert net(x)[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    # an input gain R*dt/tau != 1 is folded into the weights
    g = _chain(nir.Input({"input": np.array([4])}), nir.Affine(w, b), _lif(3, r=np.full(3, 1.0)),
               nir.Output({"output": np.array([3])}))
    assert torch.allclose(from_nir(g)[1].synapse.weight, torch.full((3, 4), 0.5))


@pytest.mark.parametrize("bad,message", [
    ("leak", "v_leak must be 0"),
    ("thresholds", "v_threshold differs between neurons"),
    ("reset", "v_reset must be 0"),
    ("unsupported", "CubaLIF"),
    ("no_neuron", "must be followed by a LIF"),
    ("branch", "branches"),
    ("cycle", "cycle"),
])
def test_unsupported_graphs_are_refused(bad, message):
    w, b = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    inp, out = nir.Input({"input": np.array([4])}), nir.Output({"output": np.array([3])})
    lif = {"leak": _lif(3, v_leak=np.ones(3)),
           "thresholds": _lif(3, v_threshold=np.array([0.5, 0.6, 0.5])),
           "reset": _lif(3, v_reset=np.ones(3))}.get(bad, _lif(3))
    if bad == "unsupported":
        g = _chain(inp, nir.Affine(w, b), nir.CubaLIF(
            tau_syn=np.ones(3), tau_mem=np.ones(3), r=np.ones(3), v_leak=np.zeros(3),
            v_threshold=np.ones(3)), out)
    elif bad == "no_neuron":
        g = _chain(inp, nir.Affine(w, b), out)
    elif bad in ("branch", "cycle"):
        nodes = {"input": inp, "a": nir.Affine(w, b), "l": lif, "output": out}
        edges = [("input", "a"), ("a", "l"), ("l", "output")]
        edges += [("a", "output")] if bad == "branch" else [("l", "a")]
        g = nir.NIRGraph(nodes, edges, type_check=False)
        if bad == "cycle":
            g.edges = [("input", "a"), ("a", "l"), ("l", "a")]
    else:
        g = _chain(inp, nir.Affine(w, b), lif, out)
    with pytest.raises(StbpError, match=message):
        from_nir(g)


def test_bad_nir_files_get_one_clear_error(tmp_path, tiny_runs):
    with pytest.raises(StbpError, match="no such file"):
        read_nir(tmp_path / "absent.nir")
    model, _ = _run(tiny_runs["mlp"])
    good = write_nir(to_nir(model, (784,)), tmp_path / "good.nir").read_bytes()
    rng = np.random.default_rng(0)
    cases = [b"", b"not hdf5 at all", rng.bytes(4096)]
    cases += [good[: int(n)] for n in rng.integers(1, len(good) - 1, 12)]
    for i, data in enumerate(cases):
        path = tmp_path / f"bad{i}.nir"
        path.write_bytes(data)
        try:
            graph = read_nir(path)
        except StbpError as err:
            assert str(path) in str(err)
            continue
        # a truncation that still reads must give a graph we either load or refuse clearly
        try:
            from_nir(graph)
        except StbpError:
            pass


def test_cli_export(tiny_runs, tmp_path, capsys):
    out = tmp_path / "net.nir"
    assert main(["export", "--run", str(tiny_runs["cnn"]), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_shape"] == [1, 28, 28] and result["nodes"]["4"] == "Flatten"
    assert isinstance(read_nir(out).nodes["0.synapse"], nir.Conv2d)
    assert main(["export", "--run", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["export", "--run", str(tiny_runs["cnn"]), "--out",
                 str(tmp_path / "missing" / "x.nir")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_non_spiking_network_is_refused():
    from stbp import layers
    from stbp.models import SpikingNet

    ann = SpikingNet(layers.Flatten(), layers.Linear(4, 3, activation="relu"))
    with pytest.raises(StbpError, match="layer 1 is not spiking"):
        to_nir(ann, (4,))
    got = trace(ann, torch.rand(2, 1, 4))["layers"][0]
    assert torch.equal(got["membrane"], got["spikes"])


def test_a_current_readout_round_trips(tmp_path):
    """A spiking network whose output layer has no neurons ([model] readout = "current", the
    detector's) exports its last synapse straight into the Output and comes back the same."""
    from stbp import layers
    from stbp.models import cnn

    torch.manual_seed(0)
    net = cnn(channels=[4, 6], hidden=[12], classes=3, padding="valid", readout="current",
              decay=0.25, threshold=0.25, init="default", surrogate="polynomial").eval()
    graph = to_nir(net, (1, 28, 28))
    assert isinstance(graph.nodes["6.synapse"], nir.Affine) and "6.neuron" not in graph.nodes
    back = from_nir(read_nir(write_nir(graph, tmp_path / "net.nir")))
    assert isinstance(back[-1].neuron, layers.Analog) and back[-1].neuron.activation == "identity"
    x = (torch.rand(6, 5, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.4).to(torch.uint8)
    with torch.no_grad():
        want, got = net(x), back(x)
    assert want.abs().sum() > 0 and not torch.all((want == 0) | (want == 1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(StbpError, match="not spiking"):  # a graded layer inside stays refused
        to_nir(cnn(channels=[4], hidden=[12], classes=3, readout="current", spiking=False,
                   decay=0.25, threshold=0.25), (1, 28, 28))
