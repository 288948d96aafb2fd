"""How long stbp's network takes for each way a user hands it spikes: a training step of the
paper's MNIST MLP (or CNN) with each step's fresh Bernoulli spikes made *outside* the timer, as
float32 (``(torch.rand(...) < p).float()``, what PyTorch SNN tutorials write), bool
(``torch.rand(...) < p``), uint8 (what ``stbp train`` feeds), and float32 made once and reused.

``peers.py`` times whole steps, the user's encoding included, and its "network alone" column
subtracts the encoding timed on its own; this script times the network with no subtraction.
Real MNIST training digits (``$STBP_DATA``, ``--data-dir`` or the cache; a fixed draw), the
paper's MNIST neuron, MSE on rate, Adam at 1e-3. The cases run interleaved, one round after the
other, each from a fresh network; the median step of each round is printed, and the median of
the rounds.

    python benchmarks/input_dtypes.py --threads 2 --rounds 3 --json dtypes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import peer_nets

CASES = ("float32", "bool", "uint8", "float32-reused")


def _round(case: str, net_kind: str, images, onehot, args) -> float:
    """The median ms of ``args.steps`` timed steps (after ``args.warmup``) for one case."""
    import torch

    torch.manual_seed(0)
    net, run = peer_nets.stbp(net_kind, "auto")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    shape = (args.steps_t, *images.shape)
    reused = (torch.rand(shape, generator=gen) < images).float()

    def encode():
        if case == "float32-reused":
            return reused
        spikes = torch.rand(shape, generator=gen) < images
        return {"float32": spikes.float(), "uint8": spikes.to(torch.uint8)}.get(case, spikes)

    def step(x):
        rate = run(x).float().mean(0)
        loss = 0.5 * ((onehot - rate) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step(encode())
    times = []
    for _ in range(args.steps):
        x = encode()
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
        del x
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every case")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--steps-t", "-T", type=int, default=30, help="time steps T")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", help="the MNIST folder (default: as stbp train finds it)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    for name in ("rounds", "steps", "steps_t", "batch", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")

    import torch

    from stbp.data.mnist import load_mnist
    from stbp.errors import StbpError

    try:
        train = load_mnist(args.data_dir)["train"]
    except StbpError as err:
        ap.error(str(err))
    if args.batch > len(train):
        ap.error(f"--batch must be at most {len(train)}")
    torch.set_num_threads(args.threads)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.batch]
    images = train.images[pick].float().div(255).unsqueeze(1)
    onehot = torch.nn.functional.one_hot(train.labels[pick].long(), 10).float()
    runs: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case in CASES:
            runs[case].append(_round(case, args.net, images, onehot, args))
    print(f"{args.net}, T = {args.steps_t}, batch {args.batch}, {args.threads} threads; "
          f"ms per step, the input made outside the timer")
    print("| input | median of rounds | rounds |\n|---|---|---|")
    for case, ms in runs.items():
        print(f"| {case} | {statistics.median(ms):.1f} | {' / '.join(f'{m:.1f}' for m in ms)} |")
    if args.json:
        from stbp.io import atomic_write

        atomic_write(args.json, json.dumps({
            "net": args.net, "T": args.steps_t, "batch": args.batch, "threads": args.threads,
            "ms_runs": runs, "ms": {case: statistics.median(ms) for case, ms in runs.items()}},
            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
