"""Outputs and gradients of stbp's MLP and CNN against another checkout of stbp (a baseline).

One training step's forward and backward of the paper's MLP 784-800-10 and CNN on real MNIST
validation digits (Bernoulli-coded, seeded), run once with the stbp being developed and once
with stbp imported from ``--baseline`` (an older checkout's ``src/``), each in its own process.
Prints, per network, whether the output spikes are identical, whether each parameter's gradient
is bit-identical, and the largest relative difference — what a refactor of the engine must keep
(bit-identical where the order of sums is unchanged, else float rounding).

    python benchmarks/same_results.py --baseline ../old/src
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile


def dump(path: str, data_dir: str | None) -> None:
    import torch

    from stbp import encoding, loss, models
    from stbp.data.mnist import load_mnist

    val = load_mnist(data_dir)["val"]
    res = {}
    for kind in ("mlp", "cnn"):
        n = 64 if kind == "mlp" else 16
        images = val.images[:n].float().div(255).unsqueeze(1)
        x = encoding.bernoulli(images, 30, generator=torch.Generator().manual_seed(0),
                               dtype=torch.uint8)
        net = (models.mlp([784, 800, 10], seed=0, decay=0.1, threshold=0.5) if kind == "mlp"
               else models.cnn(seed=0, decay=0.2, threshold=0.3))
        out = net(x)
        loss.rate_mse(out, val.labels[:n]).backward()
        res[kind] = {"out": out.detach(), "grads": [p.grad for p in net.parameters()]}
    torch.save(res, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, metavar="SRC",
                    help="the source folder holding the baseline's stbp package")
    ap.add_argument("--data-dir", help="the MNIST folder (default: as stbp train finds it)")
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dump:
        dump(args.dump, args.data_dir)
        return 0
    if not os.path.isfile(os.path.join(args.baseline, "stbp", "__init__.py")):
        ap.error(f"--baseline {args.baseline}: not a source folder holding the stbp package")
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, path in (("current", None), ("baseline", os.path.abspath(args.baseline))):
            out = os.path.join(tmp, f"{name}.pt")
            env = {**os.environ, **({"PYTHONPATH": path} if path else {})}
            cmd = [sys.executable, __file__, "--baseline", args.baseline, "--dump", out]
            if args.data_dir:
                cmd += ["--data-dir", args.data_dir]
            subprocess.run(cmd, check=True, env=env)
            runs[name] = torch.load(out)
    for kind in runs["current"]:
        a, b = runs["current"][kind], runs["baseline"][kind]
        same = [torch.equal(x, y) for x, y in zip(a["grads"], b["grads"], strict=True)]
        rel = [float((x - y).abs().max() / x.abs().max().clamp_min(1e-30))
               for x, y in zip(a["grads"], b["grads"], strict=True)]
        print(f"{kind}: output spikes identical: {torch.equal(a['out'], b['out'])} "
              f"({int(a['out'].sum())} spikes); gradients bit-identical: "
              f"{sum(same)}/{len(same)}; largest relative difference: {max(rel):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
