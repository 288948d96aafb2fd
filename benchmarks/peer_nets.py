"""The networks of benchmarks/peers.py, as each library builds them: the paper's MNIST MLP
784-800-10 and CNN 28×28-15C5-P2-40C5-P2-300-10 with the paper's MNIST neuron (τ = 0.1, V_th =
0.5), in stbp, snnTorch (its per-step idiom), SpikingJelly (multi-step mode), Norse, and the
matmul-only floor; and :func:`load_weights`, which starts any of them from a ``stbp train``
checkpoint of the same network. Each builder returns ``(module, run)`` with ``run(x)`` the
output spikes ``[T, B, 10]`` of input spikes ``x`` ``[T, B, ...]``."""

from __future__ import annotations

DECAY, THRESHOLD = 0.1, 0.5  # the paper's MNIST neuron (decay τ = 0.1, V_th = 0.5)


def stbp(kind: str, backend: str):
    from stbp import models

    neuron = dict(decay=DECAY, threshold=THRESHOLD, backend=backend)
    net = models.mlp([784, 800, 10], seed=0, **neuron) if kind == "mlp" else models.cnn(
        seed=0, **neuron)
    return net, lambda x: net(x)


def snntorch(kind: str):
    import snntorch as snn
    import torch
    from torch import nn

    beta = DECAY
    grad = snn.surrogate.atan()
    if kind == "mlp":
        fcs = nn.ModuleList([nn.Linear(784, 800), nn.Linear(800, 10)])
        lifs = nn.ModuleList([snn.Leaky(beta=beta, threshold=THRESHOLD, spike_grad=grad,
                                        reset_mechanism="zero") for _ in fcs])
        net = nn.ModuleDict({"fc": fcs, "lif": lifs})

        def run(x):  # the snnTorch idiom: a Python loop over time steps
            mems = [lif.init_leaky() for lif in lifs]
            out = []
            for t in range(x.shape[0]):
                h = x[t].flatten(1)
                for i, (fc, lif) in enumerate(zip(fcs, lifs, strict=True)):
                    h, mems[i] = lif(fc(h), mems[i])
                out.append(h)
            return torch.stack(out)

        return net, run
    convs = nn.ModuleList([nn.Conv2d(1, 15, 5, padding=2), nn.Conv2d(15, 40, 5, padding=2)])
    fcs = nn.ModuleList([nn.Linear(40 * 7 * 7, 300), nn.Linear(300, 10)])
    lifs = nn.ModuleList([snn.Leaky(beta=beta, threshold=THRESHOLD, spike_grad=grad,
                                    reset_mechanism="zero") for _ in range(4)])
    net = nn.ModuleDict({"conv": convs, "fc": fcs, "lif": lifs})

    def run_cnn(x):
        mems = [lif.init_leaky() for lif in lifs]
        out = []
        for t in range(x.shape[0]):
            h = x[t]
            for i, conv in enumerate(convs):
                h, mems[i] = lifs[i](conv(h), mems[i])
                h = nn.functional.avg_pool2d(h, 2)
            h = h.flatten(1)
            for j, fc in enumerate(fcs):
                h, mems[2 + j] = lifs[2 + j](fc(h), mems[2 + j])
            out.append(h)
        return torch.stack(out)

    return net, run_cnn


def spikingjelly(kind: str):
    from spikingjelly.activation_based import functional, layer, neuron, surrogate
    from torch import nn

    def lif():
        # multi-step mode; on a CPU SpikingJelly's only backend is "torch" (its default)
        return neuron.LIFNode(tau=1 / (1 - DECAY), v_threshold=THRESHOLD, decay_input=False,
                              surrogate_function=surrogate.ATan(), step_mode="m")

    if kind == "mlp":
        net = nn.Sequential(layer.Flatten(step_mode="m"), layer.Linear(784, 800, step_mode="m"),
                            lif(), layer.Linear(800, 10, step_mode="m"), lif())
    else:
        net = nn.Sequential(
            layer.Conv2d(1, 15, 5, padding=2, step_mode="m"), lif(),
            layer.AvgPool2d(2, step_mode="m"),
            layer.Conv2d(15, 40, 5, padding=2, step_mode="m"), lif(),
            layer.AvgPool2d(2, step_mode="m"), layer.Flatten(step_mode="m"),
            layer.Linear(40 * 7 * 7, 300, step_mode="m"), lif(),
            layer.Linear(300, 10, step_mode="m"), lif(),
        )

    def run(x):
        functional.reset_net(net)
        return net(x)

    return net, run


def norse(kind: str):
    import norse.torch as norse
    import torch
    from torch import nn

    p = norse.LIFParameters(v_th=torch.tensor(THRESHOLD), method="super")
    fc1, fc2 = nn.Linear(784, 800), nn.Linear(800, 10)
    lif1, lif2 = norse.LIF(p), norse.LIF(p)
    net = nn.ModuleList([fc1, fc2, lif1, lif2])

    def run(x):  # norse.LIF runs the recurrence over the leading time axis
        h, _ = lif1(fc1(x.flatten(2)))
        out, _ = lif2(fc2(h))
        return out

    return net, run


def floor(kind: str):
    from torch import nn

    net = nn.Sequential(nn.Flatten(2), nn.Linear(784, 800), nn.Linear(800, 10))
    return net, lambda x: net(x)


# ----------------------------------------------------------------------------- one case
def load_weights(net, path: str, flag: str = "--weights") -> int:
    """Copy the weights and biases of a ``stbp train`` checkpoint of the same network into
    ``net`` (stbp's or a peer's), layer by layer in order; returns the checkpoint's epoch.
    stbp's own layers hold exactly those parameters; a peer's are its Conv2d/Linear modules'."""
    import torch
    from torch import nn

    from stbp.runs import open_checkpoint

    trained = open_checkpoint(path, name="weights", source=f"{flag} {path}")
    src = list(trained.model.parameters())
    if any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules()):  # a peer
        dst = [t for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               for t in (m.weight, m.bias)]
    else:
        dst = list(net.parameters())
    shapes = [tuple(t.shape) for t in src]
    if shapes != [tuple(t.shape) for t in dst]:
        raise SystemExit(f"{flag} {path}: its layers {shapes} are not this network's "
                         f"{[tuple(t.shape) for t in dst]}")
    with torch.no_grad():
        for a, b in zip(dst, src, strict=True):
            a.copy_(b)
    return int(trained.ckpt["epoch"])
