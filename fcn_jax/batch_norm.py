"""The BatchNorm of every fcn_jax network, as torch's BatchNorm2d and MindSpore's BatchNorm2d.

Training normalises by the statistics of the batch (under ``jax.jit`` with the batch split
over devices, of the global batch: XLA reduces across devices) and updates the running
ones; evaluation normalises by the running ones. What torch and MindSpore do, and Flax's
``nn.BatchNorm`` does not:

  * The batch variance in two passes, ``mean((x - mean(x))**2)`` in float32: Flax's
    default ``E[x^2] - E[x]^2`` cancels on activations whose mean is large next to their
    spread (VGG's deep layers, ResNet's), and the cancellation differs with the reduction
    order: 1 and 8 devices then train apart, with Adam by 6e-5 of a kernel in 6 steps.
  * The running variance moves towards the unbiased batch variance (n / (n - 1) of the
    one it normalises by, n the values per channel): ``running = 0.9 * running + 0.1 *
    batch`` for the mean and the variance (torch's momentum 0.1, MindSpore's 0.9).

Variables keep Flax's names: parameters ``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

MOMENTUM = 0.9  # running = MOMENTUM * running + (1 - MOMENTUM) * batch.
EPSILON = 1e-5


class BatchNorm(nn.Module):
    """Normalises the last axis of ``x``; its output has ``dtype``, statistics are float32
    (float64 for float64 inputs)."""

    use_running_average: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = wide.mean(axes)
            var = jnp.square(wide - mean).mean(axes)
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                running_mean.value = MOMENTUM * running_mean.value + (1 - MOMENTUM) * mean
                running_var.value = MOMENTUM * running_var.value + (1 - MOMENTUM) * unbiased
        # Flax's order of operations: (x - mean) * (rsqrt(var + eps) * scale) + bias.
        y = (x - mean) * (jax.lax.rsqrt(var + EPSILON) * scale) + bias
        return y.astype(self.dtype)
