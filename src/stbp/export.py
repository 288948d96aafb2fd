"""Export trained networks to NIR, the neuromorphic intermediate representation, and back.

NIR (https://neuroir.org, package ``nir``) describes a network as a graph of continuous-time
primitives that simulators and chips (snnTorch, Norse, SpikingJelly, Lava, SpiNNaker2, Xylo, …)
read. Our discrete neuron (E2–E4') maps onto NIR's leaky integrate-and-fire,
τ·dv/dt = (v_leak − v) + R·I, spike when v > v_thr, then v = v_reset, integrated with forward
Euler over a step ``dt``:

    v^t = (1 − dt/τ)·v^{t−1} + (dt/τ)·R·I^t

which is E2 with f(o) = decay·(1 − o) (E4') when

    τ = dt / (1 − decay),   R = τ / dt = 1 / (1 − decay),   v_leak = 0,   v_reset = 0,
    v_thr = V_th.

``dt`` defaults to 1e-4 s, as snnTorch's NIR import and export assume; it is written to the
graph's metadata, and :func:`from_nir` reads it back (pass ``dt`` for graphs made elsewhere).
A neuron without leak (decay = 1) becomes NIR's ``IF`` with R = 1/dt. Synapses map to ``Affine``
(``Linear`` without a bias) and ``Conv2d``; pooling to ``AvgPool2d``; the flattening before the
first fully connected layer of a CNN to ``Flatten``.

What NIR cannot express (:func:`to_nir` says so, or approximates only when asked):

- the paper's reset E4, f(o) = τ·exp(−o/τ): after a spike it keeps τ·e^{−1/τ} of the potential
  (4.5e-6 for τ = 0.1) instead of 0 — exported as a reset to zero only with ``approximate=True``;
- the training-only settings: the approximated derivative (h1–h4 and width a) and the SD-only
  ablation; they are kept in the graph's metadata (``stbp``) for stbp's own import;
- the input encoding (Bernoulli rate coding or analog input): a NIR graph starts at the input
  spikes or currents; MNIST images enter an MLP flattened row by row;
- the firing condition is ``u >= V_th`` here and ``v > v_thr`` in NIR: they differ only when the
  potential equals the threshold exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stbp import layers
from stbp.errors import StbpError
from stbp.functional.lif import LIFParams
from stbp.models import SpikingNet

__all__ = ["to_nir", "from_nir", "write_nir", "read_nir", "DEFAULT_DT"]

#: seconds per time step assumed by default (snnTorch's NIR import/export use the same)
DEFAULT_DT = 1e-4


def _nir():
    try:
        import nir
    except ImportError:  # pragma: no cover - nir is a dependency
        raise StbpError("NIR export needs the package nir: pip install nir") from None
    return nir


def _neuron_node(neuron: layers.LIF, shape: tuple[int, ...], dt: float, approximate: bool):
    nir = _nir()
    p = neuron.params
    if p.reset != "zero" and not approximate:
        raise StbpError(
            "NIR cannot express the paper's reset E4 (f(o) = τ·exp(−o/τ) keeps "
            f"{p.decay * np.exp(-1 / p.decay):.2g} of the potential after a spike); export with "
            "approximate=True (--approximate) to write it as a reset to zero"
        )
    ones = np.ones(shape, dtype=np.float32)
    thr = ones * np.float32(p.threshold)
    if p.decay == 1.0:  # no leak: integrate-and-fire, v^t = v^{t-1} + dt·R·I
        return nir.IF(r=ones / np.float32(dt), v_threshold=thr, v_reset=0 * ones)
    tau = dt / (1.0 - p.decay)
    return nir.LIF(tau=np.full(shape, tau, np.float64), r=np.full(shape, tau / dt, np.float64),
                   v_leak=0 * ones, v_threshold=thr, v_reset=0 * ones)


def to_nir(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[int],
    *,
    dt: float = DEFAULT_DT,
    approximate: bool = False,
) -> Any:
    """A ``nir.NIRGraph`` of a :class:`~stbp.models.SpikingNet` (a chain of stbp layers).

    ``input_shape`` is one sample's input without time and batch, e.g. ``(1, 28, 28)`` for the
    CNN or ``(784,)`` for the MLP. Node names follow the model's layer indices.
    """
    nir = _nir()
    if not isinstance(model, SpikingNet):
        raise StbpError(f"to_nir: expected a stbp SpikingNet, got {type(model).__name__}")
    if not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise StbpError(f"dt must be a finite number of seconds > 0, got {dt!r}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise StbpError(f"input_shape must be positive sizes, got {input_shape!r}")
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    chain = ["input"]
    training: dict[str, Any] = {}
    x = torch.zeros(1, 1, *shape)  # one step of one sample, to follow the shapes
    model = model.eval()
    with torch.no_grad():
        for i, mod in enumerate(model):
            name = str(i)
            if isinstance(mod, layers.Flatten):
                if len(x.shape) > 3:
                    nodes[name] = nir.Flatten(input_type={"input": np.array(x.shape[2:])},
                                              start_dim=0, end_dim=-1)
                    chain.append(name)
                x = mod(x)
                continue
            if isinstance(mod, layers.AvgPool2d):
                k, s = mod.kernel_size, mod.stride
                nodes[name] = nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([s, s]),
                                            padding=np.array([0, 0]))
                chain.append(name)
                x = mod(x)
                continue
            if isinstance(mod, (layers.Linear, layers.Conv2d)):
                readout = (i == len(model) - 1 and isinstance(mod.neuron, layers.Analog)
                           and mod.neuron.activation == "identity" and bool(training))
                if not isinstance(mod.neuron, layers.LIF) and not readout:
                    raise StbpError(f"to_nir: layer {i} is not spiking ({mod.neuron.activation}); "
                                    "NIR export covers spiking networks (and a current readout: "
                                    "an output layer without neurons after spiking layers)")
                syn = mod.synapse
                w = syn.weight.detach().float().numpy().copy()
                b = None if syn.bias is None else syn.bias.detach().float().numpy().copy()
                if isinstance(mod, layers.Linear):
                    if x.shape[-1] != syn.in_features:
                        raise StbpError(f"to_nir: layer {i} takes {syn.in_features} inputs, but "
                                        f"input_shape {shape} gives {tuple(x.shape[2:])}")
                    node = nir.Linear(weight=w) if b is None else nir.Affine(weight=w, bias=b)
                else:
                    if x.dim() != 5 or x.shape[2] != syn.in_channels:
                        raise StbpError(f"to_nir: layer {i} takes [{syn.in_channels}, H, W] "
                                        f"inputs, but input_shape {shape} gives {tuple(x.shape[2:])}")
                    node = nir.Conv2d(
                        input_shape=tuple(int(v) for v in x.shape[-2:]), weight=w,
                        stride=tuple(syn.stride), padding=tuple(syn.padding),
                        dilation=tuple(syn.dilation), groups=syn.groups,
                        bias=np.zeros(w.shape[0], np.float32) if b is None else b)
                x = mod(x)
                nodes[f"{name}.synapse"] = node
                chain.append(f"{name}.synapse")
                if readout:  # the output is the synapse's current itself
                    continue
                nodes[f"{name}.neuron"] = _neuron_node(mod.neuron, tuple(x.shape[2:]), dt,
                                                       approximate)
                chain.append(f"{name}.neuron")
                p = mod.neuron.params
                training[name] = {"decay": p.decay, "threshold": p.threshold,
                                  "surrogate": p.surrogate.name, "width": p.surrogate.width,
                                  "reset": p.reset, "temporal": p.temporal}
                continue
            raise StbpError(f"to_nir: layer {i} ({type(mod).__name__}) has no NIR counterpart")
    nodes["output"] = nir.Output(output_type={"output": np.array(x.shape[2:])})
    chain.append("output")
    edges = list(zip(chain[:-1], chain[1:], strict=True))
    metadata = {"dt": float(dt), "producer": "stbp", "stbp": training}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def _chain(graph: Any) -> list[str]:
    """The node names from the Input to the Output, checking the graph is a simple chain."""
    nir = _nir()
    inputs = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    if len(inputs) != 1:
        raise StbpError(f"from_nir: expected one Input node, found {len(inputs)}")
    nxt: dict[str, str] = {}
    for src, dst in graph.edges:
        if src in nxt:
            raise StbpError(f"from_nir: node {src!r} branches; only chains of layers are supported")
        if src not in graph.nodes or dst not in graph.nodes:
            raise StbpError(f"from_nir: edge {src!r} -> {dst!r} names a missing node")
        nxt[src] = dst
    order, seen = [inputs[0]], {inputs[0]}
    while order[-1] in nxt:
        dst = nxt[order[-1]]
        if dst in seen:
            raise StbpError(f"from_nir: the graph has a cycle through {dst!r} (recurrence is not "
                            "supported)")
        order.append(dst)
        seen.add(dst)
    if not isinstance(graph.nodes[order[-1]], nir.Output):
        raise StbpError(f"from_nir: the chain from the Input ends at {order[-1]!r}, not an Output")
    if len(order) != len(graph.nodes):
        raise StbpError("from_nir: some nodes are not on the path from the Input to the Output")
    return order


def _uniform(values: Any, what: str, node: str) -> float:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise StbpError(f"from_nir: node {node!r}: {what} must be finite numbers")
    if not np.allclose(arr, arr.flat[0], rtol=1e-6, atol=0):
        raise StbpError(f"from_nir: node {node!r}: {what} differs between neurons; stbp's neurons "
                        "share one value per layer")
    return float(arr.flat[0])


def _neuron_settings(node: Any, name: str, dt: float) -> tuple[dict[str, Any], float]:
    """LIF settings and the input gain (R·dt/τ, folded into the synapse) of a NIR neuron."""
    nir = _nir()
    v_reset = getattr(node, "v_reset", None)
    if v_reset is not None and _uniform(v_reset, "v_reset", name) != 0:
        raise StbpError(f"from_nir: node {name!r}: v_reset must be 0 (stbp resets to zero)")
    thr = _uniform(node.v_threshold, "v_threshold", name)
    if isinstance(node, nir.IF):
        return {"decay": 1.0, "threshold": thr}, _uniform(node.r, "r", name) * dt
    if _uniform(node.v_leak, "v_leak", name) != 0:
        raise StbpError(f"from_nir: node {name!r}: v_leak must be 0")
    tau = _uniform(node.tau, "tau", name)
    if tau < dt:
        raise StbpError(f"from_nir: node {name!r}: tau = {tau:g} s is shorter than dt = {dt:g} s "
                        "(forward Euler would be unstable); pass the graph's dt")
    decay = float(f"{1.0 - dt / tau:.12g}")
    if decay <= 0:
        raise StbpError(f"from_nir: node {name!r}: tau = dt gives no memory (decay 0)")
    return {"decay": decay, "threshold": thr}, _uniform(node.r, "r", name) * dt / tau


def from_nir(
    graph: Any,
    *,
    dt: float | None = None,
    surrogate: str | None = None,
    width: float | None = None,
    backend: str = "auto",
) -> SpikingNet:
    """A :class:`~stbp.models.SpikingNet` from a NIR graph of (Affine|Linear|Conv2d → LIF|IF),
    AvgPool2d and Flatten nodes in a chain; ready to run or to train further with STBP. A last
    synapse straight into the Output is a current readout (an output layer without neurons).

    ``dt`` defaults to the graph's metadata, else :data:`DEFAULT_DT`. The training-only settings
    come from the arguments (``surrogate``, ``width``), else the metadata stbp writes, else the
    defaults (h1 rectangular, a = 1); the reset is E4' (to zero), as in the graph.
    """
    nir = _nir()
    meta = graph.metadata if isinstance(getattr(graph, "metadata", None), dict) else {}
    if dt is None:
        dt = float(meta.get("dt", DEFAULT_DT))
    if not (np.isfinite(dt) and dt > 0):
        raise StbpError(f"dt must be a finite number of seconds > 0, got {dt!r}")
    saved = meta.get("stbp", {}) if isinstance(meta.get("stbp", {}), dict) else {}
    order = _chain(graph)
    mods: list[nn.Module] = []
    names = order[1:-1]
    k = 0
    if names and not isinstance(graph.nodes[names[0]], nir.Conv2d):
        mods.append(layers.Flatten())  # an MLP takes its input flattened
    while k < len(names):
        name, node = names[k], graph.nodes[names[k]]
        if isinstance(node, (nir.Affine, nir.Linear, nir.Conv2d)):
            after = graph.nodes[names[k + 1]] if k + 1 < len(names) else graph.nodes[order[-1]]
            spiking_before = any(isinstance(m, (layers.Linear, layers.Conv2d)) for m in mods)
            if isinstance(after, nir.Output) and spiking_before:  # a current readout
                mods.append(_synapse_layer(nir, name, node, 1.0, None))
                k += 1
                continue
            if not isinstance(after, (nir.LIF, nir.IF)):
                raise StbpError(f"from_nir: synapse {name!r} must be followed by a LIF or IF "
                                f"neuron node, got {type(after).__name__} (stbp supports Affine, "
                                "Linear, Conv2d, LIF, IF, AvgPool2d, Flatten)")
            settings, gain = _neuron_settings(after, names[k + 1], dt)
            extra = saved.get(name.split(".")[0], {}) if isinstance(saved, dict) else {}
            extra = extra if isinstance(extra, dict) else {}
            neuron = LIFParams(
                **settings, surrogate=surrogate or extra.get("surrogate", "rectangular"),
                width=width or extra.get("width", 1.0), reset="zero",
                temporal=bool(extra.get("temporal", True)), backend=backend)
            mods.append(_synapse_layer(nir, name, node, gain, neuron))
            k += 2
            continue
        mods.append(_shape_layer(nir, name, node))
        k += 1
    if not any(isinstance(m, (layers.Linear, layers.Conv2d)) for m in mods):
        raise StbpError("from_nir: the graph has no synapse + neuron layers")
    return SpikingNet(*mods)


def write_nir(graph: Any, path: str | os.PathLike) -> Path:
    """Write ``graph`` to ``path`` (NIR's HDF5 format), whole or not at all."""
    nir = _nir()
    path = Path(path)
    if path.exists() and path.is_dir():
        raise StbpError(f"--out {path}: is a directory")
    if not path.parent.is_dir():
        raise StbpError(f"--out {path}: the folder {path.parent} does not exist")
    tmp = path.with_name(path.name + ".part")
    try:
        nir.write(tmp, graph)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


#: the most a NIR file's arrays may hold once read (bytes); stbp's networks need a few MB
MAX_NIR_BYTES = 2**30


def _declared_bytes(path: Path) -> tuple[int, str]:
    """The bytes the arrays of HDF5 file ``path`` declare (read from their headers, nothing
    loaded) and the largest one's name and shape."""
    import h5py

    total, largest = 0, (0, "")

    def visit(name: str, obj: Any) -> None:
        nonlocal total, largest
        if isinstance(obj, h5py.Dataset):
            n = math.prod(obj.shape or ()) * max(obj.dtype.itemsize, 1)
            total += n
            largest = max(largest, (n, f"{name} {list(obj.shape)}"))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return total, largest[1]


def read_nir(path: str | os.PathLike, *, max_bytes: int = MAX_NIR_BYTES) -> Any:
    """Read a NIR file, with one clear error for a missing, unreadable or malformed file, or one
    whose arrays would exceed ``max_bytes`` (or the memory available) once read: the sizes are
    checked from the file's headers first, so a small compressed file declaring a 50000×50000
    weight is refused without reading it."""
    from stbp import budget

    nir = _nir()
    path = Path(path)
    if not path.is_file():
        raise StbpError(f"NIR file {path}: no such file")
    try:
        declared, largest = _declared_bytes(path)
    except Exception as err:  # noqa: BLE001 - h5py raises many types for a bad file
        raise StbpError(f"NIR file {path}: not a readable NIR graph ({err.__class__.__name__}: "
                        f"{str(err)[:200]})") from None
    have = budget.available_bytes()
    limit = min(max_bytes, have // 2) if have is not None else max_bytes
    if declared > limit:
        raise StbpError(f"NIR file {path}: its arrays would take {budget.gib(declared)} in memory "
                        f"(the largest: {largest}), more than the {budget.gib(limit)} allowed; "
                        "refusing to read it (read_nir(..., max_bytes=...) raises the limit)")
    try:
        return nir.read(path)
    except Exception as err:  # noqa: BLE001 - h5py/nir raise many types for a bad file
        raise StbpError(f"NIR file {path}: not a readable NIR graph ({err.__class__.__name__}: "
                        f"{str(err)[:200]})") from None


def _synapse_layer(nir: Any, name: str, node: Any, gain: float,
                   neuron: LIFParams | None) -> nn.Module:
    """The stbp Linear or Conv2d of a NIR Affine/Linear/Conv2d node (its weights × ``gain``);
    ``neuron`` None: no neuron (a current readout)."""
    act = {"activation": "lif", "neuron": neuron} if neuron is not None else {"activation": "identity"}
    w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32) * np.float32(gain))
    bias = getattr(node, "bias", None)
    b = None if bias is None else torch.as_tensor(
        np.asarray(bias, dtype=np.float32) * np.float32(gain))
    if isinstance(node, nir.Conv2d):
        if w.dim() != 4 or int(np.prod(np.atleast_1d(node.dilation))) != 1 or node.groups != 1:
            raise StbpError(f"from_nir: node {name!r}: only 2-D convolutions without "
                            "dilation or groups are supported")
        stride = tuple(np.atleast_1d(node.stride).tolist()) * (
            2 if np.size(node.stride) == 1 else 1)
        pad = node.padding
        if isinstance(pad, str) or np.size(pad) not in (1, 2) or len(set(
                np.atleast_1d(pad).tolist())) != 1 or len(set(stride)) != 1:
            raise StbpError(f"from_nir: node {name!r}: only square strides and equal "
                            "numeric padding are supported")
        if w.shape[-1] != w.shape[-2]:
            raise StbpError(f"from_nir: node {name!r}: only square kernels are supported")
        mod = layers.Conv2d(w.shape[1], w.shape[0], w.shape[-1], stride=int(stride[0]),
                            padding=int(np.atleast_1d(pad)[0]), bias=b is not None, **act)
    else:
        if w.dim() != 2:
            raise StbpError(f"from_nir: node {name!r}: weight must be 2-D, got "
                            f"{tuple(w.shape)}")
        mod = layers.Linear(w.shape[1], w.shape[0], bias=b is not None, **act)
    with torch.no_grad():
        mod.synapse.weight.copy_(w.reshape(mod.synapse.weight.shape))
        if b is not None:
            mod.synapse.bias.copy_(b.reshape(mod.synapse.bias.shape))
    return mod


def _shape_layer(nir: Any, name: str, node: Any) -> nn.Module:
    """The stbp AvgPool2d or Flatten of a NIR node (anything else is refused)."""
    if isinstance(node, nir.AvgPool2d):
        ks = np.atleast_1d(node.kernel_size).tolist()
        st = np.atleast_1d(node.stride).tolist()
        if len(set(ks)) != 1 or len(set(st)) != 1 or np.any(np.asarray(node.padding) != 0):
            raise StbpError(f"from_nir: node {name!r}: only square, unpadded pooling is "
                            "supported")
        return layers.AvgPool2d(int(ks[0]), int(st[0]))
    if isinstance(node, nir.Flatten):
        if node.end_dim not in (-1,) or node.start_dim != 0:
            raise StbpError(f"from_nir: node {name!r}: only a Flatten of all the sample's "
                            "dimensions (start_dim 0, end_dim -1) is supported")
        return layers.Flatten()
    raise StbpError(f"from_nir: node {name!r} is a {type(node).__name__}, which stbp does "
                    "not support (Affine, Linear, Conv2d, LIF, IF, AvgPool2d, Flatten)")
