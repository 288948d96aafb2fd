"""Figures of trained runs and of the paper's analyses (PNG, matplotlib without a display).

- :func:`accuracy_curves` — accuracy per epoch, mean over seeds with the min–max band;
- :func:`surrogate_shapes` — the approximated derivatives h(u − V_th) (paper Eqs. 23–26);
- :func:`layer_rates` — mean firing rate per layer (:mod:`stbp.stats`);
- :func:`raster` — input and layer spikes of one sample, and the output neurons' membrane
  potentials u^t (E2) against V_th;
- :func:`plot_run` — all of them for one run directory (``stbp plot --run RUN_DIR``);
  :func:`plot_trained` for a shipped model too (``stbp plot --pretrained NAME``).

Every figure is written to a temporary name and then renamed, so a PNG is whole or absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stbp import seeds
from stbp.errors import StbpError
from stbp.io import atomic_open

if TYPE_CHECKING:
    from stbp.runs import Trained

__all__ = ["accuracy_curves", "surrogate_shapes", "layer_rates", "raster", "plot_run",
           "plot_trained", "read_history", "output_neuron"]

_CURVE_RANGE = 2.5  # u − V_th from −2.5 to 2.5 in the surrogate figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(path) as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``metrics.jsonl``), checked."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise StbpError(f"{path}: not found; is {run_dir} a run directory written by `stbp train`?")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise StbpError(f"{path}, line {i}: not valid JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
            raise StbpError(f"{path}, line {i}: not an epoch record")
        out.append(rec)
    return out


def accuracy_curves(
    series: dict[str, list[list[dict[str, Any]]]],
    path: str | os.PathLike,
    *,
    metric: str = "val_acc",
    title: str = "",
) -> Path:
    """One line per label: ``metric`` per epoch, mean over its runs (seeds), min–max shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, runs in series.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        epochs = min(len(r) for r in runs)
        x = [runs[0][i]["epoch"] for i in range(epochs)]
        values = torch.tensor([[r[i][metric] for i in range(epochs)] for r in runs],
                              dtype=torch.float64)
        mean = values.mean(0).numpy()
        (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(x, values.min(0).values.numpy(), values.max(0).values.numpy(), alpha=0.2,
                            color=line.get_color())
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel({"val_acc": "validation accuracy (%)", "test_acc": "test accuracy (%)",
                   "train_acc": "training accuracy (%)"}.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def surrogate_shapes(
    curves: Sequence[tuple[str, Any, float]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Plot h(u − V_th) for each ``(label, surrogate, width a)``; the surrogate is a name (with
    that width) or a :class:`~stbp.functional.surrogate.Surrogate` (its own width applies)."""
    from stbp.functional.surrogate import get_surrogate

    plt = _pyplot()
    x = torch.linspace(-_CURVE_RANGE, _CURVE_RANGE, 1001, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, name, width in curves:
        ax.plot(x.numpy(), get_surrogate(name, width).derivative(x).numpy(), label=label)
    ax.set_xlabel("u − V_th")
    ax.set_ylabel("h(u)  (approximated dg/du)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "approximated spike derivatives (each integrates to 1)")
    return _save(fig, path)


def layer_rates(
    rates: dict[str, list[dict[str, Any]]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Grouped bars: the mean firing rate (spikes per neuron per step) of each layer, per label."""
    plt = _pyplot()
    labels = list(rates)
    names = [s["name"] for s in rates[labels[0]]] if labels else []
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(names) * max(1, len(labels)) / 2), 4.0))
    width = 0.8 / max(1, len(labels))
    for k, label in enumerate(labels):
        values = [s["rate"] for s in rates[label]]
        pos = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(values))]
        ax.bar(pos, values, width=width, label=label)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("spikes per neuron per step")
    ax.grid(alpha=0.3, axis="y")
    if len(labels) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title or "mean firing rate per layer")
    return _save(fig, path)


