"""ResNet FCNs downstream: the auxiliary loss, BatchNorm over the global batch on 1 or 8
devices (parameters FSDP-sharded), frozen BatchNorm, inference, and learning."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from fcn_jax import (
    checkpointing,
    evaluation,
    input_pipeline,
    losses,
    models,
    optim,
    sharding,
    steps,
)
from fcn_jax.normalization import normalize
from tests.test_batch_norm import assert_trained_alike
from tests.test_training import train, train_steps


def resnet_config(tiny_config, **overrides):
    """The tiny test config with a narrow fcn_resnet50 (no dropout: exact comparisons)."""
    fields = {
        "model__backbone": "resnet50",
        "model__aux_loss_weight": 0.4,
        "model__dropout_rate": 0.0,
    }
    return tiny_config(**{**fields, **overrides})


def train_from(config, num_devices, start, num_steps):
    """(state, metrics of the first step, programs) after num_steps from the host state start."""
    mesh = sharding.make_mesh((num_devices, 1), jax.devices()[:num_devices])
    programs = steps.compile_steps(config, mesh)
    batches = input_pipeline.train_iterator(config)
    state, first = sharding.put(start, programs.state_shardings), None
    for _ in range(num_steps):
        batch = sharding.global_batch(next(batches), mesh)
        state, metrics = programs.train_step(state, batch, jax.random.key(1))
        first = first or jax.device_get(metrics)
    return jax.device_get(state), first, programs


def test_1_or_8_fsdp_devices_train_alike_with_adam_on_the_loss_with_its_auxiliary_term(
    tiny_config,
):
    """Adam as the demo runs it (warmup 100): kernels, BatchNorm scales and statistics
    within 1e-4 of their largest value + 1e-6 after 6 steps.

    BatchNorm offsets are held to their moves instead: each is followed (through the
    residual sums) by convolutions and BatchNorms that cancel a per-channel constant, so
    their gradients are small against float32 rounding, which differs between 1 and 8
    devices; Adam steps every parameter by about the learning rate whatever its gradient's
    size, and the offsets' steps differ by up to 10x the absolute tolerance (torch's
    BatchNorm2d has the same offsets and the same arithmetic)."""
    config = resnet_config(tiny_config, optimizer__name="adam", optimizer__warmup_steps=100)
    model = steps.build_model(config)
    assert model.aux_head and model.backbone == "resnet50"
    tx, _ = optim.make_optimizer(config.optimizer, config.num_train_steps, False)
    start = jax.device_get(jax.jit(steps.make_init_fn(model, tx))(jax.random.key(0)))
    one, metrics, _ = train_from(config, 1, start, 6)
    config.mesh.param_sharding = "fsdp"  # layer3, layer4 and head kernels split 8 ways.
    eight, _, programs = train_from(config, 8, start, 6)
    params_sharding = programs.state_shardings.params
    assert params_sharding["layer4_0_conv2"]["kernel"].spec == P(None, None, None, "data")
    assert params_sharding["layer1_0_conv2"]["kernel"].spec == P()
    assert_trained_alike(one, eight, start, held_to_moves=lambda path: path.endswith("_bn/bias"))

    # The loss is CE(out) + aux_loss_weight * CE(aux), on the batch statistics.
    batch = next(input_pipeline.train_iterator(config))
    images = normalize(batch["image"], config.dataset.normalization, model.dtype)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0])
    outputs = forward(steps.variables(start), images)
    main, aux = (losses.cross_entropy(outputs[k], batch["label"])[0] for k in ("out", "aux"))
    assert abs(float(aux - main)) > 1e-3  # Two different heads.
    np.testing.assert_allclose(metrics["loss"], main + 0.4 * aux, rtol=1e-5)


def test_frozen_batch_norm_normalises_by_the_running_statistics(tiny_config):
    model = steps.build_model(resnet_config(tiny_config, model__freeze_batch_norm=True))
    x = jax.random.normal(jax.random.key(2), (2, 35, 29, 3))
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
    variables["batch_stats"] = jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])

    @jax.jit
    def both(v):
        return model.apply(v, x, train=True, mutable=["batch_stats"]), model.apply(
            v, x, train=False
        )

    (trained, updates), evaluated = both(variables)
    jax.tree.map(np.testing.assert_array_equal, trained, evaluated)
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])


def test_inference_takes_the_main_logits_with_tta_and_windows(tiny_config):
    config = resnet_config(tiny_config, dataset__eval_pad_size=(32, 32))
    model = steps.build_model(config)
    init = jax.jit(steps.make_init_fn(model, optax.sgd(0.0)))
    variables = steps.variables(init(jax.random.key(0)))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), np.uint8))

    @jax.jit
    def logits_and_scores(variables, images):
        x = normalize(images, "torch", model.dtype)
        logits = models.main_logits(model.apply(variables, x, train=False))
        return logits, steps.make_scores_fn(model, config)(variables, images)

    logits, scores = logits_and_scores(variables, images)
    np.testing.assert_array_equal(scores, logits)  # One view: the "out" head's logits.
    config.inference.flip, config.inference.scales = True, (0.75, 1.0)
    config.inference.sliding_window = True
    preds = jax.jit(steps.make_predict_step(model, config))(variables, images)
    assert preds.shape == (2, 40, 56) and preds.dtype == jnp.uint8


@pytest.mark.slow
def test_a_narrow_resnet_fcn_learns_the_synthetic_shapes(tiny_config):
    config = resnet_config(tiny_config, model__base_width=8, batch_size=16, num_train_steps=40)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    losses_ = [float(m["loss"]) for _, m in train_steps(config, mesh, 40)]
    assert np.mean(losses_[-5:]) < 0.7 * np.mean(losses_[:5]), losses_


@pytest.mark.slow  # The same path for VGG and VGG-BN: test_training.py, test_batch_norm.py.
def test_checkpoints_restore_onto_another_mesh(tiny_config, tmp_path):
    """The whole-run path with a ResNet: train with checkpoints, and evaluate the checkpoint
    on a model-sharded 4x2 mesh."""
    config = resnet_config(tiny_config, num_train_steps=2, checkpoint_every_steps=1)
    result = train(config, tmp_path / "a")
    other = resnet_config(tiny_config, mesh__shape=(4, 2), mesh__param_sharding="fsdp")
    restored_result, restored = evaluation.evaluate_checkpoint(
        other, str(tmp_path / "a"), "latest", str(tmp_path / "report.json")
    )
    assert restored.step == 2 and os.path.isfile(tmp_path / "report.json")
    np.testing.assert_allclose(
        restored_result.metrics["mean_iou"], result["mean_iou"], rtol=1e-5, atol=1e-6
    )


def test_resuming_with_or_without_the_auxiliary_head_is_refused_by_name(tiny_config, tmp_path):
    manager = checkpointing.make_manager(str(tmp_path))
    checkpointing.save(manager, 2, {"w": np.zeros((3,), np.float32)}, resnet_config(tiny_config))
    manager.wait_until_finished()
    checkpointing.check_compatible(
        manager, 2, resnet_config(tiny_config, model__aux_loss_weight=0.5)
    )
    with pytest.raises(
        checkpointing.CheckpointMismatchError,
        match=r"model.aux_loss_weight: checkpoint has 0.4 \(an auxiliary head\), config has 0.0",
    ):
        checkpointing.check_compatible(
            manager, 2, resnet_config(tiny_config, model__aux_loss_weight=0.0)
        )
    manager.close()
