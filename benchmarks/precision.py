"""Accuracy of the bfloat16 fast paths against float32, where those paths run.

``[train] precision = "bf16"`` (``torch.autocast`` to bfloat16 on the CPU) changes two things
in stbp (docs/performance.md, "bf16"): a fully connected layer whose spikes are denser than
``Tuning.max_density_bf16`` runs one bfloat16 matmul instead of the float32 event sums, and a
convolution's gradient on its input (the transposed convolution) runs in bfloat16,
channels-last. This script trains the same networks from the same seeds both ways, for a short
budget, and prints the validation accuracy of each run, the mean ± std per precision, and the
training time:

- ``mlp-dense``: the paper's MLP 784-800-10 on MNIST coded densely, spike probability
  0.13 + 0.87 · intensity (22–27 % of the inputs spike at each step of a batch of 100, against
  10–16 % with the plain coding, which stays event-driven in float32). The first layer runs the
  bfloat16 matmul on the batches denser than ``Tuning.max_density_bf16`` (the script prints how
  many: all of them, with the defaults). The floor makes the task harder — a short run ends at
  67–83 % by seed (0.1: 90 %, 0.25: 57–72 %) — what matters is that both precisions, from the
  same seed, end at the same accuracy.
- ``cnn``: the paper's CNN 28x28-15C5-P2-40C5-P2-300-10 on MNIST (plain coding).

    python benchmarks/precision.py --data-dir DATA/mnist --nets mlp-dense,cnn --seeds 0 1 2

Validation: the last 5,000 training images (as ``stbp train``); training draws from the first
55,000. The two precisions see the same batches and the same spikes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

NETS = ("mlp-dense", "cnn")
FLOOR = 0.13  # mlp-dense: spike probability FLOOR + (1 - FLOOR) * intensity


def _setup(net: str, seed: int):
    from stbp import models

    if net == "mlp-dense":
        return models.mlp([784, 800, 10], seed=seed, decay=0.1, threshold=0.5,
                          surrogate="polynomial")
    return models.cnn(seed=seed, decay=0.1, threshold=0.5, surrogate="rectangular")


def _code(images, net: str, steps: int, gen):
    import torch

    from stbp import encoding

    p = images.float().div(255).unsqueeze(1)
    if net == "mlp-dense":
        p = FLOOR + (1 - FLOOR) * p
    return encoding.bernoulli(p, steps, generator=gen, dtype=torch.uint8)


def run(net: str, seed: int, precision: str, data, args) -> dict:
    import torch

    from stbp.kernels.runtime import TUNING
    from stbp.loss import predict, rate_mse

    torch.manual_seed(seed)
    model = _setup(net, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(args.train, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    images, labels = data["train"].images, data["train"].labels
    start = time.perf_counter()
    dense = steps = 0
    for _ in range(args.epochs):
        for lo in range(0, args.train, args.batch):
            pick = order[lo:lo + args.batch]
            x = _code(images[pick], net, args.steps, gen)
            steps += 1
            if net == "mlp-dense":  # bytes counted as they are: no float copy inside the timing
                dense += int(x.sum(dtype=torch.int64)) > TUNING.max_density_bf16 * x.numel()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x)
            loss = rate_mse(out, labels[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    correct = 0
    val = data["val"]
    egen = torch.Generator().manual_seed(12345)
    with torch.no_grad():
        for lo in range(0, args.val, 500):
            hi = min(lo + 500, args.val)
            x = _code(val.images[lo:hi], net, args.steps, egen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x)
            correct += int((predict(out) == val.labels[lo:hi]).sum())
    return {"net": net, "seed": seed, "precision": precision, "val_acc": 100.0 * correct / args.val,
            "train_seconds": round(seconds, 1), "steps": steps,
            "input_denser_than_bf16_limit": dense}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="the MNIST folder (default: as stbp train finds it)")
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated subset of {','.join(NETS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=10000, help="training images (the first N)")
    ap.add_argument("--val", type=int, default=5000, help="validation images")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="time steps T")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the runs to this JSON file")
    args = ap.parse_args(argv)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    bad = [n for n in nets if n not in NETS]
    if bad:
        ap.error(f"--nets: unknown {', '.join(bad)} (choose from {', '.join(NETS)})")
    if not 0 < args.train <= 55000 or not 0 < args.val <= 5000:
        ap.error("--train must be in 1..55000 and --val in 1..5000")

    import torch

    from stbp.data.mnist import load_mnist

    torch.set_num_threads(args.threads)
    data = load_mnist(args.data_dir, validation=5000)
    rows = []
    for net in nets:
        for seed in args.seeds:
            for precision in ("fp32", "bf16"):
                rows.append(run(net, seed, precision, data, args))
                r = rows[-1]
                dense = (f"; input denser than max_density_bf16 in {r['input_denser_than_bf16_limit']}"
                         f" of {r['steps']} steps" if net == "mlp-dense" else "")
                print(f"{net} seed {seed} {precision}: val {r['val_acc']:.2f} %, "
                      f"{r['train_seconds']:.0f} s{dense}", flush=True)
    print(f"\n{args.epochs} epoch(s) on {args.train} images, T = {args.steps}, {args.threads} threads\n")
    print("| network | precision | val accuracy per seed | mean ± std | training s (median) |")
    print("|---|---|---|---|---|")
    for net in nets:
        for precision in ("fp32", "bf16"):
            mine = [r for r in rows if r["net"] == net and r["precision"] == precision]
            accs = [r["val_acc"] for r in mine]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {net} | {precision} | {' / '.join(f'{a:.2f}' for a in accs)} | "
                  f"{statistics.mean(accs):.2f} ± {std:.2f} | "
                  f"{statistics.median(r['train_seconds'] for r in mine):.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
