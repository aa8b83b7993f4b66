"""What the benchmarks measure against: the matmul peak and the FLOPs of a program."""

import time

import jax


def matmul_peak(dtype, n=None, repeats=5) -> float:
    """Best FLOP/s of an n x n x n matmul of random data: the machine's practical peak.

    n defaults to 8192 on accelerators (smaller products leave a GPU's units idle)
    and 4096 on CPU (a second per product).
    """
    n = n or (4096 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops(lowered) -> float:
    """FLOPs of a lowered program, from XLA's analysis of its HLO before compilation.

    The compiled program's analysis is backend-specific: on GPU it leaves out the
    convolutions that run as cuDNN calls, which is nearly all of an FCN. PJRT plugins
    (CUDA) do not analyse uncompiled HLO, so there the CPU client analyses the same HLO.
    """
    try:
        return float(lowered.cost_analysis()["flops"])
    except NotImplementedError:
        return _flops_on_cpu(lowered)


def _flops_on_cpu(lowered) -> float:
    from jax._src import xla_bridge  # What Lowered.cost_analysis does, on the CPU client.
    from jax._src.lib import _jax

    module = lowered._lowering.hlo().as_hlo_module()
    return float(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)["flops"])
