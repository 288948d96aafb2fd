"""How sparse a convolution's error is while the paper's CNN trains: the fraction of nonzero
values of ∂L/∂(output current) of its second convolution (the one whose gradient on its input
is needed: the first one's input is the data), step by step, from a fresh network.

stbp sums a convolution's gradient on its input over those values where they are fewer than
``Tuning.max_grad_density`` (:func:`stbp.kernels.sparse_conv.input_grad`); the error of a layer
of neurons is zero wherever their surrogate is, and that is most of them once the network has
learnt a little. Real MNIST training digits (``$STBP_DATA``, ``--data-dir`` or the cache),
Bernoulli-coded, T = 30, batch 100, Adam at 1e-3, MSE on rate (the ``mnist-cnn`` preset's
network and optimizer, no schedule or shift).

    python benchmarks/error_density.py --steps 400 --every 20 --json density.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="training steps (batches of 100)")
    ap.add_argument("--every", type=int, default=20, help="print every this many steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="the MNIST folder (default: as stbp train finds it)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        ap.error("--steps and --every must be >= 1")

    import torch

    from stbp import encoding, models
    from stbp.data.mnist import load_mnist
    from stbp.errors import StbpError
    from stbp.kernels import density
    from stbp.loss import rate_mse

    try:
        train = load_mnist(args.data_dir)["train"]
    except StbpError as err:
        ap.error(str(err))
    torch.set_num_threads(args.threads)
    seen: list[float] = []
    count = density.nonzero_fraction

    def spy(g):  # the density the convolution's backward measures itself ([N, C, H, W]), recorded
        value = count(g)
        if g.dim() == 4:
            seen.append(value)
        return value

    density.nonzero_fraction = spy  # put back below: a library module's function
    try:
        net = models.cnn(seed=args.seed, decay=0.1, threshold=0.5)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(args.seed)
        order = torch.randperm(len(train), generator=gen)
        rows, start = [], time.perf_counter()
        print("| step | loss | batch accuracy % | error density (conv2) |\n|---|---|---|---|")
        for step in range(args.steps):
            pick = order[(step * 100) % len(train):][:100]
            images = train.images[pick].float().div(255).unsqueeze(1)
            x = encoding.bernoulli(images, 30, generator=gen, dtype=torch.uint8)
            out = net(x)
            loss = rate_mse(out, train.labels[pick])
            seen.clear()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % args.every == 0 or step == args.steps - 1:
                acc = 100.0 * (out.detach().mean(0).argmax(1) == train.labels[pick]).float().mean().item()
                # none seen: the second convolution ran dense (its input spikes too dense)
                conv2 = seen[0] if seen else None
                row = {"step": step, "loss": loss.item(), "accuracy": acc, "conv2": conv2,
                       "seconds": time.perf_counter() - start}
                rows.append(row)
                shown = "dense input" if conv2 is None else f"{conv2:.3f}"
                print(f"| {step} | {row['loss']:.4f} | {acc:.0f} | {shown} |", flush=True)
    finally:
        density.nonzero_fraction = count
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": sys.argv, "threads": args.threads, "seed": args.seed,
                       "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
