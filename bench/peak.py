"""The machine's practical matmul peak, against which the benchmarks measure FLOP rates."""

import time

import jax
import jax.numpy as jnp


def matmul_peak(dtype, n=4096, repeats=5) -> float:
    """Best FLOP/s of an n x n x n matmul: the machine's practical peak."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
