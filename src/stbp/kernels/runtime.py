"""The numba runtime every CPU kernel shares: the import guard, the thread policy, the tuning.

- :data:`HAVE_NUMBA` / :data:`nb`: numba is a dependency, but a platform without a wheel still
  runs (the eager PyTorch paths); a kernel module defines its kernels under ``if HAVE_NUMBA:``
  and its backend says so in ``supported()``.
- :func:`threads`: the policy for how many threads a kernel runs on — as many as PyTorch uses
  (``torch.set_num_threads``), capped by ``NUMBA_NUM_THREADS`` — as a context manager that puts
  numba's setting back afterwards.
- :func:`native_bf16`: whether this CPU computes bfloat16 natively (the paths stbp picks for
  speed under ``torch.autocast(dtype=torch.bfloat16)`` pay only there).
- :class:`Tuning`: every tuning value of the kernels in one frozen dataclass. Functions take a
  ``tuning`` argument (default :data:`TUNING`); tests pass their own instead of patching globals.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

try:  # numba is a dependency, but a platform without a wheel still gets the eager paths
    import numba as nb

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    nb = None
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "nb", "threads", "warn_once", "native_bf16", "cpu_flags", "Tuning", "TUNING"]


@contextlib.contextmanager
def threads() -> Iterator[int]:
    """Run numba kernels on PyTorch's thread count (capped by ``NUMBA_NUM_THREADS``) inside the
    block; numba's previous setting is restored after it. Yields the count."""
    if not HAVE_NUMBA:
        yield 1
        return
    n = max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS))
    before = nb.get_num_threads()
    if n != before:
        nb.set_num_threads(n)
    try:
        yield n
    finally:
        if n != before:
            nb.set_num_threads(before)


@functools.cache
def warn_once(message: str) -> None:
    """A ``RuntimeWarning`` shown once per process and message (a backend falling back)."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)


#: CPU flags (/proc/cpuinfo's "flags" on x86, "Features" on Arm) of native bfloat16 arithmetic
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU listed in ``path`` (empty where it cannot be read:
    not Linux)."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512-BF16 or AMX on x86, the BF16
    extension on Arm; read from ``/proc/cpuinfo``, so ``False`` where that is missing). Without
    it oneDNN emulates bfloat16: a matmul of the MLP's first layer took 186-200 ms against
    21 ms in float32 on an AVX2-only EPYC (2 threads; docs/performance.md)."""
    return bool(cpu_flags() & BF16_FLAGS)


