"""The N-MNIST MLP trained by stbp and by a peer library, side by side, on the same frames.

Both libraries train the same network (the paper's 34x34x2-800-10 MLP) with the same recipe —
the `nmnist-mlp` preset: frames, validation split, paper initialisation, LIF with decay τ and
zero reset (E4'), the h2 (polynomial/triangle) surrogate, the MSE-on-rate loss (E5), Adam with a
cosine schedule, batch size, epochs — in the same loop with the same shuffling. Only the network
differs: `stbp.models.mlp` against the peer's own layers and neuron. The model is selected on
the validation split; the table gives its test accuracy, the final epoch's, and the wall time.

SpikingJelly's multi-step LIFNode with decay_input=False, v_reset=0 and tau = 1/(1 − τ) runs
exactly E4' (H = τ·V + X, fire when H ≥ V_th, reset to 0), and its PiecewiseQuadratic(alpha=0.5)
surrogate is h2 with a = 1. snnTorch's Leaky(beta=τ, reset_mechanism="zero") with h2 as a custom
surrogate has the same forward dynamics; it detaches the reset from the gradient (STBP keeps the
reset term ∂u^{t+1}/∂o^t = −τ·u^t of E4').

    python benchmarks/nmnist_peers.py --data-dir DATA/nmnist-small --seeds 0 1 2 3 4 \\
        --epochs 30 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import sys
import time

import torch
from torch import nn

from stbp import models
from stbp.config import load_config
from stbp.data.splits import load_splits
from stbp.init import paper_init_
from stbp.loss import get_loss, predict

PEERS = ("spikingjelly", "snntorch")


def _stbp_net(cfg: dict, seed: int) -> nn.Module:
    return models.mlp(cfg["model"]["sizes"], seed=seed, **cfg["neuron"])


def _spikingjelly_net(cfg: dict, seed: int) -> nn.Module:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    n = cfg["neuron"]
    sizes = cfg["model"]["sizes"]

    def lif():
        return neuron.LIFNode(tau=1 / (1 - n["decay"]), v_threshold=n["threshold"], v_reset=0.0,
                              decay_input=False, surrogate_function=surrogate.PiecewiseQuadratic(
                                  alpha=0.5), step_mode="m")

    mods: list[nn.Module] = [layer.Flatten(step_mode="m")]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        mods += [layer.Linear(a, b, step_mode="m"), lif()]
    net = nn.Sequential(*mods)
    paper_init_(net, generator=torch.Generator().manual_seed(seed))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            functional.reset_net(self.net)
            return self.net(x)

    return Net()


class _H2(torch.autograd.Function):
    """Heaviside forward, h2 (a = 1) backward: max(0, 1/2 − |x|/4), for snnTorch."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (0.5 - 0.25 * x.abs()).clamp_min(0)


def _snntorch_net(cfg: dict, seed: int) -> nn.Module:
    import snntorch as snn

    n = cfg["neuron"]
    sizes = cfg["model"]["sizes"]
    fcs = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
    lifs = nn.ModuleList([snn.Leaky(beta=n["decay"], threshold=n["threshold"], spike_grad=_H2.apply,
                                    reset_mechanism="zero") for _ in fcs])
    paper_init_(fcs, generator=torch.Generator().manual_seed(seed))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fcs, self.lifs = fcs, lifs

        def forward(self, x):  # the snnTorch idiom: a Python loop over time steps
            mems = [lif.init_leaky() for lif in self.lifs]
            out = []
            for t in range(x.shape[0]):
                h = x[t].flatten(1)
                for i, (fc, lif) in enumerate(zip(self.fcs, self.lifs, strict=True)):
                    h, mems[i] = lif(fc(h), mems[i])
                out.append(h)
            return torch.stack(out)

    return Net()


NETS = {"stbp": _stbp_net, "spikingjelly": _spikingjelly_net, "snntorch": _snntorch_net}


def _inputs(lib: str, split, idx, steps: int):
    """The frames as stbp's splits give them (bytes); the peers' layers want float32."""
    x = split.inputs(idx, steps=steps)
    return x if lib == "stbp" else x.float()


@torch.no_grad()
def _accuracy(lib: str, net: nn.Module, split, steps: int) -> float:
    net.eval()
    correct = 0
    for start in range(0, len(split), 500):
        idx = torch.arange(start, min(start + 500, len(split)))
        correct += int((predict(net(_inputs(lib, split, idx, steps))) == split.labels[idx]).sum())
    return 100.0 * correct / len(split)


def run(lib: str, cfg: dict, splits: dict, seed: int) -> dict:
    """Train one library's network with the preset's recipe; the same loop for every library."""
    tcfg, steps = cfg["train"], cfg["encoding"]["steps"]
    torch.manual_seed(seed)
    net = NETS[lib](cfg, seed)
    opt = torch.optim.Adam(net.parameters(), lr=tcfg["lr"])
    train = splits["train"]
    batch = tcfg["batch_size"]
    per_epoch = math.ceil(len(train) / batch)
    total = tcfg["epochs"] * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = get_loss("mse")
    best = (-1.0, 0, float("nan"))
    t0 = time.perf_counter()
    train_s = 0.0
    for epoch in range(1, tcfg["epochs"] + 1):
        net.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        t1 = time.perf_counter()
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            loss = loss_fn(net(_inputs(lib, train, idx, steps)), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        train_s += time.perf_counter() - t1
        val = _accuracy(lib, net, splits["val"], steps)
        test = _accuracy(lib, net, splits["test"], steps)
        if val > best[0]:
            best = (val, epoch, test)
        print(f"  {lib} seed {seed} epoch {epoch}: val {val:.1f} test {test:.1f}", file=sys.stderr,
              flush=True)
    return {"lib": lib, "seed": seed, "best_val": best[0], "best_epoch": best[1], "test": best[2],
            "final_test": test, "train_s": round(train_s, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="N-MNIST folder (Train/, Test/ or the zips)")
    ap.add_argument("--preset", default="nmnist-mlp")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=V")
    ap.add_argument("--epochs", type=int, help="overrides train.epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--libs", nargs="+", default=["stbp", *PEERS], choices=list(NETS))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", help="also write the per-run results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    cfg = load_config(args.preset, overrides=overrides)
    if cfg["model"]["kind"] != "mlp" or cfg["data"]["dataset"] != "nmnist":
        ap.error("this comparison runs the N-MNIST MLP presets")
    splits, folder = load_splits(cfg, args.data_dir)
    libs = [lib for lib in args.libs if lib == "stbp" or importlib.util.find_spec(lib)]
    skipped = sorted(set(args.libs) - set(libs))
    print(f"N-MNIST {folder}: {len(splits['train'])} train / {len(splits['val'])} val / "
          f"{len(splits['test'])} test; {cfg['train']['epochs']} epochs; seeds {args.seeds}; "
          f"{args.threads} threads; torch {torch.__version__}; {platform.processor() or platform.machine()}"
          + (f"; not installed: {', '.join(skipped)}" if skipped else ""))
    rows = [run(lib, cfg, splits, seed) for seed in args.seeds for lib in libs]
    print("\n| library | seeds | test acc, val-selected (%) | final-epoch test (%) | train s/run |")
    print("|---|---|---|---|---|")
    for lib in libs:
        mine = [r for r in rows if r["lib"] == lib]
        print(f"| {lib} | {len(mine)} | {_mean_std([r['test'] for r in mine])} | "
              f"{_mean_std([r['final_test'] for r in mine])} | "
              f"{statistics.mean(r['train_s'] for r in mine):.0f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": cfg, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
