"""One STBP training step, stbp against snnTorch, SpikingJelly and Norse, side by side.

A step = Bernoulli encoding of a batch, forward over T steps, backward, Adam update, for the
paper's MNIST MLP 784-800-10 (and, with ``--cnn``, the paper's CNN) with the MSE-on-rate loss.
The batch is real MNIST training digits (``--input noise``: uniform noise of MNIST's mean
intensity, which needs no data); every case gets the same spikes' statistics.
Each case runs in its own subprocesses (one timed, one for memory) so that its peak memory is
its own; the table gives the median ms/step, samples/s, the peak memory a step adds on top of
the model and data, the ratio
to the matmul-only floor (the same network's linear layers alone, fp32) and the speed-up of
each stbp case over the fastest peer.

Peers come from PyPI through the optional extra: ``pip install -e ".[bench]"``; a peer that is
not installed is reported as such and skipped.

    python benchmarks/peers.py                     # MLP, T = 30, batch 100, all CPU threads
    python benchmarks/peers.py --steps-t 30 100    # the MLP at several T (cost linear in T?)
    python benchmarks/peers.py --cnn               # also the CNN
    python benchmarks/peers.py --device cuda       # on a GPU: stbp's torch.compile path ("stbp"),
                                                   # its eager path and the peers, GPU memory
    python benchmarks/peers.py --baseline ../old/src   # also stbp from another checkout's src
                                                   # ("stbp@baseline"), side by side: regressions
    python benchmarks/peers.py --cnn --cnn-weights RUN/last.pt   # every case's CNN starts
                                                   # from these weights (a stbp train checkpoint)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import peer_nets  # benchmarks/peer_nets.py: the networks as each library builds them

MLP_CASES = ["floor", "stbp", "stbp-float32", "stbp-bool", "stbp-bf16", "stbp-bf16-bool", "stbp-eager",
             "snntorch", "spikingjelly", "norse"]
CNN_CASES = ["stbp", "stbp-float32", "stbp-bf16", "stbp-eager", "snntorch", "spikingjelly"]
#: how each stbp case is given its input spikes: "stbp" as stbp's trainer does (its encoder,
#: uint8); "stbp-float32"/"stbp-bool" (and "stbp-bf16-bool", under bf16 autocast) as a PyTorch
#: user writes them, torch.rand(...) < p
USER_INPUT = {"stbp-float32": "float32", "stbp-bool": "bool", "stbp-bf16-bool": "bool"}
PEERS = ("snntorch", "spikingjelly", "norse")
BASELINE = "stbp@baseline"  # stbp imported from --baseline's source folder


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so that the peak of the training steps
    is not hidden by an earlier one (library loading, kernel compilation)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
        return kb / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- networks
def _images(batch: int, data_dir: str | None, device: str, gen, kind: str = "mnist"):
    """A batch of the MNIST training digits (intensities in [0, 1], a fixed random draw), or,
    with no ``data_dir``, uniform noise of MNIST's mean intensity, or (``kind`` "dense") every
    input at 0.3: dense random spikes, 30 % of the inputs at each step; and its labels."""
    import torch

    if kind == "dense":
        images = torch.full((batch, 1, 28, 28), 0.3, device=device)
        return images, torch.randint(0, 10, (batch,), generator=gen, device=device)
    if data_dir is None:
        images = torch.rand(batch, 1, 28, 28, generator=gen, device=device) * 0.26
        return images, torch.randint(0, 10, (batch,), generator=gen, device=device)
    from stbp.data.mnist import load_mnist

    train = load_mnist(data_dir)["train"]
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:batch]
    images = train.images[pick].float().div(255).unsqueeze(1)
    return images.to(device), train.labels[pick].to(device)


def worker(case: str, kind: str, steps_t: int, batch: int, iters: int, warmup: int,
           threads: int, device: str = "cpu", data_dir: str | None = None,
           malloc: str = "default", input_kind: str = "mnist", weights: str | None = None) -> dict:
    if malloc == "heap":  # the same allocator settings for every case (stbp train's)
        from stbp.malloc import retain_freed_memory

        retain_freed_memory()
    import torch

    torch.set_num_threads(threads)
    cuda = device != "cpu"
    torch.manual_seed(0)
    if case == "floor":
        net, run = peer_nets.floor(kind)
    elif case.startswith("stbp"):
        net, run = peer_nets.stbp(kind, "torch" if case == "stbp-eager" else "auto")
    elif case == "snntorch":
        net, run = peer_nets.snntorch(kind)
    elif case == "spikingjelly":
        net, run = peer_nets.spikingjelly(kind)
    else:
        net, run = peer_nets.norse(kind)
    bf16 = case.startswith("stbp-bf16")
    epoch = peer_nets.load_weights(net, weights, f"--{kind}-weights") if weights else None
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator(device).manual_seed(0)
    images, labels = _images(batch, data_dir, device, gen, input_kind)
    onehot = torch.nn.functional.one_hot(labels, 10).float()

    # Bernoulli spikes of the same intensities: "stbp" encodes with stbp's encoder, as bytes
    # (what its trainer does); "stbp-float32"/"stbp-bool" and the peers with torch.rand(...) < p
    # (as float32 for the peers: the fastest of their idioms; snnTorch's spikegen.rate calls
    # torch.bernoulli, slower)
    if case in USER_INPUT:
        def encode(n: int):
            spikes = (torch.rand((steps_t, n, *images.shape[1:]), generator=gen, device=device)
                      < images[:n])
            return spikes.float() if USER_INPUT[case] == "float32" else spikes
    elif case.startswith("stbp"):
        from stbp import encoding

        def encode(n: int):
            return encoding.bernoulli(images[:n], steps_t, generator=gen, dtype=torch.uint8)
    else:
        def encode(n: int):
            return (torch.rand((steps_t, n, *images.shape[1:]), generator=gen, device=device)
                    < images[:n]).float()

    def step(n: int = batch):
        x = encode(n)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out = run(x)
        rate = out.float().mean(0)
        loss = 0.5 * ((onehot[:n] - rate) ** 2).sum(1).mean()  # E5
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(1)  # load libraries and compile kernels before the baseline is taken
    if cuda:
        step()  # a full batch too (torch.compile specialises on the shape); the GPU's peak
        torch.cuda.synchronize()  # counts allocated tensors, so the warm pool does not hide it
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mb()
        _reset_peak()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_mb()
    encode_times = []  # the input encoding alone (part of every step above), for the share
    for _ in range(iters):  # of a step that is the network's
        t0 = time.perf_counter()
        encode(batch)
        if cuda:
            torch.cuda.synchronize()
        encode_times.append(time.perf_counter() - t0)
    encode_ms = 1000 * statistics.median(encode_times)
    return {"case": case, "kind": kind, "T": steps_t, "batch": batch, "ms": ms, "encode_ms": encode_ms,
            "samples_s": batch / ms * 1000, "peak_mb": max(0.0, peak - base),
            "threads": threads, "device": device, "weights_epoch": epoch}


# ----------------------------------------------------------------------------- driver
def _available(case: str) -> bool:
    if case not in PEERS:
        return True  # stbp's own cases (and stbp@baseline)
    import importlib.util

    return importlib.util.find_spec(case) is not None


def _worker(case, kind, steps_t, args, iters: int, warmup: int, env: dict) -> dict | None:
    if case == BASELINE:  # the stbp case, with stbp imported from the baseline's source
        env = {**env, "PYTHONPATH": os.path.abspath(args.baseline)}
    cmd = [sys.executable, __file__, "--worker", "stbp" if case == BASELINE else case, "--kind",
           kind, "--steps-t", str(steps_t), "--input", args.input,
           "--batch", str(args.batch), "--iters", str(iters), "--warmup", str(warmup),
           "--threads", str(args.threads), "--device", args.device]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    weights = args.cnn_weights if kind == "cnn" else args.mlp_weights
    if weights:
        cmd += ["--weights", weights]
    if env.get("MALLOC_MMAP_THRESHOLD_") is None:  # timed runs only; memory runs count tensors
        cmd += ["--malloc", args.malloc]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if res.returncode != 0:
        print(f"  {case}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "case": case}


def _run_case(case, kind, steps_t, args, memory: bool = True) -> dict | None:
    """Time in one process, measure memory in another.

    Time: glibc's default allocator settings, as a user runs. Memory: a fixed mmap threshold
    makes glibc return every freed buffer above 64 KiB to the system at once, so the peak
    resident memory counts the tensors alive at the same time, the same way for every case
    (with the default, adaptive threshold it swung by +-40 % between runs) — but it also makes
    every large allocation fault its pages in afresh, which slows the cases that allocate
    most by up to 3x, so it is not used for the times.
    """
    timed = _worker(case, kind, steps_t, args, args.iters, args.warmup, {})
    if timed is None or args.device != "cpu" or not memory:
        return timed
    mem = _worker(case, kind, steps_t, args, 2, 1, {"MALLOC_MMAP_THRESHOLD_": "65536"})
    if mem is None:
        return None
    return {**timed, "peak_mb": mem["peak_mb"]}


def _table(rows: list[dict]) -> str:
    floor = next((r["ms"] for r in rows if r["case"] == "floor"), None)
    peers = [r for r in rows if r["case"] in PEERS]
    fastest = min(peers, key=lambda r: r["ms"]) if peers else None
    least_mem = min(peers, key=lambda r: r["peak_mb"]) if peers else None
    base = next((r for r in rows if r["case"] == BASELINE), None)
    head = ("| case | ms/step | samples/s | peak MB | × floor | speed-up vs fastest peer "
            "| memory vs leanest peer | of which encoding, ms | network alone: speed-up vs that peer |"
            + (" speed-up vs baseline | memory vs baseline |" if base else ""))
    lines = [head, "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if base else "")]
    for r in rows:
        x_floor = f"{r['ms'] / floor:.2f}" if floor else "—"
        speed = f"{fastest['ms'] / r['ms']:.2f}× ({fastest['case']})" if fastest else "—"
        mem = (f"{r['peak_mb'] / least_mem['peak_mb']:.2f}× ({least_mem['case']})"
               if least_mem and least_mem["peak_mb"] > 0 else "—")
        enc = r.get("encode_ms")
        net = (f"{(fastest['ms'] - fastest['encode_ms']) / (r['ms'] - enc):.2f}×"
               if fastest and enc is not None and fastest.get("encode_ms") is not None
               and r["ms"] > enc else "—")
        line = (f"| {r['case']} | {r['ms']:.1f} | {r['samples_s']:.0f} | {r['peak_mb']:.0f} "
                f"| {x_floor} | {speed} | {mem} | {'—' if enc is None else f'{enc:.1f}'} | {net} |")
        if base:
            line += (f" {base['ms'] / r['ms']:.2f}× | {r['peak_mb'] / max(base['peak_mb'], 1e-9):.2f}× |"
                     if r["case"].startswith("stbp") else " — | — |")
        lines.append(line)
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            have = set(next(line for line in fh if line.startswith("flags")).split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
        flags = f" ({flags or 'no AVX'}{'' if 'amx_bf16' in have else ', no AMX'})"
    except (OSError, StopIteration):
        pass
    import importlib.metadata as md

    import torch

    versions = []
    for name in ("numba", *PEERS):
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}{flags}, {os.cpu_count()} CPUs, {mem:.0f} GiB; Python "
            f"{platform.python_version()}, torch {torch.__version__}, {', '.join(versions)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-t", type=int, nargs="+", default=[30], help="time steps T")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--iters", type=int, default=20, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every case this many times, interleaved; report the median")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--cnn", action="store_true", help="also benchmark the paper's CNN")
    ap.add_argument("--cnn-only", action="store_true", help="benchmark the paper's CNN alone")
    ap.add_argument("--cases", help="comma-separated subset of " + ",".join(MLP_CASES))
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda: stbp's default path there is torch.compile (Triton)")
    ap.add_argument("--input", choices=("mnist", "noise", "dense"), default="mnist",
                    help="mnist: a batch of real training digits (default); noise: uniform noise "
                    "of MNIST's mean intensity (no data needed); dense: random spikes at 30 %% of "
                    "the inputs (no data needed)")
    ap.add_argument("--data-dir", help="the MNIST folder (default: $STBP_DATA/mnist, the cache, "
                    "or a download, as stbp train finds it)")
    ap.add_argument("--malloc", choices=("default", "heap"), default="default",
                    help="glibc settings of every case's timed process: default, or heap (large "
                    "blocks kept in the heap, as stbp train runs: stbp.malloc)")
    ap.add_argument("--baseline", metavar="SRC",
                    help="also run the stbp case with stbp imported from this source folder (e.g. "
                    "an older checkout's src/), side by side, as the case stbp@baseline")
    for kind in ("mlp", "cnn"):
        ap.add_argument(f"--{kind}-weights", metavar="CKPT",
                        help=f"start every case's {kind.upper()} from the weights of this stbp train "
                        "checkpoint of the same network (e.g. a run's last.pt after one epoch: the "
                        "errors of a network in training are sparser than a fresh one's, and stbp's "
                        "convolutions sum over them) instead of a fresh initialisation")
    ap.add_argument("--weights", help=argparse.SUPPRESS)  # a worker's, for its network
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="mlp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.kind, args.steps_t[0], args.batch, args.iters,
                                args.warmup, args.threads, args.device, args.data_dir,
                                args.malloc, args.input, args.weights)))
        return 0
    if args.input == "mnist":  # find (or fetch) MNIST once; the workers read that folder
        from stbp.data.mnist import locate_mnist
        from stbp.errors import StbpError

        try:
            args.data_dir = str(locate_mnist(args.data_dir))
        except StbpError as err:
            ap.error(f"{err} (or use --input noise)")
    else:
        args.data_dir = None
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            ap.error(f"--device {args.device}: torch finds no CUDA GPU")
        print(f"device: {torch.cuda.get_device_name()}; peak MB = GPU memory a step allocates")
    if args.baseline and not os.path.isfile(os.path.join(args.baseline, "stbp", "__init__.py")):
        ap.error(f"--baseline {args.baseline}: not a source folder holding the stbp package")
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    epochs = {}  # a checkpoint that is not of that network: one error here, not one per case
    for kind in ("mlp", "cnn"):
        path = getattr(args, f"{kind}_weights")
        if path:
            from stbp.errors import StbpError

            try:
                epochs[kind] = peer_nets.load_weights(peer_nets.stbp(kind, "auto")[0], path,
                                                      f"--{kind}-weights")
            except StbpError as err:
                ap.error(f"--{kind}-weights: {err}")
            except SystemExit as err:  # of another network: load_weights names the flag
                ap.error(str(err))
    print(f"machine: {machine()}; {args.threads} threads; batch {args.batch}; "
          f"median of {args.iters} steps after {args.warmup} warm-up; input: "
          + {"mnist": "MNIST training digits", "noise": "uniform noise of MNIST's mean",
             "dense": "random spikes, 30 % of the inputs"}[args.input]
          + f"; malloc: {args.malloc}"
          + "".join(f"; {k.upper()} weights: {getattr(args, f'{k}_weights')} (epoch {e})"
                    for k, e in epochs.items())
          + (f"; median of {args.repeat} interleaved runs per case" if args.repeat > 1 else ""))
    wanted = set(args.cases.split(",")) if args.cases else None
    all_rows = []
    plans = ([] if args.cnn_only else [("mlp", MLP_CASES)]) + (
        [("cnn", CNN_CASES)] if args.cnn or args.cnn_only else [])
    for kind, cases in plans:
        for steps_t in args.steps_t if kind == "mlp" else args.steps_t[:1]:
            chosen = [c for c in cases if not wanted or c in wanted]
            if args.baseline and "stbp" in chosen:
                chosen.insert(chosen.index("stbp") + 1, BASELINE)
            for case in [c for c in chosen if not _available(c)]:
                print(f"  {case}: not installed (pip install -e '.[bench]'); skipped")
            chosen = [c for c in chosen if _available(c)]
            # --repeat R: every case R times, interleaved (the cases' order rotates each round),
            # so that a slow spell of a shared machine falls on all cases alike; the median
            # of the R medians is reported (memory is measured once: it repeats exactly)
            runs: dict[str, list[dict]] = {c: [] for c in chosen}
            for rep in range(args.repeat):
                k = rep % max(1, len(chosen))
                for case in chosen[k:] + chosen[:k]:
                    row = _run_case(case, kind, steps_t, args, memory=rep == 0)
                    if row:
                        runs[case].append(row)
            rows = []
            for case in chosen:
                if not runs[case]:
                    continue
                row = dict(runs[case][0])
                row["ms"] = statistics.median(r["ms"] for r in runs[case])
                row["samples_s"] = row["batch"] / row["ms"] * 1000
                row["ms_runs"] = [round(r["ms"], 1) for r in runs[case]]
                encodes = [r.get("encode_ms") for r in runs[case]]  # a --baseline may not say
                row["encode_ms"] = None if None in encodes else statistics.median(encodes)
                rows.append(row)
            print(f"\n### {kind.upper()}, T = {steps_t}\n")
            print(_table(rows))
            all_rows += rows
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "input": args.input, "malloc": args.malloc,
                       "mlp_weights": args.mlp_weights, "cnn_weights": args.cnn_weights,
                       "rows": all_rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