@dataclass(frozen=True)
class Tuning:
    """Tuning values of the CPU kernels (measured on the benchmark machine, docs/performance.md).

    Attributes:
        max_density: above this fraction of nonzero inputs a synaptic layer uses the dense
            matmul/convolution (the event sums cost in proportion to the density; at MNIST's
            13 % they take ~20 % of the dense forward's time). With random spikes at 30 % the
            MLP step ran as fast event-driven as dense for byte input (63.6 vs 64.2 ms) and
            1.4x faster for float input (65.6 vs 93.6 ms; `peers.py --input dense`, 2 threads,
            docs/performance.md), hence 0.35.
        max_density_bf16: the same limit for a fully connected layer whose dense matmul runs
            in bfloat16 (under ``torch.autocast(dtype=torch.bfloat16)`` on the CPU, ``[train]
            precision = "bf16"``): spikes are exact in bfloat16 and oneDNN's bfloat16 matmul
            runs ~2.7x the float32 one on AVX-512-bf16 cores, so the dense path wins from a
            lower density: 22 % (MLP step with random spikes, 2 threads: events 39.4 vs dense
            bf16 39.2 ms at 22 %, 48.0 vs 43.8 at 30 %, 26.7 vs 37.3 at 13 %; docs/performance.md,
            "bf16"). Convolutions keep ``max_density``: the paper's first convolution (one input
            channel) ran 4x slower dense in bfloat16 than event-driven.
        min_fan_out_bf16: ``max_density_bf16`` applies to layers of at least this many
            outputs; a layer with fewer is bound by reading its input, not by arithmetic, and
            keeps ``max_density`` (the MLP's 800-10 readout: the bfloat16 path cost the
            conversions and saved nothing).
        max_grad_density: above this fraction of nonzero values in a convolution's error
            (∂L/∂ of its output: zero wherever the surrogate of the neurons it feeds is zero) its
            gradient on its input runs as the dense transposed convolution (in chunks of
            ``conv_chunk``) instead of summed over the nonzero values
            (:func:`stbp.kernels.sparse_conv.input_grad`). The CNN's second convolution, 2
            threads, a fresh network's error thinned or filled to the given fraction: 78 / 100 /
            123 / 142 ms summed at 10 / 25 / 30 / 34.5 %, against 125-127 ms dense in chunks
            (docs/performance.md), hence 0.3.
        max_grad_density_bf16: the same when the dense one runs in bfloat16 (under
            ``torch.autocast``; ~95 ms there at any density): 89 vs 96 ms at 25 %, hence 0.2.
        max_linear_grad_density: a fully connected layer's gradient on its input spikes made
            whole (ε W, for a pooling or a float consumer) skips the zeros of its error ε
            when at most this fraction of it is nonzero, and is one matmul above: the CNN's
            first FC layer (ε [3000, 300], W [300, 1960], 2 threads): 11 vs 30 ms at 8 % (the
            network after epoch 1: 9 %), 27 vs 30 ms at 26 %, 35 vs 30 ms at 35 %, hence 0.2.
        min_breakeven_density: a convolution's weight gradient runs over the nonzero values of
            its error where those, times the input channels, are fewer than the inputs' events
            times the output channels; where that would need the error to be sparser than
            this, its nonzero values are not counted (a pass over the error: the CNN's first
            convolution, whose inputs change at a few percent of the pixels per step, would
            need it below 0.3 %).
        changes_ratio: the sums run over the changes of each sample's spike trains along time
            when those number fewer than this fraction of the spikes.
        cache_bytes: the part of the error a weight-gradient chunk reads (under one core's L2).
        private_bytes: a weight gradient this small is summed in ``parts`` private copies.
        parts: the number of private copies (fixed, so sums do not depend on the thread count).
        min_chunk: the fewest rows of a weight-gradient chunk.
        neuron_chunk_bytes: the gradient on a layer's spikes handed back in factored form is
            made this many bytes (a few samples) at a time inside the neuron's backward.
        dense_chunk: values per chunk of a dense fully connected layer's input turned back
            into floats (its forward over byte spikes, its weight gradient): 1 MiB of float32.
        dense_min_rows: the fewest rows of such a chunk (a matmul over fewer runs far below
            peak).
        conv_chunk: input values per chunk of images of a dense convolution's backward (and
            of the dense transposed convolution that makes an event convolution's gradient on
            its input): oneDNN's float32 backward runs far faster on chunks of about 1 MiB
            than on the whole batch (2 threads, T·B = 3000: the CNN's second convolution's
            gradient on its input 97-106 against 141-162 ms, both gradients 196-234 against
            282-300 ms; the first convolution's weight gradient 15-18 against 55-57 ms;
            bfloat16 the same within noise at any size; the forward: the first convolution
            28 against 118 ms, the second 98 against 160 ms), hence 2**18. On the CPU.
        gpu_conv_chunk: the same on a GPU, where chunks only bound the memory of decoded
            inputs (its kernels run best on whole batches).
        native_bf16: whether the CPU computes bfloat16 natively; ``None`` (the default): ask
            :func:`native_bf16`. Where it does not, the bfloat16 limits above do not apply:
            the event sums run at any density (faster than an emulated bfloat16 matmul at
            any: 42 against 189 ms at 60 %) and a convolution's dense gradient on its input
            runs in float32 (exact, and faster there).

    Kernel-internal block sizes that numba compiles in (``lif_cpu.BLOCK``,
    ``sparse_linear.ROWS``) are constants of their kernels, not tuning values.
    """

    max_density: float = 0.35
    max_density_bf16: float = 0.22
    min_fan_out_bf16: int = 64
    max_grad_density: float = 0.3
    max_grad_density_bf16: float = 0.2
    max_linear_grad_density: float = 0.2
    min_breakeven_density: float = 0.01
    changes_ratio: float = 0.75
    cache_bytes: int = 768 << 10
    private_bytes: int = 256 << 10
    parts: int = 8
    min_chunk: int = 16
    neuron_chunk_bytes: int = 1 << 22
    dense_chunk: int = 1 << 18
    dense_min_rows: int = 1024
    conv_chunk: int = 1 << 18
    gpu_conv_chunk: int = 1 << 22
    native_bf16: bool | None = None

    def bf16_is_native(self) -> bool:
        """``native_bf16``, or where that is ``None``, :func:`native_bf16` of this CPU."""
        return native_bf16() if self.native_bf16 is None else self.native_bf16

    def dense_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype stbp runs a dense CPU kernel in that it may choose itself (a convolution's
        gradient on its input) when the layer computes in ``dtype``: bfloat16 only where the CPU
        has it natively, float32 instead of an emulated one."""
        return torch.float32 if dtype == torch.bfloat16 and not self.bf16_is_native() else dtype

    def density_limit(self, dtype: torch.dtype, fan_out: int | None = None) -> float:
        """The fraction of nonzero inputs above which a layer whose dense matmul/convolution
        runs in ``dtype`` takes it instead of the event sums: a fully connected layer of
        ``fan_out`` outputs, or a convolution (``None``). In bfloat16 without native support,
        never (1.0)."""
        if dtype != torch.bfloat16:
            return self.max_density
        if not self.bf16_is_native():
            return 1.0
        if fan_out is not None and fan_out >= self.min_fan_out_bf16:
            return self.max_density_bf16
        return self.max_density

    def images_per_chunk(self, shape: torch.Size | tuple[int, ...], device: torch.device) -> int:
        """Images of ``shape`` ``[N, C, H, W]`` per chunk of a dense convolution's forward or
        backward: ``conv_chunk`` input values on the CPU, ``gpu_conv_chunk`` elsewhere."""
        values = self.conv_chunk if device.type == "cpu" else self.gpu_conv_chunk
        return max(1, values // max(1, int(torch.Size(shape[1:]).numel())))

    def grad_density_limit(self, dtype: torch.dtype) -> float:
        """The fraction of nonzero values in a convolution's error above which its gradient
        on its input runs as the dense transposed convolution in ``dense_dtype(dtype)``."""
        return (self.max_grad_density_bf16 if self.dense_dtype(dtype) == torch.bfloat16
                else self.max_grad_density)


#: the values the library runs with
TUNING = Tuning()