def raster(
    traced: dict[str, Any],
    path: str | os.PathLike,
    *,
    threshold: float | None,
    sample: int = 0,
    label: int | None = None,
    title: str = "",
) -> Path:
    """Spike rasters of one sample (input and every layer) and its output membrane traces.

    ``traced`` is :func:`stbp.stats.trace`'s result; ``sample`` picks one from its batch.
    ``threshold`` is the output neurons' V_th (read it from the model, :func:`output_neuron`);
    ``None`` draws no threshold line (a non-spiking network).
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    x = traced["input"][:, sample].float()
    steps = x.shape[0]
    layers = traced["layers"]
    panels = 3 + len(layers)  # image, input raster, one raster per layer, membrane
    fig, axes = plt.subplots(panels, 1, figsize=(7.0, 2.0 + 1.6 * panels),
                             gridspec_kw={"height_ratios": [1.4] + [1] * (panels - 1)})
    # the input: spikes (or intensities) summed over time, as an image, and as a raster
    img = x.sum(0)
    img = img.sum(0) if img.dim() == 3 else img.reshape(-1, 1) if img.dim() == 1 else img
    axes[0].imshow(img.numpy(), cmap="gray_r", aspect="equal")
    axes[0].set_title(title or "input: spikes per pixel over the T steps", fontsize=9)
    axes[0].axis("off")
    rows = [("input", x.flatten(1), True)] + [
        (s["name"], s["spikes"][:, sample].flatten(1), s.get("spiking", True)) for s in layers]
    for i, (ax, (name, spikes, spiking)) in enumerate(zip(axes[1:-1], rows, strict=True)):
        if not spiking:  # a current readout: graded values, no spikes
            top = max(float(spikes.abs().max()), 1e-12)  # white at 0
            ax.imshow(spikes.T.numpy(), aspect="auto", cmap="RdBu_r", interpolation="nearest",
                      origin="lower", extent=(0.5, steps + 0.5, -0.5, spikes.shape[1] - 0.5),
                      vmin=-top, vmax=top)
            ax.set_ylabel("neuron", fontsize=8)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{name}: input current (no spikes: a current readout)", fontsize=9)
            continue
        fired = spikes > 0
        # neurons that fired at least once (all of them for the output layer), as an image
        keep = torch.arange(fired.shape[1]) if i == len(rows) - 1 else torch.nonzero(
            fired.any(0)).flatten()
        ax.imshow(fired[:, keep].T.float().numpy(), aspect="auto", cmap="Greys", interpolation="nearest",
                  origin="lower", extent=(0.5, steps + 0.5, -0.5, max(len(keep), 1) - 0.5),
                  vmin=0, vmax=1)
        rate = float(fired.float().mean())
        shown = "neuron" if i == len(rows) - 1 else f"active ({len(keep)} of {fired.shape[1]})"
        ax.set_ylabel(shown, fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # neurons are counted
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # time steps too
        ax.set_title(f"{name}: {int(fired.sum())} spikes, rate {rate:.3f}", fontsize=9)
    out = layers[-1]
    if not out.get("spiking", True):
        threshold = None  # the output layer has no neurons, so no threshold
    mem = out["membrane"][:, sample].flatten(1)
    ax = axes[-1]
    t = torch.arange(1, steps + 1).numpy()
    mem = mem.numpy()
    for k in range(mem.shape[1]):
        bold = label is not None and k == label
        ax.plot(t, mem[:, k], lw=2.0 if bold else 0.8, alpha=1.0 if bold else 0.6,
                label=f"neuron {k}" + (" (label)" if bold else ""))
    if threshold is not None:
        ax.axhline(threshold, color="r", ls="--", lw=1, label="V_th")
    ax.set_xlim(0.5, steps + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("time step t")
    graded = not out.get("spiking", True)
    ax.set_ylabel("I^t" if graded else "u^t", fontsize=8)
    ax.set_title(f"{out['name']}: " + ("input current of the output layer (its mean over T is "
                                       "the output)" if graded else
                                       "membrane potential of the output neurons"), fontsize=9)
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save(fig, path)


def output_neuron(model: Any) -> Any:
    """The neuron settings (:class:`~stbp.functional.lif.LIFParams`: threshold, surrogate, …)
    of a network's output layer, as the model holds them; None for a non-spiking network."""
    lifs = model.lif_layers()
    return lifs[-1].params if lifs else None


#: test samples ``stbp plot`` evaluates by default at most (firing rates, accuracy)
PLOT_SAMPLES = 1000


def _plot_limit(saved: int | None, given: int | None) -> tuple[int, str]:
    """:func:`stbp.runs.limit_rule`, at most :data:`PLOT_SAMPLES` unless ``--limit-eval`` is given."""
    from stbp.runs import limit_rule

    limit, rule = limit_rule(given, saved)
    if given is None and (limit is None or limit > PLOT_SAMPLES):
        return PLOT_SAMPLES, (f"the first {PLOT_SAMPLES} test samples (the figures use at most "
                              f"{PLOT_SAMPLES}; pass --limit-eval N to change)")
    return limit, rule


def _check_plot_options(sample: int, limit_eval: int | None) -> None:
    if limit_eval is not None and limit_eval < 1:
        raise StbpError(f"--limit-eval must be >= 1, got {limit_eval}")
    if sample < 0:
        raise StbpError(f"--sample must be >= 0, got {sample}")


