"""The trainer behind ``stbp train`` / ``stbp eval``: data → encoding → network → loss (E5) → STBP.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.jsonl`` (one line
per epoch), ``summary.json``, ``best.pt`` (the best-validation model) and ``last.pt`` (everything
needed to resume). Every random draw (init, shuffling, spike encoding) comes from a generator
seeded by (seed, epoch), so a resumed run reaches the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stbp import distributed
from stbp.config import dataset_info, to_toml, validate
from stbp.data.splits import Split, load_splits, resolve_dataset
from stbp.errors import StbpError
from stbp.loss import get_loss, predict
from stbp.models import SpikingNet, build
from stbp.stats import FiringMonitor

__all__ = ["build_model", "train", "evaluate", "eval_run", "load_checkpoint", "load_run"]

CHECKPOINT_FORMAT = "stbp-checkpoint-v1"
_EVAL_SEED = 2_000_003  # spike trains for val/test are fixed across epochs and runs of a seed


def _gen(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def build_model(cfg: dict[str, Any]) -> SpikingNet:
    """The network described by a validated config's [model] and [neuron] tables."""
    model = dict(cfg["model"])
    kind = model.pop("kind")
    ds = dataset_info(cfg["data"])
    if ds["classes"] is None:
        raise StbpError("the folder dataset's classes are not known yet; resolve the config first "
                        "(stbp.data.splits.resolve_dataset)")
    if kind == "cnn":
        model.update(in_channels=ds["input"][0], image_size=ds["input"][1], classes=ds["classes"])
    return build(kind, seed=cfg["train"]["seed"], **model, **cfg["neuron"])


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The mixed-precision context of ``[train] precision``: "bf16" runs the synapses (matmuls,
    convs) in bfloat16 — spikes are exact in it — while the neurons keep float32 state."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16")


