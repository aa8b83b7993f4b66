"""Optimizer options: decay on weights only, bias multiplier, frozen upsampling, schedules."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from fcn_jax import optim


def opt_config(**overrides):
    opt = default.get_config().optimizer
    with opt.unlocked():
        for k, v in overrides.items():
            opt[k] = v
    return opt


PARAMS = {
    "conv1_1": {"kernel": jnp.ones((3, 3, 3, 4)), "bias": jnp.ones((4,))},
    "upscore8": {"kernel": jnp.ones((16, 16, 2, 2))},
}
ZERO_GRADS = jax.tree.map(jnp.zeros_like, PARAMS)
ONE_GRADS = jax.tree.map(jnp.ones_like, PARAMS)


def one_update(opt, grads, freeze=False):
    tx, _ = optim.make_optimizer(opt, num_train_steps=100, freeze_upsampling=freeze)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    return jax.device_get(updates)


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_weight_decay_reaches_kernels_but_never_biases(name):
    opt = opt_config(name=name, schedule="constant", learning_rate=0.1, weight_decay=0.01)
    updates = one_update(opt, ZERO_GRADS)
    assert np.all(updates["conv1_1"]["kernel"] < 0)  # Decay pulls the weights down.
    np.testing.assert_array_equal(updates["conv1_1"]["bias"], 0)


def test_sgd_step_is_caffe_sgd():
    opt = opt_config(schedule="constant", learning_rate=0.1, weight_decay=0.01, momentum=0.9)
    updates = one_update(opt, ONE_GRADS)
    # First step: -lr * (grad + wd * w) = -0.1 * (1 + 0.01).
    np.testing.assert_allclose(updates["conv1_1"]["kernel"], -0.101, rtol=1e-6)
    np.testing.assert_allclose(updates["conv1_1"]["bias"], -0.1, rtol=1e-6)


def test_bias_learning_rate_multiplier():
    opt = opt_config(schedule="constant", learning_rate=0.1, weight_decay=0.0, bias_lr_mult=2.0)
    updates = one_update(opt, ONE_GRADS)
    np.testing.assert_allclose(updates["conv1_1"]["bias"], -0.2, rtol=1e-6)
    np.testing.assert_allclose(updates["conv1_1"]["kernel"], -0.1, rtol=1e-6)


def test_frozen_upsampling_does_not_move():
    opt = opt_config(schedule="constant", learning_rate=0.1)
    frozen = one_update(opt, ONE_GRADS, freeze=True)
    assert not np.any(frozen["upscore8"]["kernel"])
    assert np.all(frozen["conv1_1"]["kernel"] != 0)
    assert np.all(one_update(opt, ONE_GRADS)["upscore8"]["kernel"] != 0)


def test_gradient_clipping_bounds_the_update():
    opt = opt_config(schedule="constant", learning_rate=1.0, weight_decay=0.0, grad_clip_norm=1.0)
    grads = jax.tree.map(lambda g: 100 * g, ONE_GRADS)
    updates = one_update(opt, grads)
    assert float(optax.global_norm(updates)) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    "schedule, at_half",
    [("constant", 1.0), ("poly", 0.5**0.9), ("cosine", 0.5)],
)
def test_schedules_with_warmup(schedule, at_half):
    opt = opt_config(schedule=schedule, learning_rate=1.0, warmup_steps=10)
    lr = optim.make_schedule(opt, num_train_steps=110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(60)) == pytest.approx(at_half, rel=1e-4)


@pytest.mark.parametrize("field, value", [("name", "lamb"), ("schedule", "step")])
def test_unknown_optimizer_or_schedule_is_named(field, value):
    opt = opt_config(**{field: value})
    with pytest.raises(ValueError, match=f"optimizer.{field}={value!r}"):
        optim.make_optimizer(opt, 100, False)


def test_default_config_is_locked_against_typos():
    config = default.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    with pytest.raises(AttributeError):
        config.not_a_field = 1  # Locked: a typo cannot add a field.


# Parameters of every kind: a convolution (kernel, bias), a BatchNorm (scale, bias).
KINDS = {
    "conv1_1": {"kernel": jnp.ones((3, 3, 3, 4)), "bias": jnp.ones((4,))},
    "conv1_1_bn": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
}


@pytest.mark.parametrize(
    "recipe, decays_everything",
    [
        ("fcn8s", False),  # fcn_jax's own: kernels.
        ("fcn8s:paper,caffe", False),  # Caffe: decay_mult 0 on biases.
        ("fcn8s:mindspore", False),  # nn.Momentum: not on gamma and beta.
        ("fcn_resnet50", True),  # torch's SGD weight_decay, as mmsegmentation uses it.
        ("fcn_resnet101", True),
    ],
)
def test_weight_decay_reaches_what_each_recipes_reference_decays(recipe, decays_everything):
    import importlib

    name, _, options = recipe.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(*([options] if options else []))
    opt = config.optimizer
    with opt.unlocked():
        opt.schedule, opt.warmup_steps = "constant", 0
    tx, _ = optim.make_optimizer(opt, 100, freeze_upsampling=False)
    updates = jax.device_get(
        tx.update(jax.tree.map(jnp.zeros_like, KINDS), tx.init(KINDS), KINDS)[0]
    )
    assert np.all(updates["conv1_1"]["kernel"] < 0)  # Decay alone moves the kernels.
    others = [
        updates["conv1_1"]["bias"],
        updates["conv1_1_bn"]["scale"],
        updates["conv1_1_bn"]["bias"],
    ]
    assert all(np.all(u < 0) if decays_everything else not np.any(u) for u in others)


def test_poly_ends_at_min_learning_rate():
    """mmsegmentation's poly: (lr - min_lr) * (1 - t/T)^0.9 + min_lr."""
    opt = opt_config(schedule="poly", learning_rate=0.01, min_learning_rate=1e-4, warmup_steps=0)
    lr = optim.make_schedule(opt, num_train_steps=20_000)
    for t in (0, 5_000, 19_999, 20_000):
        want = (0.01 - 1e-4) * (1 - t / 20_000) ** 0.9 + 1e-4
        assert float(lr(t)) == pytest.approx(want, rel=1e-5)
    cosine = optim.make_schedule(opt_config(schedule="cosine", min_learning_rate=2e-4), 100)
    assert float(cosine(100)) == pytest.approx(2e-4, rel=1e-5)


def test_schedule_interval_steps_the_rate_once_an_epoch_as_mindspores_zoo():
    """The zoo's CosineAnnealingLR(lr, T_max=epochs, steps_per_epoch, epochs) of src/utils/
    lr_scheduler.py, restated: the rate of epoch e is lr * (1 + cos(pi * e / epochs)) / 2."""
    epochs, per_epoch, base = 5, 3, 0.015

    def zoo(i):
        return base * (1 + math.cos(math.pi * (i // per_epoch) / epochs)) / 2

    opt = opt_config(
        schedule="cosine", learning_rate=base, warmup_steps=0, schedule_interval=per_epoch
    )
    lr = optim.make_schedule(opt, num_train_steps=epochs * per_epoch)
    assert [float(lr(i)) for i in range(epochs * per_epoch)] == pytest.approx(
        [zoo(i) for i in range(epochs * per_epoch)], rel=1e-6
    )
    assert float(lr(per_epoch - 1)) == float(lr(0))  # Constant through the first epoch.