def plot_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    checkpoint: str = "best",
    sample: int = 0,
    limit_eval: int | None = None,
) -> dict[str, Any]:
    """Figures of one run: accuracy curves, its surrogate, firing rate per layer (on the first
    ``limit_eval`` test samples: by default the run's own ``--limit-eval``, as ``stbp eval``
    does — :func:`stbp.runs.limit_rule` — at most :data:`PLOT_SAMPLES`), a raster and membrane
    trace of test sample ``sample``.

    Writes ``curves.png``, ``surrogate.png``, ``rates.png``, ``raster.png`` under ``out``
    (default ``RUN_DIR/plots``) and returns their paths and the firing statistics.
    """
    from stbp.runs import open_run

    run_dir = Path(run_dir)
    _check_plot_options(sample, limit_eval)
    trained = open_run(run_dir, checkpoint, data_dir)
    return plot_trained(trained, out if out is not None else run_dir / "plots",
                        history=read_history(run_dir), checkpoint=checkpoint, sample=sample,
                        limit_eval=limit_eval)


def _curves(history: list[dict[str, Any]], epoch: int, checkpoint: str, loss: str, name: str,
            path: Path) -> Path:
    """Accuracies (train, validation, test) and the training loss per epoch; the epoch of the
    checkpoint plotted marked."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [h["epoch"] for h in history]
    for key, lab in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test")):
        a1.plot(ep, [h[key] for h in history], marker="o", ms=3, label=lab)
    a1.axvline(epoch, color="gray", ls=":", lw=1, label=f"{checkpoint} (epoch {epoch})")
    a1.set_xlabel("epoch")
    a1.xaxis.get_major_locator().set_params(integer=True)
    a2.xaxis.get_major_locator().set_params(integer=True)
    a1.set_ylabel("accuracy (%)")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a2.plot(ep, [h["train_loss"] for h in history], marker="o", ms=3)
    a2.set_xlabel("epoch")
    a2.set_ylabel(f"training loss ({loss})")
    a2.grid(alpha=0.3)
    fig.suptitle(name)
    return _save(fig, path)


def plot_trained(
    trained: Trained,
    out: str | os.PathLike,
    *,
    history: list[dict[str, Any]] | None = None,
    checkpoint: str = "best",
    sample: int = 0,
    limit_eval: int | None = None,
) -> dict[str, Any]:
    """:func:`plot_run` of a :class:`~stbp.runs.Trained` network (a run's, or a shipped model's,
    whose per-epoch ``history`` its card holds) into the folder ``out``."""
    from stbp.loss import predict
    from stbp.runs import eval_options, evaluate, trained_splits
    from stbp.stats import FiringMonitor, trace

    _check_plot_options(sample, limit_eval)
    model, cfg, ckpt, name = trained.model, trained.cfg, trained.ckpt, trained.name
    limit_eval, rule = _plot_limit(trained.limit_eval, limit_eval)
    test = trained_splits(trained)["test"]
    if sample >= len(test):
        raise StbpError(f"--sample {sample}: the test split has {len(test)} samples")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StbpError(f"--out {out}: exists and is not a directory")
    steps, enc = cfg["encoding"]["steps"], cfg["encoding"]["kind"]
    neuron = output_neuron(model)  # the settings the network runs with, not the config's
    paths: dict[str, str] = {}
    if history:
        paths["curves"] = str(_curves(history, ckpt["epoch"], checkpoint, cfg["train"]["loss"], name,
                                      out / "curves.png"))
    if neuron is not None:  # a non-spiking network has no surrogate
        h = neuron.surrogate
        paths["surrogate"] = str(surrogate_shapes(
            [(f"{h.name}, a = {getattr(h, 'width', 1.0):g}", h, getattr(h, "width", 1.0))],
            out / "surrogate.png", title=f"{name}: the approximated derivative it was trained with"))
    subset = test.subset(limit_eval)
    with FiringMonitor(model) as monitor:
        acc = evaluate(model, subset, steps, seed=cfg["train"]["seed"] + 1, **eval_options(cfg))
    firing = monitor.summary()
    paths["rates"] = str(layer_rates({name: firing["layers"]}, out / "rates.png",
                                     title=f"{name}: mean firing rate per layer on "
                                     f"{firing['samples']} test samples"))
    idx = torch.tensor([sample])
    x = test.inputs(idx, steps=steps, kind=enc, generator=seeds.generator(seeds.EVAL_SEED, sample))
    traced = trace(model, x)
    lab = int(test.labels[sample])
    pred = int(predict(traced["layers"][-1]["spikes"])[0])
    paths["raster"] = str(raster(
        traced, out / "raster.png", threshold=None if neuron is None else neuron.threshold,
        label=lab,
        title=f"{name}: test sample {sample} (label {lab}, predicted {pred})"))
    return {"figures": paths, "test_acc": round(acc, 2), "limit_eval": limit_eval,
            "evaluated_on": rule, "firing": firing}
