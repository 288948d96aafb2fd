"""Kernels: the code that runs the paper's equations fast, one file per kernel family.

- :mod:`~stbp.kernels.runtime` — the numba guard, the thread policy, :class:`Tuning`.
- :mod:`~stbp.kernels.registry` — the neuron backends by name (``backend=``).
- :mod:`~stbp.kernels.lif_cpu` — the fused LIF forward/backward on the CPU (numba; makes bytes).
- :mod:`~stbp.kernels.lif_compiled` — the same through ``torch.compile`` (the GPU path).
- :mod:`~stbp.kernels.lif_torch` — the eager reference.
- :mod:`~stbp.kernels.curves` — the surrogate curves h(x) as numba functions.
- :mod:`~stbp.kernels.sparse_linear`, :mod:`~stbp.kernels.sparse_conv` — event-driven synapses
  over bytes; :mod:`~stbp.kernels.pooling` — pooling of bytes and the spread of its gradient;
  :mod:`~stbp.kernels.bernoulli` — the Bernoulli encoder; :mod:`~stbp.kernels.pack` — one-byte
  codes of spikes saved for a backward.

Kernels take tensors or arrays and numbers; they know nothing of the layers that call them.
"""

from stbp.kernels import lif_compiled, lif_cpu, lif_torch
from stbp.kernels.registry import NeuronBackend, choose, get, names, register, unregister
from stbp.kernels.runtime import HAVE_NUMBA, TUNING, Tuning, threads

__all__ = ["NeuronBackend", "register", "unregister", "get", "names", "choose", "Tuning", "TUNING", "threads",
           "HAVE_NUMBA"]

register(NeuronBackend("numba", devices=("cpu",), makes_bytes=True,
                       supported=lif_cpu.supported, forward=lif_cpu.run_forward,
                       backward=lif_cpu.run_backward))
register(NeuronBackend("compile", devices=("cuda",), makes_bytes=False,
                       supported=lif_compiled.supported, forward=lif_compiled.forward,
                       backward=lif_compiled.backward, fallback="torch"))
register(NeuronBackend("torch", devices=(), makes_bytes=False, supported=lif_torch.supported,
                       forward=lif_torch.forward, backward=lif_torch.backward))
