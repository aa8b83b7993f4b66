"""Pixel-wise softmax cross-entropy with void pixels ignored."""

import jax.numpy as jnp
import optax

REDUCTIONS = ("mean", "sum", "mean_all_pixels")


def cross_entropy(logits, labels, *, ignore_index=255, reduction="mean"):
    """Softmax cross-entropy over the valid pixels, computed in float32.

    Logits are cast to float32 first so bfloat16 activations do not lose precision in the
    log-softmax. "mean" divides by the valid pixels of the whole array given; under jax.jit with a
    batch sharded across devices that is the global-batch mean, not an average of per-device
    means. "sum" is the unnormalised loss of Caffe's `normalize: false` used by the original FCN.
    "mean_all_pixels" divides by every pixel, void ones included: mmsegmentation's
    CrossEntropyLoss (avg_non_ignore=False, its default), whose gradients are smaller by the
    fraction of valid pixels.

    Args:
        logits: float[..., C] class scores.
        labels: Integer labels [...]; `ignore_index` marks void pixels, which contribute no loss
            and no gradient. Other labels must lie in [0, C).
        ignore_index: Label of void pixels.
        reduction: "mean", "sum" or "mean_all_pixels".

    Returns:
        (loss, num_valid): float32 scalars; loss is 0 when no pixel is valid.

    Raises:
        ValueError: If `reduction` is not one of REDUCTIONS.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    logits = jnp.asarray(logits)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))  # float64 stays.
    labels = jnp.asarray(labels)
    valid = labels != ignore_index
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
    # where, not multiply: a non-finite loss at a void pixel must not leak in as NaN.
    total = jnp.where(valid, per_pixel, 0.0).sum()
    # Count in int32 (exact) before casting: a float32 running sum stops at 2**24.
    num_valid = valid.sum(dtype=jnp.int32).astype(jnp.float32)
    if reduction == "mean":
        total = total / jnp.maximum(num_valid, 1.0)
    elif reduction == "mean_all_pixels":
        total = total / max(valid.size, 1)
    return total, num_valid