def resolve_device(name: str) -> torch.device:
    """``[train] device``: "cpu", "cuda", or "auto" (a CUDA GPU when torch finds one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StbpError("[train] device = 'cuda', but torch finds no CUDA GPU "
                        "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    return torch.device(name)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    steps: int,
    *,
    seed: int,
    batch_size: int = 1000,
    encoding_kind: str = "bernoulli",
    precision: str = "fp32",
    output_spikes: Tensor | None = None,
) -> float:
    """Accuracy (in %) of ``model`` on ``split`` with fixed (seeded) input spike trains.

    ``output_spikes``, a zero tensor ``[classes]``, receives each output neuron's spike count.
    """
    if len(split) == 0:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    gen = _gen(_EVAL_SEED, seed)
    correct = 0
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        x = split.inputs(idx, steps=steps, kind=encoding_kind, generator=gen).to(device)
        with autocast(precision, device):
            out = model(x)
        correct += int((predict(out).cpu() == split.labels[idx]).sum())
        if output_spikes is not None:
            output_spikes += out.float().sum((0, 1)).cpu()
    return 100.0 * correct / len(split)


def _optimizer(model: nn.Module, tcfg: dict[str, Any]) -> torch.optim.Optimizer:
    if tcfg["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    if tcfg["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    return torch.optim.SGD(
        model.parameters(), lr=tcfg["lr"], momentum=tcfg["momentum"],
        weight_decay=tcfg["weight_decay"],
    )


def _schedule(opt: torch.optim.Optimizer, tcfg: dict[str, Any], steps_per_epoch: int):
    total = tcfg["epochs"] * steps_per_epoch
    kind = tcfg["schedule"]

    def factor(step: int) -> float:
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if kind == "step":
            return tcfg["step_gamma"] ** (step // (tcfg["step_epochs"] * steps_per_epoch))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _loss(tcfg: dict[str, Any]):
    if tcfg["loss"] == "cross_entropy":
        return get_loss("cross_entropy", scale=tcfg["ce_scale"])
    return get_loss(tcfg["loss"])


def _describe(cfg: dict[str, Any]) -> str:
    m = cfg["model"]
    what = "" if m.get("spiking", True) else "non-spiking "
    if m["kind"] == "mlp":
        return what + "MLP " + "-".join(str(s) for s in m["sizes"])
    k, chans, hidden = m.get("kernel_size", 5), m.get("channels", [15, 40]), m.get("hidden", [300])
    ds = dataset_info(cfg["data"])
    return what + "CNN " + "-".join(
        ["x".join(str(d) for d in ds["input"][1:])] + [f"{c}C{k}-P2" for c in chans]
        + [str(h) for h in hidden] + [str(ds["classes"])]
    )


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` whole or not at all."""
    tmp = path.with_name(path.name + ".part")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a stbp checkpoint (tensors and plain data only; nothing is executed)."""
    path = Path(path)
    if not path.is_file():
        raise StbpError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise StbpError(f"checkpoint {path}: unreadable or corrupt ({err.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise StbpError(f"checkpoint {path}: not a stbp checkpoint")
    for key in ("config", "model", "epoch"):
        if key not in ckpt:
            raise StbpError(f"checkpoint {path}: missing {key!r}")
    return ckpt


def _model_from_checkpoint(ckpt: dict[str, Any], path: Path) -> tuple[SpikingNet, dict]:
    cfg = validate(ckpt["config"], f"{path} (saved config)")
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise StbpError(f"checkpoint {path}: weights do not fit the saved model ({err})") from None
    return model, cfg


def load_run(
    run_dir: str | os.PathLike, checkpoint: str = "best", data_dir: str | os.PathLike | None = None
) -> tuple[SpikingNet, dict[str, Any], dict[str, Any], str | os.PathLike | None]:
    """A run directory's model (best or last checkpoint), its config, the checkpoint, and the
    data folder to use: ``data_dir`` if given, else the one the run was trained on if it still
    exists (else ``None``: the usual lookup)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StbpError(f"--run {run_dir}: no such directory")
    if checkpoint not in ("best", "last"):
        raise StbpError(f"--checkpoint must be 'best' or 'last', got {checkpoint!r}")
    path = run_dir / f"{checkpoint}.pt"
    ckpt = load_checkpoint(path)
    model, cfg = _model_from_checkpoint(ckpt, path)
    saved = ckpt.get("data_dir")
    if data_dir is None and isinstance(saved, str) and Path(saved).is_dir():
        data_dir = saved  # the data the run was trained on
    return model, cfg, ckpt, data_dir


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(
    cfg: dict[str, Any],
    out: str | os.PathLike,
    *,
    resume: bool = False,
    data_dir: str | os.PathLike | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    progress: bool = True,
    nproc: int = 1,
) -> dict[str, Any]:
    """Train the configured network; write the run directory ``out``; return the summary.

    ``nproc > 1`` trains data-parallel in that many local processes (:mod:`stbp.distributed`),
    with the same global batch and the same result as one process, to float rounding.
    """
    from tqdm import tqdm

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise StbpError(f"--nproc must be an integer >= 1, got {nproc!r}")
    device = resolve_device(cfg["train"]["device"])
    if nproc > 1 and device.type != "cpu":
        raise StbpError(f"--nproc {nproc}: data-parallel training runs on CPU processes; with "
                        "[train] device = 'cuda' train in one process (or set device = 'cpu')")
    if nproc > 1 and cfg["train"]["batch_size"] < nproc:
        raise StbpError(f"--nproc {nproc}: [train] batch_size = {cfg['train']['batch_size']} "
                        "must be at least the number of processes")
    group = distributed.current()
    cfg = resolve_dataset(cfg, data_dir)  # a folder dataset: absolute path, class names
    out = Path(out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    limits = {"limit_train": limit_train, "limit_eval": limit_eval}
    for name, value in limits.items():
        if value is not None and value < 1:
            raise StbpError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if out.exists() and not out.is_dir():
        raise StbpError(f"--out {out}: exists and is not a directory")
    state: dict[str, Any] | None = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        if validate(state["config"], f"{last_path} (saved config)") != cfg:
            raise StbpError(
                f"--resume: the configuration differs from the one saved in {out}/config.toml"
            )
        if state.get("limits") != limits:
            saved = state.get("limits") or {}
            opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in saved.items() if v)
            raise StbpError(
                f"--resume: --limit-train/--limit-eval differ from the run's {saved}; resume "
                f"with the same options: {opts or '(no limits)'}"
            )
    elif last_path.is_file() or (out / "summary.json").is_file():
        raise StbpError(f"--out {out}: already holds a run; use --resume or another directory")
    if nproc > 1 and group.world == 1:
        load_splits(cfg, data_dir, progress=progress)  # fail (or build a cache) here, once
        kwargs = dict(cfg=cfg, out=out, resume=resume, data_dir=data_dir,
                      limit_train=limit_train, limit_eval=limit_eval, progress=progress)
        try:
            distributed.launch(nproc, train, kwargs)
        except Exception as err:  # noqa: BLE001 - a worker's error, re-raised as one message
            last = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
            raise StbpError(f"--nproc {nproc}: a training process failed: {last}") from None
        return json.loads((out / "summary.json").read_text())

    # Everything that can fail on bad input happens before the run directory is written.
    tcfg, steps = cfg["train"], cfg["encoding"]["steps"]
    seed, shift, enc = tcfg["seed"], cfg["data"]["shift"], cfg["encoding"]["kind"]
    # random rotation/scaling of training images (image datasets; off unless set)
    affine = {k: cfg["data"][k] for k in ("rotate", "scale") if cfg["data"].get(k)}
    data, folder = load_splits(cfg, data_dir, progress=progress and group.is_main)
    train_split = data["train"].subset(limit_train)
    val_split, test_split = data["val"].subset(limit_eval), data["test"].subset(limit_eval)

    torch.manual_seed(seed)
    model = build_model(cfg).to(device)  # the same weights in every process (seeded)
    net: nn.Module = model
    if group.world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    opt = _optimizer(model, tcfg)
    batch = tcfg["batch_size"]
    steps_per_epoch = math.ceil(len(train_split) / batch)
    sched = _schedule(opt, tcfg, steps_per_epoch)
    loss_fn = _loss(tcfg)
    data_source = str(folder.resolve())

    main = group.is_main
    log = _log if main else (lambda _msg: None)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "config.toml", to_toml(cfg))
    log(
        f"stbp: {_describe(cfg)} on {cfg['data']['dataset']} ({len(train_split)} train / "
        f"{len(val_split)} val / {len(test_split)} test, from {data_source}), T = {steps}, "
        f"{tcfg['epochs']} epochs -> {out}"
        + (f", {group.world} processes" if group.world > 1 else "")
        + (f", on {device}" if device.type != "cpu" else "")
    )

    history: list[dict[str, Any]] = []
    best = {"val_acc": -1.0, "epoch": 0, "test_acc": float("nan")}
    seconds = 0.0
    start_epoch = 1
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best, seconds = state["history"], state["best"], state["seconds"]
        start_epoch = state["epoch"] + 1
        log(f"stbp: resuming {out} after epoch {state['epoch']}")
    if main:
        _atomic_write(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))

    for epoch in range(start_epoch, tcfg["epochs"] + 1):
        t0 = time.perf_counter()
        net.train()
        order = torch.randperm(len(train_split), generator=_gen(seed, epoch, 0))
        spike_gen = _gen(seed, epoch, 1)
        shift_gen = _gen(seed, epoch, 2)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch}/{tcfg['epochs']}",
            disable=not (progress and main),
            leave=False, file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30,
        )
        for i in bar:
            idx = order[i * batch : (i + 1) * batch]
            x = train_split.inputs(idx, steps=steps, kind=enc, generator=spike_gen, shift=shift,
                                   shift_generator=shift_gen, **affine)
            y = train_split.labels[idx]
            n = len(idx)
            if group.world > 1:  # every process drew the whole batch; each runs its share
                part = group.shard(n)
                x, y = x[:, part], y[part]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(tcfg["precision"], device):
                out_spikes = net(x)
                loss = loss_fn(out_spikes, y)
            opt.zero_grad(set_to_none=True)
            # DDP averages over processes: weight each share so the average is the batch mean
            (loss * (len(y) * group.world / n) if group.world > 1 else loss).backward()
            lr_used = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            batch_loss, batch_correct = group.all_sum(
                [float(loss.detach()) * len(y), float((predict(out_spikes.detach()) == y).sum())])
            tot_loss += batch_loss
            tot_correct += int(batch_correct)
            seen += n
            bar.set_postfix(
                loss=f"{tot_loss / seen:.4f}", acc=f"{100 * tot_correct / seen:.2f}",
                samples_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False,
            )
        bar.close()
        train_seconds = time.perf_counter() - t0
        ev = dict(batch_size=tcfg["eval_batch_size"], encoding_kind=enc,
                  precision=tcfg["precision"])
        if not main:  # rank 0 evaluates and writes; the others wait for the next epoch
            group.barrier()
            continue
        val_spikes = torch.zeros(dataset_info(cfg["data"])["classes"])
        val_acc = evaluate(model, val_split, steps, seed=seed, output_spikes=val_spikes, **ev)
        test_acc = evaluate(model, test_split, steps, seed=seed + 1, **ev)
        seconds += time.perf_counter() - t0
        silent = ([int(k) for k in torch.nonzero(val_spikes == 0).flatten()]
                  if cfg["model"]["spiking"] else [])
        record = {
            "epoch": epoch, "train_loss": tot_loss / seen, "train_acc": 100 * tot_correct / seen,
            "val_acc": val_acc, "test_acc": test_acc, "lr": lr_used,
            "epoch_seconds": round(time.perf_counter() - t0, 3),
            "train_samples_per_s": round(seen / train_seconds, 1), "seconds": round(seconds, 3),
            "silent_outputs": silent,
        }
        history.append(record)
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        improved = val_acc > best["val_acc"]
        if improved:
            best = {"val_acc": val_acc, "epoch": epoch, "test_acc": test_acc}
            _atomic_save(
                {"format": CHECKPOINT_FORMAT, "config": cfg, "model": model.state_dict(),
                 "epoch": epoch, "val_acc": val_acc, "data_dir": data_source}, best_path,
            )
        _atomic_save(
            {"format": CHECKPOINT_FORMAT, "config": cfg, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
             "history": history, "best": best, "seconds": seconds, "limits": limits,
             "data_dir": data_source},
            last_path,
        )
        _log(
            f"epoch {epoch}/{tcfg['epochs']}  loss {record['train_loss']:.4f}  "
            f"train {record['train_acc']:.2f}%  val {val_acc:.2f}%{' *' if improved else '  '}  "
            f"test {test_acc:.2f}%  {record['train_samples_per_s']:.0f} samples/s  "
            f"{record['epoch_seconds']:.0f}s"
        )
        if silent and len(val_split):
            hint = ("neuron.surrogate = \"polynomial\"" if cfg["neuron"]["surrogate"] == "rectangular"
                    else "a surrogate with a wider support (neuron.surrogate, neuron.width)")
            _log(
                f"stbp: warning: output neuron(s) {', '.join(map(str, silent))} never fired on the "
                f"validation set, so their classes are never predicted; a neuron whose membrane "
                f"stays outside the surrogate's window gets no gradient and may not recover "
                f"(docs/results.md: if it persists, try another seed or {hint})"
            )
        group.barrier()

    if not main:
        return {}
    best_test = max(history, key=lambda h: h["test_acc"])
    summary = {
        "best_val_acc": best["val_acc"],
        "test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "epochs": tcfg["epochs"],
        "seconds": round(seconds, 1),
        "seed": seed,
        "best_test_acc_any_epoch": best_test["test_acc"],
        "best_test_epoch": best_test["epoch"],
        "final_test_acc": history[-1]["test_acc"],
        "train_size": len(train_split),
        "val_size": len(val_split),
        "test_size": len(test_split),
        "data_dir": data_source,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processes": group.world,
        "device": str(device),
    }
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def eval_run(
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    checkpoint: str = "best",
    limit_eval: int | None = None,
) -> dict[str, Any]:
    """Re-evaluate a run's best (or last) model on the validation and test splits.

    The result also holds the firing statistics on the test split (:mod:`stbp.stats`): each
    layer's mean rate and synaptic operations per sample, next to a same-shape ANN's MACs.
    """
    if limit_eval is not None and limit_eval < 1:
        raise StbpError(f"--limit-eval must be >= 1, got {limit_eval}")
    model, cfg, ckpt, data_dir = load_run(run_dir, checkpoint, data_dir)
    path = Path(run_dir) / f"{checkpoint}.pt"
    data, _ = load_splits(cfg, data_dir)
    steps, seed = cfg["encoding"]["steps"], cfg["train"]["seed"]
    ev = dict(batch_size=cfg["train"]["eval_batch_size"], encoding_kind=cfg["encoding"]["kind"],
              precision=cfg["train"]["precision"])
    val, test = data["val"].subset(limit_eval), data["test"].subset(limit_eval)
    val_acc = evaluate(model, val, steps, seed=seed, **ev)
    with FiringMonitor(model) as monitor:
        test_acc = evaluate(model, test, steps, seed=seed + 1, **ev)
    return {
        "checkpoint": str(path),
        "epoch": ckpt["epoch"],
        "val_acc": val_acc,
        "test_acc": test_acc,
        "val_size": len(val),  # the run's own limits are not applied: --limit-eval N here
        "test_size": len(test),
        "firing": monitor.summary(),  # on the test split: rate per layer, SynOps per sample
    }
