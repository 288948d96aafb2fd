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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from stbp import budget, distributed, seeds
from stbp.config import dataset_info, differences, resolve_dataset, to_toml, validate
from stbp.data.splits import Split, load_splits
from stbp.errors import StbpError
from stbp.io import atomic_save, atomic_write
from stbp.loss import get_loss, predict
from stbp.models import SpikingNet
from stbp.runlock import RunLock, holder
from stbp.runs import (
    CHECKPOINT_FORMAT,
    autocast,
    build_model,
    describe_model,
    eval_options,
    eval_run,
    evaluate,
    load_checkpoint,
    load_run,
    resolve_device,
    strict_json,
)

__all__ = ["build_model", "train", "evaluate", "eval_run", "load_checkpoint", "load_run", "autocast",
           "resolve_device", "CHECKPOINT_FORMAT", "COMPILE_NOTICE_AFTER"]

#: seconds after which a process's first training step is said to be compiling the kernels
COMPILE_NOTICE_AFTER = 5.0
_WARM = {"done": False}  # whether this process has run a training step (kernels compiled)

def _optimizer(model: nn.Module, tcfg: dict[str, Any]) -> torch.optim.Optimizer:
    # Adam/AdamW fused (CPU, CUDA): the same update up to rounding, 0.19 ms instead of 0.72 for
    # the MLP's 0.63 M parameters (the CPU default's per-tensor loop; 2 threads)
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if tcfg["optimizer"] in ("adam", "adamw"):
        adam = torch.optim.Adam if tcfg["optimizer"] == "adam" else torch.optim.AdamW
        return adam(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"], **fused)
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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_options(cfg: dict[str, Any], nproc: int) -> torch.device:
    """The device to train on, after checking ``--nproc`` against the config."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise StbpError(f"--nproc must be an integer >= 1, got {nproc!r}")
    device = resolve_device(cfg["train"]["device"])
    if nproc > 1 and device.type != "cpu":
        raise StbpError(f"--nproc {nproc}: data-parallel training runs on CPU processes; with "
                        "[train] device = 'cuda' train in one process (or set device = 'cpu')")
    if nproc > 1 and cfg["train"]["batch_size"] < nproc:
        raise StbpError(f"--nproc {nproc}: [train] batch_size = {cfg['train']['batch_size']} "
                        "must be at least the number of processes")
    return device


def _check_limits(limits: dict[str, int | None]) -> None:
    for name, value in limits.items():
        if value is not None and value < 1:
            raise StbpError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def _saved_state(cfg: dict[str, Any], out: Path, resume: bool,
                 limits: dict[str, int | None]) -> dict[str, Any] | None:
    """The last checkpoint of the run in ``out`` to resume (checked to match), None for a new
    run; an error if ``out`` holds a run that is not to be resumed."""
    if out.exists() and not out.is_dir():
        raise StbpError(f"--out {out}: exists and is not a directory")
    last_path = out / "last.pt"
    if not (resume and last_path.is_file()):
        if last_path.is_file() or (out / "summary.json").is_file():
            raise StbpError(f"--out {out}: already holds a run; use --resume or another directory")
        return None
    state = load_checkpoint(last_path)
    diffs = differences(validate(state["config"], f"{last_path} (saved config)"), cfg)
    if diffs:
        raise StbpError(f"--resume: the configuration differs from the one saved in {last_path}: "
                        f"{'; '.join(diffs)}; a resumed run keeps its settings")
    if state.get("limits") != limits:
        saved = state.get("limits") or {}
        opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in saved.items() if v)
        raise StbpError(
            f"--resume: --limit-train/--limit-eval differ from the run's {saved}; resume "
            f"with the same options: {opts or '(no limits)'}"
        )
    return state


def _remove_parts(out: Path) -> None:
    """Remove ``*.part`` files a killed or failed writer left in the run folder (its lock is
    held: no one else writes them)."""
    for part in out.glob("*.part"):
        part.unlink(missing_ok=True)


def _launch(nproc: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Train in ``nproc`` local processes (:func:`stbp.distributed.launch`); their summary."""
    # fail (or build a cache) here, once
    load_splits(kwargs["cfg"], kwargs["data_dir"], progress=kwargs["progress"])
    try:
        distributed.launch(nproc, train, kwargs)
    except Exception as err:  # noqa: BLE001 - a worker's error, re-raised as one message
        last = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        raise StbpError(f"--nproc {nproc}: a training process failed: {last}") from None
    return json.loads((Path(kwargs["out"]) / "summary.json").read_text())


@dataclass
class _Run:
    """Everything one training process holds while it trains (see :func:`train`)."""

    cfg: dict[str, Any]
    out: Path
    device: torch.device
    group: distributed.Group
    splits: dict[str, Split]
    model: SpikingNet
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    ema: AveragedModel | None  # the moving average of the weights (train.ema > 0)
    loss_fn: Any
    data_source: str
    limits: dict[str, int | None]
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0,
                                                          "test_acc": float("nan")})
    seconds: float = 0.0
    start_epoch: int = 1
    pending: dict[str, Any] | None = None  # an epoch trained but not evaluated (resumed)

    @property
    def main(self) -> bool:
        return self.group.is_main

    @property
    def scored(self) -> SpikingNet:
        """The network evaluated and saved as ``model``: the moving average of the weights when
        train.ema > 0, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, epoch: int, **extra: Any) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "config": self.cfg, "model": self.scored.state_dict(),
                "epoch": epoch, **extra, "limits": self.limits, "data_dir": self.data_source}

    def save_last(self, epoch: int, **extra: Any) -> None:
        """``last.pt``: everything needed to resume after ``epoch`` (with train.ema > 0 also the
        trained weights and the average's state)."""
        if self.ema is not None:
            extra.update(trained=self.model.state_dict(), ema=self.ema.state_dict())
        atomic_save(self.checkpoint(epoch, optimizer=self.opt.state_dict(),
                                    scheduler=self.sched.state_dict(), history=self.history,
                                    best=self.best, seconds=self.seconds, **extra),
                    self.out / "last.pt")

    def write_metrics(self) -> None:
        """``metrics.jsonl``, one strict-JSON line per epoch (a non-finite number is null)."""
        atomic_write(self.out / "metrics.jsonl",
                     "".join(json.dumps(strict_json(h), allow_nan=False) + "\n"
                             for h in self.history))


def _start(cfg: dict[str, Any], out: Path, state: dict[str, Any] | None, *, device: torch.device,
           data_dir: str | os.PathLike | None, limits: dict[str, int | None], progress: bool) -> _Run:
    """Load the data, build the network and its optimizer (restored from ``state`` when
    resuming), write the run folder's config and metrics so far, and say what is trained."""
    group = distributed.current()
    tcfg = cfg["train"]
    data, folder = load_splits(cfg, data_dir, progress=progress and group.is_main)
    splits = {"train": data["train"].subset(limits["limit_train"]),
              "val": data["val"].subset(limits["limit_eval"]),
              "test": data["test"].subset(limits["limit_eval"])}
    torch.manual_seed(tcfg["seed"])
    model = build_model(cfg).to(device)  # the same weights in every process (seeded)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if group.world > 1 else model
    opt = _optimizer(model, tcfg)
    sched = _schedule(opt, tcfg, math.ceil(len(splits["train"]) / tcfg["batch_size"]))
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tcfg["ema"]), use_buffers=True)
           if tcfg["ema"] > 0 else None)
    run = _Run(cfg=cfg, out=out, device=device, group=group, splits=splits, model=model, net=net,
               opt=opt, sched=sched, ema=ema, loss_fn=_loss(tcfg), data_source=str(folder.resolve()),
               limits=limits)
    log = _log if run.main else (lambda _msg: None)
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.toml", to_toml(cfg))
    if state is not None and state["epoch"] >= tcfg["epochs"] and "pending" not in state:
        log(f"stbp: the run in {out} is complete ({tcfg['epochs']} of {tcfg['epochs']} epochs); "
            "nothing to resume — its summary:")
    else:
        log(
            f"stbp: {describe_model(cfg)} on {cfg['data']['dataset']} ({len(splits['train'])} train / "
            f"{len(splits['val'])} val / {len(splits['test'])} test, from {run.data_source}), "
            f"T = {cfg['encoding']['steps']}, {tcfg['epochs']} epochs -> {out}"
            + (f", {group.world} processes" if group.world > 1 else "")
            + (f", on {device}" if device.type != "cpu" else "")
        )
    if state is not None:
        model.load_state_dict(state["trained"] if ema is not None else state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        run.history, run.best, run.seconds = state["history"], state["best"], state["seconds"]
        run.start_epoch = state["epoch"] + 1
        run.pending = state.get("pending")
        if state["epoch"] < tcfg["epochs"] or run.pending is not None:
            log(f"stbp: resuming {out} after epoch {state['epoch']}"
                + (" (trained, now evaluated)" if run.pending is not None else ""))
    if run.main:
        run.write_metrics()
    return run


def _progress_bar(run: _Run, epoch: int, total: int, done: int, progress: bool):
    from tqdm import tqdm

    # ``initial``: a first step spent compiling stays out of the rate and the ETA
    return tqdm(total=total, initial=done, desc=f"epoch {epoch}/{run.cfg['train']['epochs']}",
                disable=not (progress and run.main), leave=False, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 30)


def _compile_notice(run: _Run) -> threading.Timer | None:
    """Say so when the process's first training step takes long: numba compiles the kernels
    then (once; they are cached on disk for later runs)."""
    if _WARM["done"] or not run.main:
        return None
    timer = threading.Timer(COMPILE_NOTICE_AFTER, _log, [
        "stbp: compiling kernels (first run only; cached for later runs) — the progress bar "
        "and its ETA start after this"])
    timer.daemon = True
    timer.start()
    return timer


def _diverged(run: _Run, epoch: int, what: str) -> StbpError:
    kept = (f"{run.out / 'last.pt'} keeps epoch {epoch - 1}, the last good one" if epoch > 1
            else "no checkpoint was written")
    return StbpError(f"training diverged in epoch {epoch}: {what}; the run stops ({kept}). Lower "
                     f"train.lr (now {run.cfg['train']['lr']:g}) or check the data and settings")


def _train_epoch(run: _Run, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training split (shuffled and encoded by seeded generators); its
    summed loss, correct count, samples seen, the learning rate of the last step, start time.
    A non-finite loss stops the run (:class:`StbpError`) before anything is saved."""
    cfg, group, split = run.cfg, run.group, run.splits["train"]
    tcfg, steps, seed = cfg["train"], cfg["encoding"]["steps"], cfg["train"]["seed"]
    # random rotation/scaling of training images (image datasets; off unless set)
    affine = {k: cfg["data"][k] for k in ("rotate", "scale") if cfg["data"].get(k)}
    batch = tcfg["batch_size"]
    t0 = time.perf_counter()
    run.net.train()
    order = torch.randperm(len(split), generator=seeds.generator(seed, epoch, 0))
    spike_gen, shift_gen = seeds.generator(seed, epoch, 1), seeds.generator(seed, epoch, 2)
    tot_loss, tot_correct, seen, lr_used = 0.0, 0, 0, float("nan")
    total = math.ceil(len(split) / batch)
    notice = _compile_notice(run)
    bar = None if notice is not None else _progress_bar(run, epoch, total, 0, progress)
    try:
        for i in range(total):
            idx = order[i * batch : (i + 1) * batch]
            x = split.inputs(idx, steps=steps, kind=cfg["encoding"]["kind"], generator=spike_gen,
                             shift=cfg["data"]["shift"], shift_generator=shift_gen, **affine)
            y = split.labels[idx]
            n = len(idx)
            if group.world > 1:  # every process drew the whole batch; each runs its share
                part = group.shard(n)
                x, y = x[:, part], y[part]
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            with autocast(tcfg["precision"], run.device):
                out_spikes = run.net(x)
                loss = run.loss_fn(out_spikes, y)
            run.opt.zero_grad(set_to_none=True)
            # DDP averages over processes: weight each share so the average is the batch mean
            (loss * (len(y) * group.world / n) if group.world > 1 else loss).backward()
            lr_used = run.opt.param_groups[0]["lr"]
            run.opt.step()
            run.sched.step()
            if run.ema is not None:
                run.ema.update_parameters(run.model)
            batch_loss, batch_correct = group.all_sum(
                [float(loss.detach()) * len(y), float((predict(out_spikes.detach()) == y).sum())])
            if not math.isfinite(batch_loss):  # every process sees the same sum: all stop
                raise _diverged(run, epoch, f"the training loss is {batch_loss / n} at batch "
                                f"{i + 1} of {total}")
            tot_loss += batch_loss
            tot_correct += int(batch_correct)
            seen += n
            if bar is None:
                notice.cancel()
                _WARM["done"] = True
                bar = _progress_bar(run, epoch, total, 1, progress)
            else:
                bar.update(1)
            bar.set_postfix(
                loss=f"{tot_loss / seen:.4f}", acc=f"{100 * tot_correct / seen:.2f}",
                samples_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False,
            )
    finally:
        if notice is not None:
            notice.cancel()
        if bar is not None:
            bar.close()
    _WARM["done"] = True
    bad = [name for name, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise _diverged(run, epoch, f"the weights of {', '.join(bad[:3])} are not finite")
    return {"loss": tot_loss, "correct": tot_correct, "seen": seen, "lr": lr_used,
            "train_seconds": time.perf_counter() - t0}


def _pct(x: float) -> float:
    """An accuracy as written and printed: in %, to 2 decimals."""
    return round(x, 2) if math.isfinite(x) else x


def _chance(cfg: dict[str, Any], val_acc: float) -> float | None:
    """The chance level (in %) if a spiking network's validation accuracy is at it."""
    classes = dataset_info(cfg["data"]).classes or 2
    chance = 100.0 / classes
    return chance if cfg["model"]["spiking"] and val_acc <= 1.2 * chance else None


def _end_epoch(run: _Run, epoch: int, stats: dict[str, Any]) -> None:
    """Save ``last.pt`` (the epoch trained, its evaluation pending: an evaluation that fails
    loses nothing), evaluate, record the epoch in metrics.jsonl, write ``best.pt`` when
    validation improved and ``last.pt`` again, and log the epoch (rank 0 only)."""
    cfg = run.cfg
    t0 = time.perf_counter() - stats["train_seconds"]
    run.save_last(epoch, pending=stats)
    steps, seed, tcfg = cfg["encoding"]["steps"], cfg["train"]["seed"], cfg["train"]
    ev = eval_options(cfg)
    val_split = run.splits["val"]
    val_spikes = torch.zeros(dataset_info(cfg["data"]).classes)
    val_acc = evaluate(run.scored, val_split, steps, seed=seed, output_spikes=val_spikes, **ev)
    test_acc = evaluate(run.scored, run.splits["test"], steps, seed=seed + 1, **ev)
    run.seconds += time.perf_counter() - t0
    silent = ([int(k) for k in torch.nonzero(val_spikes == 0).flatten()]
              if cfg["model"]["spiking"] and cfg["model"].get("readout", "rate") == "rate" else [])
    seen = stats["seen"]
    record = {
        "epoch": epoch, "train_loss": stats["loss"] / seen,
        "train_acc": _pct(100 * stats["correct"] / seen),
        "val_acc": _pct(val_acc), "test_acc": _pct(test_acc), "lr": stats["lr"],
        "epoch_seconds": round(time.perf_counter() - t0, 3),
        "train_samples_per_s": round(seen / stats["train_seconds"], 1),
        "seconds": round(run.seconds, 3), "silent_outputs": silent,
    }
    run.history.append(record)
    run.write_metrics()
    improved = val_acc > run.best["val_acc"]
    if improved:
        run.best = {"val_acc": val_acc, "epoch": epoch, "test_acc": test_acc}
        atomic_save(run.checkpoint(epoch, val_acc=val_acc), run.out / "best.pt")
    run.save_last(epoch)
    _log(
        f"epoch {epoch}/{tcfg['epochs']}  loss {record['train_loss']:.4f}  "
        f"train {record['train_acc']:.2f}%  val {val_acc:.2f}%{' *' if improved else '  '}  "
        f"test {test_acc:.2f}%  {record['train_samples_per_s']:.0f} samples/s  "
        f"{record['epoch_seconds']:.0f}s"
    )
    _warn(run, val_acc, silent)


def _warn(run: _Run, val_acc: float, silent: list[int]) -> None:
    cfg = run.cfg
    if len(run.splits["val"]) and (chance := _chance(cfg, val_acc)) is not None:
        _log(f"stbp: warning: validation accuracy {val_acc:.2f}% is at chance level "
             f"({chance:.1f}%): the spiking network has collapsed — its outputs no longer tell the "
             f"classes apart; lower train.lr (now {cfg['train']['lr']:g}) or try another seed")
    if silent and len(run.splits["val"]):
        hint = ("neuron.surrogate = \"polynomial\"" if cfg["neuron"]["surrogate"] == "rectangular"
                else "a surrogate with a wider support (neuron.surrogate, neuron.width)")
        _log(
            f"stbp: warning: output neuron(s) {', '.join(map(str, silent))} never fired on the "
            f"validation set, so their classes are never predicted; a neuron whose membrane "
            f"stays outside the surrogate's window gets no gradient and may not recover "
            f"(docs/results.md: if it persists, try another seed or {hint})"
        )


def _summary(run: _Run) -> dict[str, Any]:
    """The run's summary (best validation epoch and its test accuracy, …), written to
    summary.json."""
    history, best, splits = run.history, run.best, run.splits
    best_test = max(history, key=lambda h: h["test_acc"])
    summary = {
        "best_val_acc": _pct(best["val_acc"]),
        "test_acc": _pct(best["test_acc"]),
        "best_epoch": best["epoch"],
        "epochs": run.cfg["train"]["epochs"],
        "seconds": round(run.seconds, 1),
        "seed": run.cfg["train"]["seed"],
        "best_test_acc_any_epoch": best_test["test_acc"],
        "best_test_epoch": best_test["epoch"],
        "final_test_acc": history[-1]["test_acc"],
        "train_size": len(splits["train"]),
        "val_size": len(splits["val"]),
        "test_size": len(splits["test"]),
        "data_dir": run.data_source,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processes": run.group.world,
        "device": str(run.device),
    }
    if len(splits["val"]) and _chance(run.cfg, best["val_acc"]) is not None:
        summary["collapsed"] = True  # the best epoch is at chance level (logged every epoch)
        _log(f"stbp: warning: the run ends at chance level (best validation accuracy "
             f"{best['val_acc']:.2f}%): the spiking network collapsed")
    summary = strict_json(summary)
    atomic_write(run.out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


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
    The run folder is locked while the run writes it (:mod:`stbp.runlock`); the memory a step
    and an evaluation batch need is checked first (:mod:`stbp.budget`).
    """
    device = _check_options(cfg, nproc)
    cfg = resolve_dataset(cfg, data_dir)  # a folder dataset: absolute path, class names
    out = Path(out)
    limits = {"limit_train": limit_train, "limit_eval": limit_eval}
    _check_limits(limits)
    budget.check(cfg, device)
    kw = dict(resume=resume, data_dir=data_dir, limits=limits, progress=progress, nproc=nproc,
              device=device)
    group = distributed.current()
    if group.world > 1 and (not group.is_main or (holder(out) or {}).get("pid") == os.getppid()):
        return _train_locked(cfg, out, **kw)  # rank 0's process (or our launcher) holds the lock
    with RunLock(out, what="--out"):
        return _train_locked(cfg, out, **kw)


def _train_locked(cfg: dict[str, Any], out: Path, *, resume: bool, data_dir: Any,
                  limits: dict[str, int | None], progress: bool, nproc: int,
                  device: torch.device) -> dict[str, Any]:
    if distributed.current().is_main:
        _remove_parts(out)
    state = _saved_state(cfg, out, resume, limits)
    if nproc > 1 and distributed.current().world == 1:
        return _launch(nproc, dict(cfg=cfg, out=out, resume=resume, data_dir=data_dir,
                                   limit_train=limits["limit_train"],
                                   limit_eval=limits["limit_eval"], progress=progress))
    # Everything that can fail on bad input happens before the run directory is written.
    run = _start(cfg, out, state, device=device, data_dir=data_dir, limits=limits, progress=progress)
    if run.pending is not None:  # trained, saved, then interrupted before its evaluation
        if run.main:
            _end_epoch(run, run.start_epoch - 1, run.pending)
        run.group.barrier()
    for epoch in range(run.start_epoch, cfg["train"]["epochs"] + 1):
        stats = _train_epoch(run, epoch, progress)
        if run.main:  # rank 0 evaluates and writes; the others wait for the next epoch
            _end_epoch(run, epoch, stats)
        run.group.barrier()
    return _summary(run) if run.main else {}
