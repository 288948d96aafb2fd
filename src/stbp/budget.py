"""Memory a configuration needs, estimated from the config alone — before anything is allocated.

:func:`estimate` reads the network's shape ([model] and the dataset's input), T (``[encoding]
steps``) and the batch sizes, and returns the bytes of a training step (weights, gradients and
the optimizer's two moments; the input spike trains; per neuron and time step the membrane,
spikes and what the backward keeps) and of an evaluation batch (no gradients). The figures are
on the high side of the measured peaks (paper's MLP and CNN on 2 cores: MLP T = 300 evaluation
batch of 1,000 1.39 GB measured, 1.6 GB estimated; CNN training step 0.61 GB, 0.9 GB), so that
what passes fits.

:func:`check` compares them with the memory the machine has available (``MemAvailable`` of
``/proc/meminfo``; the GPU's total memory for ``device = cuda``) and refuses, with the figure
and the settings to change, a configuration that cannot fit: ``encoding.steps = 100000`` or
``model.sizes = [784, 99999999999, 10]`` fail here in a millisecond instead of in the
allocator (or the kernel's OOM killer) minutes later. ``STBP_MEMORY_CHECK=off`` skips it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from stbp.data.registry import dataset_info
from stbp.errors import StbpError

__all__ = ["Estimate", "layer_sizes", "parameter_count", "estimate", "available_bytes", "check",
           "gib"]

#: bytes kept per neuron and time step: in training (membrane, spikes, their gradients and the
#: surrogate's saved input) and in evaluation (the layer's input current, membrane, spikes)
TRAIN_BYTES_PER_NEURON_STEP = 16
EVAL_BYTES_PER_NEURON_STEP = 6
#: what a process holds besides (torch, numba's compiled kernels, the data's index)
BASE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Estimate:
    """Bytes for one training step and one evaluation batch, and what they are made of."""

    parameters: int
    train_step: int
    eval_batch: int
    train_input: int
    eval_input: int

    @property
    def largest(self) -> int:
        return max(self.train_step, self.eval_batch)


def gib(n: float) -> str:
    """``n`` bytes in GiB (or MiB below 1 GiB), for messages."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def layer_sizes(cfg: dict[str, Any]) -> tuple[int, list[int]]:
    """(inputs per sample, neurons of every spiking layer in order) of a validated config."""
    model, ds = cfg["model"], dataset_info(cfg["data"])
    c, h, w = ds.input
    if model["kind"] == "mlp":
        return c * h * w, list(model["sizes"][1:])
    neurons = []
    k, same = model.get("kernel_size", 5), model.get("padding", "same") == "same"
    for ch in model.get("channels", [15, 40]):
        if not same:  # a 'valid' conv loses k - 1; a 'same' one keeps the size
            h, w = h - k + 1, w - k + 1
        neurons.append(ch * h * w)
        h, w = h // 2, w // 2
    return math.prod(ds.input), neurons + list(model.get("hidden", [300])) + [ds.classes or 2]


def parameter_count(cfg: dict[str, Any]) -> int:
    """The number of weights and biases of the network a validated config describes."""
    model = cfg["model"]
    c, h, w = dataset_info(cfg["data"]).input
    if model["kind"] == "mlp":
        sizes = model["sizes"]
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    k, same = model.get("kernel_size", 5), model.get("padding", "same") == "same"
    total, prev = 0, c
    for ch in model.get("channels", [15, 40]):
        total += prev * ch * k * k + ch
        if not same:
            h, w = h - k + 1, w - k + 1
        prev, h, w = ch, h // 2, w // 2
    dims = [prev * h * w, *model.get("hidden", [300]), dataset_info(cfg["data"]).classes or 2]
    return total + sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=False))


def estimate(cfg: dict[str, Any]) -> Estimate:
    """The memory a validated config needs (see the module's docstring); plain integers, so
    absurd sizes give absurd figures, never an overflow."""
    steps = cfg["encoding"]["steps"]
    batch, eval_batch = cfg["train"]["batch_size"], cfg["train"]["eval_batch_size"]
    inputs, neurons = layer_sizes(cfg)
    params = parameter_count(cfg)
    per_input = 4 if cfg["encoding"]["kind"] == "direct" else 1  # analog float32, or spike bytes
    train_input = steps * batch * inputs * per_input + batch * inputs * 4
    eval_input = steps * eval_batch * inputs * per_input + eval_batch * inputs * 4
    train = (BASE_BYTES + params * 4 * 4 + train_input
             + steps * batch * sum(neurons) * TRAIN_BYTES_PER_NEURON_STEP)
    evaluation = (BASE_BYTES + params * 4 + eval_input
                  + steps * eval_batch * sum(neurons) * EVAL_BYTES_PER_NEURON_STEP)
    return Estimate(params, train, evaluation, train_input, eval_input)


def available_bytes(device: Any = "cpu") -> int | None:
    """Memory this process may use: the GPU's total memory for a CUDA device, else the
    system's available memory (``MemAvailable``); None when unknown."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        try:
            return int(torch.cuda.mem_get_info()[1])
        except Exception:  # noqa: BLE001 - no driver / no device: unknown
            return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check(cfg: dict[str, Any], device: Any = "cpu", *, train: bool = True,
          available: int | None = None) -> Estimate:
    """Refuse (:class:`StbpError`, with the figures and the settings to change) a config whose
    training step (if ``train``) or evaluation batch needs more memory than is available."""
    est = estimate(cfg)
    if os.environ.get("STBP_MEMORY_CHECK", "").strip().lower() in ("off", "0", "no"):
        return est
    have = available_bytes(device) if available is None else available
    if have is None:
        return est
    t, b, e = cfg["encoding"]["steps"], cfg["train"]["batch_size"], cfg["train"]["eval_batch_size"]
    what = []
    if train and est.train_step > have:
        what.append((f"a training step (T = {t}, train.batch_size = {b}) about "
                     f"{gib(est.train_step)}", "train.batch_size"))
    if est.eval_batch > have:
        what.append((f"an evaluation batch (T = {t}, train.eval_batch_size = {e}) about "
                     f"{gib(est.eval_batch)}", "train.eval_batch_size"))
    if not what:
        return est
    keys = ["encoding.steps", *(k for _, k in what),
            "model.sizes" if cfg["model"]["kind"] == "mlp" else "model.channels/model.hidden"]
    raise StbpError(
        f"not enough memory: {' and '.join(w for w, _ in what)} (network of "
        f"{est.parameters:,} parameters), more than the {gib(have)} available "
        f"{'on the GPU' if getattr(device, 'type', str(device)) == 'cuda' else 'on this machine'}; "
        f"lower {', '.join(keys)} (--set), or set STBP_MEMORY_CHECK=off to try anyway "
        "(the estimate errs on the high side)"
    )
