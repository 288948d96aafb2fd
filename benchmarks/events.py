"""The first layer of the MNIST and N-MNIST MLPs, dense matmul vs event-driven, side by side.

One fully connected layer (E1) over all T·B rows of byte spikes, forward and forward + backward
(the weight and bias gradients of E8), timed with the dense path (``synapse.linear(...,
events=False)``: chunked float conversion + matmul) and the event-driven path
(``stbp.functional.events``: the weight columns of the inputs that spiked are summed). Inputs:
Bernoulli spikes of real MNIST digits (784 inputs) and real N-MNIST frames (2 x 34 x 34) when
the data are found (``--data-dir``, else ``$STBP_DATA``), otherwise Bernoulli spikes at the same
densities (13 % and 4 %).

    python benchmarks/events.py --threads 2 --steps-t 30 100
    python benchmarks/events.py --threads 2 --densities 0.1 0.2 0.3 0.4 0.5   # where the sums
                                          # stop paying: random spikes at each density, the
                                          # event path forced (Tuning(max_density=1))
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from stbp import encoding
from stbp.functional import events as event_path
from stbp.functional import synapse
from stbp.kernels.runtime import Tuning


def _median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _time_layer(x, w, b, grad, events: bool, iters: int, force: bool = False) -> tuple[float, float]:
    """Median ms of the forward (no graph) and of forward + backward; ``force``: the event path
    whatever the density."""
    def layer():
        if force:
            return event_path.linear(x, w, b, tuning=Tuning(max_density=1.0))
        return synapse.linear(x, w, b, events=events)

    with torch.no_grad():
        fwd = _median_ms(layer, iters)

    def step():
        w.grad = b.grad = None
        layer().backward(grad)

    return fwd, _median_ms(step, iters)


def _mnist_spikes(data: Path | None, steps: int, batch: int) -> tuple[torch.Tensor, str]:
    gen = torch.Generator().manual_seed(0)
    if data is not None and (data / "mnist").is_dir():
        from stbp.data import load_mnist

        images = load_mnist(data / "mnist")["val"].images[:batch].float().div(255).flatten(1)
        src = "real MNIST digits"
    else:
        images = torch.rand(batch, 784, generator=gen) * 0.26
        src = "generated, MNIST's mean intensity"
    return encoding.bernoulli(images, steps, generator=gen, dtype=torch.uint8), src


def _nmnist_frames(data: Path | None, steps: int, batch: int) -> tuple[torch.Tensor, str]:
    folder = data / "nmnist-small" if data is not None else None
    if folder is not None and folder.is_dir() and steps == 30:
        from stbp.config import load_config
        from stbp.data.splits import load_splits

        splits, _ = load_splits(load_config("nmnist-mlp"), folder)
        x = splits["train"].inputs(torch.arange(batch), steps=steps)
        return x.flatten(2), "real N-MNIST frames"
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(steps, batch, 2312, generator=gen) < 0.04).to(torch.uint8)
    return x, "generated, 4 % density"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-t", type=int, nargs="+", default=[30])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=800)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--densities", type=float, nargs="+",
                    help="instead of digits and frames: independent random spikes at these "
                    "densities (784 inputs), the event path forced")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="folder holding mnist/ and nmnist-small/ (default: $STBP_DATA)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = args.data_dir or (Path(os.environ["STBP_DATA"]) if os.environ.get("STBP_DATA") else None)
    print(f"{args.threads} threads; batch {args.batch}; hidden {args.hidden}; "
          f"median of {args.iters} calls\n")
    print("| input | T | density | dense fwd ms | events fwd ms | dense fwd+bwd ms "
          "| events fwd+bwd ms | speed-up fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|")
    makers = [_mnist_spikes, _nmnist_frames]
    if args.densities:
        makers = [lambda _d, steps, batch, p=p: (  # noqa: E731
            (torch.rand(steps, batch, 784, generator=torch.Generator().manual_seed(0)) < p)
            .to(torch.uint8), f"random, {p:.0%}") for p in args.densities]
    for steps in args.steps_t:
        for make in makers:
            x, src = make(data, steps, args.batch)
            gen = torch.Generator().manual_seed(1)
            w = (torch.randn(args.hidden, x.shape[-1], generator=gen) * 0.05).requires_grad_()
            b = torch.zeros(args.hidden, requires_grad=True)
            grad = torch.randn(*x.shape[:-1], args.hidden, generator=gen)
            row = [_time_layer(x, w, b, grad, events, args.iters, force=events and bool(
                args.densities)) for events in (False, True)]
            (df, db), (ef, eb) = row
            print(f"| {src} | {steps} | {x.float().mean().item():.3f} | {df:.1f} | {ef:.1f} "
                  f"| {db:.1f} | {eb:.1f} | {db / eb:.2f}× |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
