"""Tests for fcn_jax.losses.cross_entropy: void pixels, reductions, sharded mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from fcn_jax.losses import cross_entropy

VOID = 255
C = 5


def _batch(seed, shape=(2, 4, 3), void_frac=0.3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape + (C,)).astype(np.float32) * 3
    labels = rng.integers(0, C, size=shape).astype(np.uint8)
    labels[rng.random(shape) < void_frac] = VOID
    assert (labels != VOID).any() and ((labels == VOID).any() or not void_frac)
    return logits, labels


def _numpy_loss_sum(logits, labels):
    x = logits.astype(np.float64)
    log_softmax = x - x.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    valid = labels != VOID
    picked = np.take_along_axis(log_softmax, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -(picked * valid).sum(), valid.sum()


def test_matches_numpy_log_softmax_reference():
    logits, labels = _batch(0)
    want_sum, want_n = _numpy_loss_sum(logits, labels)
    loss_sum, n = cross_entropy(logits, labels, reduction="sum")
    loss_mean, n_mean = cross_entropy(logits, labels)
    assert n.dtype == jnp.float32 and float(n) == want_n == float(n_mean)
    assert loss_sum.dtype == jnp.float32 and loss_mean.dtype == jnp.float32
    np.testing.assert_allclose(float(loss_sum), want_sum, rtol=1e-5)
    np.testing.assert_allclose(float(loss_mean), want_sum / want_n, rtol=1e-5)


def test_mean_is_sum_over_num_valid():
    logits, labels = _batch(1)
    loss_sum, n = cross_entropy(logits, labels, reduction="sum")
    loss_mean, _ = cross_entropy(logits, labels, reduction="mean")
    assert float(n) < labels.size  # void pixels are not counted
    np.testing.assert_allclose(float(loss_mean), float(loss_sum) / float(n), rtol=1e-6)


def test_logits_at_ignored_pixels_do_not_change_loss():
    logits, labels = _batch(2)
    changed = logits.copy()
    changed[labels == VOID] = np.random.default_rng(9).normal(size=(C,)) * 100
    changed[tuple(np.argwhere(labels == VOID)[0]) + (0,)] = np.inf  # even non-finite ones
    for reduction in ("mean", "sum"):
        base, n = cross_entropy(logits, labels, reduction=reduction)
        new, n_new = cross_entropy(changed, labels, reduction=reduction)
        assert np.isfinite(float(new))
        assert float(new) == pytest.approx(float(base), rel=1e-6)
        assert float(n_new) == float(n)
    # Changing logits at a valid pixel does change it, so the check above can fail.
    valid_changed = logits.copy()
    valid_changed[labels != VOID] += np.eye(C, dtype=np.float32)[0] * 10
    assert float(cross_entropy(valid_changed, labels)[0]) != pytest.approx(float(base))


def test_all_ignored_gives_zero_without_nan():
    logits, _ = _batch(3)
    labels = np.full(logits.shape[:-1], VOID, np.uint8)
    for reduction in ("mean", "sum"):
        loss, n = cross_entropy(logits, labels, reduction=reduction)
        assert float(loss) == 0.0 and float(n) == 0.0
    grad = jax.grad(lambda x: cross_entropy(x, labels)[0])(logits)
    assert np.all(np.asarray(grad) == 0.0)


def test_gradient_is_zero_at_ignored_pixels_only():
    logits, labels = _batch(4)
    grad = np.asarray(jax.grad(lambda x: cross_entropy(x, labels)[0])(logits))
    assert np.all(grad[labels == VOID] == 0.0)
    assert np.all(np.abs(grad[labels != VOID]).sum(-1) > 0)


def test_bfloat16_logits_computed_in_float32():
    logits, labels = _batch(5)
    low = jnp.asarray(logits, jnp.bfloat16)
    loss, _ = cross_entropy(low, labels)
    assert loss.dtype == jnp.float32
    want, _ = cross_entropy(np.asarray(low.astype(jnp.float32)), labels)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


def test_custom_ignore_index():
    logits, labels = _batch(6)
    labels = np.where(labels == VOID, 0, labels).astype(np.int32)
    labels[0, 0, 0] = -1
    loss, n = cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    assert float(n) == labels.size - 1
    mask = labels != -1
    want, _ = _numpy_loss_sum(logits[mask], labels[mask])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_bad_reduction_raises_with_value():
    logits, labels = _batch(7)
    with pytest.raises(ValueError, match="'none'") as err:
        cross_entropy(logits, labels, reduction="none")
    assert "mean" in str(err.value) and "sum" in str(err.value)


def test_sharded_mean_is_global_batch_mean():
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    logits, labels = _batch(8, shape=(8, 3, 2), void_frac=0.0)
    # Very uneven valid counts per device, so a mean of per-device means would differ.
    labels[:4, 1:] = VOID
    labels[7, :, :] = VOID
    fn = jax.jit(lambda x, y: cross_entropy(x, y))
    sharded_logits = jax.device_put(logits, sharding)
    assert len(sharded_logits.sharding.device_set) == 8
    loss, n = fn(sharded_logits, jax.device_put(labels, sharding))
    single = jax.devices()[0]
    want, want_n = fn(jax.device_put(logits, single), jax.device_put(labels, single))
    assert float(n) == float(want_n) == (labels != VOID).sum()
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    per_device = [
        float(cross_entropy(logits[i], labels[i])[0]) for i in range(8) if (labels[i] != VOID).any()
    ]
    assert float(loss) != pytest.approx(np.mean(per_device), rel=1e-3)


def test_mean_over_all_pixels_is_mmsegmentations_average():
    """avg_non_ignore=False: the summed loss over every pixel, void ones included; with a
    third of the pixels void the gradients are 2/3 of the "mean" reduction's."""
    logits, labels = _batch(10, shape=(2, 6, 5), void_frac=0.3)
    want_sum, want_n = _numpy_loss_sum(logits, labels)
    loss, n = cross_entropy(logits, labels, reduction="mean_all_pixels")
    assert float(n) == want_n < labels.size
    np.testing.assert_allclose(float(loss), want_sum / labels.size, rtol=1e-5)
    grad_all = jax.grad(lambda x: cross_entropy(x, labels, reduction="mean_all_pixels")[0])(logits)
    grad_valid = jax.grad(lambda x: cross_entropy(x, labels)[0])(logits)
    np.testing.assert_allclose(grad_all, grad_valid * want_n / labels.size, rtol=1e-5, atol=1e-8)
