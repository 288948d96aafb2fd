"""Firing statistics of a spiking network: mean rate per layer and synaptic operations.

These are the quantities SNN users compare for energy. For each synaptic layer (``Linear`` or
``Conv2d`` + LIF neurons) over a set of samples:

- **rate**: the layer's spikes per neuron per time step, (1/(T·N)) Σ_t Σ_i o_i^{t,n}, averaged
  over the samples (E3's output);
- **synaptic operations (SynOps)** per sample: every nonzero input value (a spike, or an
  average-pooled group of spikes) triggers one accumulate of a weight into each neuron it
  reaches, so SynOps = Σ_t Σ_j 1[o_j^{t,n-1} ≠ 0] · fan-out_j (E1 evaluated event by event).
  For a convolution the fan-out is counted exactly, borders and stride included. With the
  analog ("direct") input encoding the first layer's inputs are intensities, not spikes: its
  operations are multiply-accumulates, one per nonzero pixel and step, reported the same way;
- **ANN MACs** per sample: the multiply-accumulates a non-spiking network of the same shape
  does for one forward pass — the usual yardstick for SynOps.

Use :class:`FiringMonitor` around any forward passes (``with FiringMonitor(model) as mon``),
then :meth:`FiringMonitor.summary`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stbp import layers
from stbp.errors import StbpError

__all__ = ["LayerStats", "FiringMonitor", "layer_name", "trace"]


@dataclass
class LayerStats:
    """Firing statistics of one synaptic layer, per sample (averaged over the samples seen)."""

    name: str
    neurons: int  #: neurons of the layer (per sample)
    rate: float  #: spikes per neuron per time step
    spikes: float  #: spikes of the layer per sample (all T steps)
    input_events: float  #: nonzero input values per sample (all T steps)
    synops: float  #: synaptic operations per sample (all T steps)
    ann_macs: float  #: multiply-accumulates of a same-shape ANN, one forward pass

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_name(module: nn.Module) -> str:
    """A short name such as ``Linear 784-800`` or ``Conv2d 1-15 5x5``."""
    if isinstance(module, layers.Linear):
        return f"Linear {module.synapse.in_features}-{module.synapse.out_features}"
    if isinstance(module, layers.Conv2d):
        c = module.synapse
        k = "x".join(str(s) for s in c.kernel_size)
        return f"Conv2d {c.in_channels}-{c.out_channels} {k}"
    return type(module).__name__


def _synaptic_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (layers.Linear, layers.Conv2d))]


class _Counter:
    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.name = layer_name(module)
        self.samples = 0
        self.steps = 0
        self.neurons = 0
        self.spikes = 0.0
        self.events = 0.0
        self.synops = 0.0
        self.macs = 0.0

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0].detach()
        steps, batch = x.shape[:2]
        if self.samples and steps != self.steps:
            raise StbpError(f"FiringMonitor: {self.name} saw T = {steps} after T = {self.steps}")
        self.steps = steps
        self.samples += batch
        self.neurons = math.prod(output.shape[2:])
        self.spikes += float(output.detach().float().sum())
        nonzero = x != 0
        events = float(nonzero.sum())
        self.events += events
        if isinstance(module, layers.Linear):
            lin = module.synapse
            self.synops += events * lin.out_features
            self.macs += batch * lin.in_features * lin.out_features
        else:
            conv = module.synapse
            # Σ over outputs of the events in each receptive field = Σ over events of the
            # outputs each one reaches (exact at borders and for any stride), times C_out.
            per_pixel = nonzero.flatten(0, 1).sum(1, keepdim=True, dtype=torch.float32)
            ones = torch.ones(1, 1, *conv.kernel_size, device=per_pixel.device)
            reach = F.conv2d(per_pixel, ones, stride=conv.stride, padding=conv.padding)
            self.synops += float(reach.sum()) * conv.out_channels
            h_out, w_out = output.shape[-2:]
            k = math.prod(conv.kernel_size)
            self.macs += batch * conv.out_channels * h_out * w_out * conv.in_channels * k

    def stats(self) -> LayerStats:
        n = max(self.samples, 1)
        return LayerStats(
            name=self.name,
            neurons=self.neurons,
            rate=self.spikes / (n * max(self.steps, 1) * max(self.neurons, 1)),
            spikes=self.spikes / n,
            input_events=self.events / n,
            synops=self.synops / n,
            ann_macs=self.macs / n,
        )


class FiringMonitor:
    """Counts spikes and synaptic operations of every synaptic layer during forward passes.

    >>> with FiringMonitor(model) as mon:          # doctest: +SKIP
    ...     model(x)
    >>> mon.summary()["synops"]                     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module) -> None:
        mods = _synaptic_layers(model)
        if not mods:
            raise StbpError("FiringMonitor: the model has no stbp Linear or Conv2d layers")
        self.counters = [_Counter(m) for m in mods]
        self._handles: list[Any] = []

    def __enter__(self) -> FiringMonitor:
        self._handles = [c.module.register_forward_hook(c) for c in self.counters]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def layers(self) -> list[LayerStats]:
        """Per-layer statistics, input to output."""
        return [c.stats() for c in self.counters]

    def summary(self) -> dict[str, Any]:
        """Per-layer statistics and the network's totals per sample, as plain data (JSON)."""
        per_layer = self.layers()
        samples = self.counters[0].samples
        if samples == 0:
            raise StbpError("FiringMonitor: no forward pass was run inside the monitor")
        neurons = sum(s.neurons for s in per_layer)
        spikes = sum(s.spikes for s in per_layer)
        synops = sum(s.synops for s in per_layer)
        macs = sum(s.ann_macs for s in per_layer)
        steps = self.counters[0].steps
        return {
            "samples": samples,
            "steps": steps,
            "layers": [s.as_dict() for s in per_layer],
            "mean_rate": spikes / (steps * neurons) if neurons else 0.0,
            "spikes_per_sample": spikes,
            "synops_per_sample": synops,
            "ann_macs_per_sample": macs,
            "synops_per_ann_mac": synops / macs if macs else float("nan"),
        }


@torch.no_grad()
def trace(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """Spikes and membrane potentials of every synaptic layer for input ``x`` ``[T, B, ...]``.

    Returns ``{"input": [T, B, ...], "layers": [{"name", "spikes", "membrane"}, ...]}`` with
    ``spikes``/``membrane`` of shape ``[T, B, neurons...]`` (E2–E3 as computed in the forward).
    """
    mods = _synaptic_layers(model)
    if not mods:
        raise StbpError("trace: the model has no stbp Linear or Conv2d layers")
    outputs: dict[nn.Module, Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, _i, out: outputs.__setitem__(mod, out))
               for m in mods]
    neurons = [m.neuron for m in mods if isinstance(m.neuron, layers.LIF)]
    was_training = model.training
    try:
        model.eval()
        for n in neurons:
            n.record = True
        model(x)
        return {
            "input": x.detach().clone(),
            "layers": [
                {"name": layer_name(m), "spikes": outputs[m].detach().float(),
                 "spiking": isinstance(m.neuron, layers.LIF),
                 # a non-spiking layer (the ANN baseline) has no membrane: its output stands in
                 "membrane": (m.neuron.membrane if isinstance(m.neuron, layers.LIF)
                              else outputs[m]).detach().float()}
                for m in mods
            ],
        }
    finally:
        for h in handles:
            h.remove()
        for n in neurons:
            n.record = False
            n.membrane = None
        model.train(was_training)
