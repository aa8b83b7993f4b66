"""VGG-16 with BatchNorm: torchvision's vgg16_bn and the MindSpore tutorial's network.

The whole state carries the BatchNorm statistics (``batch_stats``): training updates
them over the global batch, checkpoints and resume keep them, evaluation, prediction
and init_from run with them.
"""

import shutil

import jax
import numpy as np
import pytest

from fcn_jax import (
    checkpointing,
    evaluation,
    init_from,
    input_pipeline,
    models,
    sharding,
    steps,
    training,
)
from tests.conftest import save_ranked
from tests.test_models import PARAM_COUNTS, abstract_init
from tests.test_training import mesh_of, train_steps

# torchvision's documented parameter counts of vgg16 and vgg16_bn (ImageNet classifiers).
TORCHVISION_VGG16, TORCHVISION_VGG16_BN = 138_357_544, 138_365_992
# MindSpore 2.10's count for the tutorial's FCN8s(21): trainable parameters, and moving
# means and variances (tests/data/make_mindspore_fixture.py's network at full width).
MINDSPORE_FCN8S_TRAINABLE, MINDSPORE_FCN8S_STATISTICS = 134_502_112, 24_832


def bn_config(tiny_config, **overrides):
    """The tiny test config with the tutorial's network (BatchNorm everywhere, no dropout)."""
    fields = {
        "model__backbone": "vgg16_bn",
        "model__fc_batch_norm": True,
        "model__dropout_rate": 0.0,
    }
    return tiny_config(**{**fields, **overrides})


def test_parameter_counts_match_torchvision_and_mindspore():
    plain = abstract_init(models.FCN(variant="fcn8s", geometry="same"))
    torchvision = abstract_init(models.FCN(variant="fcn8s", geometry="same", backbone="vgg16_bn"))
    added = models.param_count(torchvision["params"]) - PARAM_COUNTS["fcn8s"]
    assert added == TORCHVISION_VGG16_BN - TORCHVISION_VGG16  # Scales and offsets.
    assert models.param_count(torchvision["batch_stats"]) == added  # Means and variances.
    assert models.param_count(plain["params"]) == PARAM_COUNTS["fcn8s"]
    tutorial = abstract_init(
        models.FCN(variant="fcn8s", geometry="same", backbone="vgg16_bn", fc_batch_norm=True)
    )
    assert models.param_count(tutorial["params"]) == MINDSPORE_FCN8S_TRAINABLE
    assert models.param_count(tutorial["batch_stats"]) == MINDSPORE_FCN8S_STATISTICS
    params = tutorial["params"]
    assert set(params["conv1_1_bn"]) == {"scale", "bias"} and set(params["conv1_1"]) == {"kernel"}
    assert set(tutorial["batch_stats"]["fc7_bn"]) == {"mean", "var"}
    assert "bias" not in params["score_fr"] and "bias" in torchvision["params"]["score_fr"]


def train_from(config, num_devices, num_steps, start=None):
    """(initial state, state after num_steps) on num_devices, on the host; from ``start``
    (a host state) or the config's initial state."""
    mesh = mesh_of((num_devices, 1), num_devices)
    programs = steps.compile_steps(config, mesh)
    if start is None:
        start = jax.device_get(programs.init(jax.random.key(0)))
    state = sharding.put(start, programs.state_shardings)
    batches = input_pipeline.train_iterator(config)
    for _ in range(num_steps):
        batch = sharding.global_batch(next(batches), mesh)
        state, _ = programs.train_step(state, batch, jax.random.key(1))
    return start, jax.device_get(state)


def assert_trained_alike(one, eight, start, held_to_moves=lambda path: False):
    """1 and 8 devices: every parameter and statistic within 1e-4 of its tensor's largest
    value + 1e-6 (those ``held_to_moves`` picks by path: within 1/10 of their largest move),
    and every statistic moved (BatchNorm trained: not unchanged tensors compared)."""
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), one.batch_stats, start.batch_stats
    )
    assert min(jax.tree.leaves(moved)) > 0
    ratios = []
    for (path, a), b, s in zip(
        jax.tree_util.tree_leaves_with_path(steps.variables(eight)),
        jax.tree.leaves(steps.variables(one)),
        jax.tree.leaves(steps.variables(start)),
    ):
        name = sharding.path_str(path)
        bound = 0.1 * np.abs(b - s).max() if held_to_moves(name) else 1e-4 * np.abs(b).max() + 1e-6
        ratios.append((float(np.abs(a - b).max() / bound), name))
    assert max(ratios)[0] <= 1, sorted(ratios, reverse=True)[:5]


def test_batch_statistics_hold_on_activations_far_from_zero_on_1_or_8_devices():
    """The batch variance of conv1_1's outputs, whose mean is 30x their spread or more here
    (VGG's deep layers come close): in float32 E[x^2] - E[x]^2 loses 3 of its digits, and
    other ones on 8 devices; two passes keep it to 1e-6 on any number of devices. The running
    variance moves towards the unbiased batch variance."""
    model = models.FCN(
        variant="fcn32s",
        num_classes=3,
        geometry="same",
        backbone="vgg16_bn",
        base_width=4,
        fc_width=8,
        dropout_rate=0.0,
    )
    rng = np.random.default_rng(0)
    x = 300 + 3 * rng.standard_normal((8, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
    kernel = np.zeros((3, 3, 3, 4), np.float32)  # The centre tap: no padding in the outputs.
    kernel[1, 1] = rng.uniform(0.5, 1.0, (3, 4)) * rng.choice([-1, 1], (3, 4))
    variables["params"]["conv1_1"]["kernel"] = kernel
    forward = jax.jit(
        lambda v, x: model.apply(
            v, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
        )
    )
    results = []
    for n in (1, 8):
        mesh = mesh_of((n, 1), n)
        images = jax.device_put(x, sharding.batch_sharding(mesh))
        logits, updates = jax.device_get(forward(variables, images))
        results.append((logits, updates["batch_stats"]))
        conv = updates["intermediates"]["conv1_1"]["__call__"][0].astype(np.float64)
        assert np.abs(conv.mean((0, 1, 2))).min() > 30 * conv.std((0, 1, 2)).max()
        want = 0.9 + 0.1 * conv.var((0, 1, 2), ddof=1)  # From the initial variance 1.
        np.testing.assert_allclose(updates["batch_stats"]["conv1_1_bn"]["var"], want, rtol=1e-6)
    (one, one_stats), (eight, eight_stats) = results
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5 * np.abs(one).max())
    for a, b in zip(jax.tree.leaves(eight_stats), jax.tree.leaves(one_stats)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("fc_batch_norm", [False, True], ids=["torchvision", "mindspore"])
def test_1_or_8_devices_train_alike_with_adam(tiny_config, fc_batch_norm):
    """Batch statistics over the global batch, computed stably enough (two passes) that Adam
    trains alike on 1 device and 8 for 6 steps: torchvision's vgg16_bn and the tutorial's net.

    Adam as the demo runs it, warming up over 100 steps: Adam steps every parameter by about
    the learning rate whatever the size of its gradient, so parameters whose gradient is near
    float32 rounding, which differs with the number of devices, step apart at the full rate
    (torchvision's biases before each BatchNorm: zero in exact arithmetic; offsets of conv5's
    BatchNorms, over 2x2 maps here)."""
    config = bn_config(
        tiny_config,
        model__fc_batch_norm=fc_batch_norm,
        optimizer__name="adam",
        optimizer__warmup_steps=100,
    )
    start, one = train_from(config, 1, 6)
    _, eight = train_from(config, 8, 6, start)
    assert_trained_alike(one, eight, start)


def test_frozen_batch_norm_keeps_its_statistics_and_normalises_by_them(tiny_config):
    config = bn_config(tiny_config, model__freeze_batch_norm=True)
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    programs = steps.compile_steps(config, mesh)
    start = programs.init(jax.random.key(0))
    stats = {  # Not the initial 0 and 1, and keeping the units alive.
        layer: {"mean": v["mean"] - 0.3, "var": v["var"] * 2}
        for layer, v in jax.device_get(start.batch_stats).items()
    }
    start = start.replace(batch_stats=sharding.put(stats, programs.state_shardings.batch_stats))
    initial = jax.tree.map(np.array, start.params)  # Copies: the step donates the state.
    state, _ = programs.train_step(
        start,
        sharding.global_batch(next(input_pipeline.train_iterator(config)), mesh),
        jax.random.key(1),
    )
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.batch_stats), stats)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), jax.device_get(state.params), initial)
    assert max(jax.tree.leaves(moved)) > 0  # The parameters did train.
    model = steps.build_model(config)  # In training, frozen BatchNorm is eval's BatchNorm.
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    variables = steps.variables(jax.device_get(state))
    both = jax.jit(lambda v, x: (model.apply(v, x, train=True), model.apply(v, x, train=False)))
    np.testing.assert_array_equal(*both(variables, x))


def saved_state(workdir, step):
    manager = checkpointing.make_manager(str(workdir), read_only=True)
    try:
        args = checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore())
        return jax.device_get(manager.restore(step, args=args)["state"])
    finally:
        manager.close()


def test_resume_restores_the_batch_statistics_bitwise(tiny_config, tmp_path):
    config = bn_config(tiny_config, num_train_steps=4)
    training.train_and_evaluate(config, str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")  # Killed after saving step 2.
    training.train_and_evaluate(config, str(tmp_path / "b"))
    a, b = saved_state(tmp_path / "a", 4), saved_state(tmp_path / "b", 4)
    assert set(a["batch_stats"]) == {f"{n}_bn" for n in models.BACKBONE_LAYERS}
    jax.tree.map(np.testing.assert_array_equal, a["batch_stats"], b["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def test_evaluation_and_restore_onto_another_mesh_use_the_statistics(tiny_config, tmp_path):
    config = bn_config(tiny_config, num_train_steps=2)
    last = training.train_and_evaluate(config, str(tmp_path))
    other = bn_config(tiny_config, mesh__shape=(4, 2), mesh__param_sharding="model")
    result, restored = evaluation.evaluate_checkpoint(
        other, str(tmp_path), "latest", str(tmp_path / "e.json")
    )
    assert result.metrics["mean_iou"] == pytest.approx(last["mean_iou"], rel=1e-6)
    stats = jax.device_get(restored.variables["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, stats, saved_state(tmp_path, 2)["batch_stats"])
    # With trained-looking score layers, other statistics give other predictions.
    rng = np.random.default_rng(0)
    params = jax.device_get(restored.variables["params"])
    for name in ("score_fr", "score_pool4", "score_pool3"):
        params[name] = jax.tree.map(lambda p: p + rng.normal(size=p.shape), params[name])
    scored = []
    for batch_stats in (stats, jax.tree.map(lambda s: s + 0.5, stats)):
        variables = sharding.put(
            {"params": params, "batch_stats": batch_stats}, restored.programs.variables_shardings
        )
        scored.append(evaluation.evaluate(restored.programs, variables, other).confusion_matrix)
    assert np.count_nonzero(scored[0].sum(axis=0)) >= 2  # Several classes predicted.
    assert not np.array_equal(scored[0], scored[1])


def test_staged_training_carries_the_statistics(tiny_config, tmp_path):
    """FCN-16s from a vgg16_bn FCN-32s workdir starts with its BatchNorm statistics."""
    stage1 = bn_config(tiny_config, model__variant="fcn32s")
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    state = jax.device_get(steps.compile_steps(stage1, mesh).init(jax.random.key(0)))
    rng = np.random.default_rng(0)  # A trained-looking FCN-32s: no initial values left.
    state = state.replace(
        params=jax.tree.map(lambda p: p + rng.normal(size=p.shape).astype(p.dtype), state.params),
        batch_stats=jax.tree.map(
            lambda s: s + rng.uniform(0.1, 1, s.shape).astype(s.dtype), state.batch_stats
        ),
    )
    manager = checkpointing.make_manager(str(tmp_path / "fcn32s"))
    save_ranked(manager, 2, state, stage1, 0.5)
    manager.close()
    stage2 = bn_config(tiny_config, model__variant="fcn16s", init_from=str(tmp_path / "fcn32s"))
    programs = steps.compile_steps(stage2, mesh)
    started = init_from.initialise(programs.init(jax.random.key(1)), programs, stage2)
    started = jax.device_get(started)
    jax.tree.map(np.testing.assert_array_equal, started.batch_stats, state.batch_stats)
    for name in (*models.BACKBONE_LAYERS, "fc6_bn", "conv3_2_bn", "score_fr"):
        jax.tree.map(np.testing.assert_array_equal, started.params[name], state.params[name])
    assert not np.any(started.params["score_pool4"]["kernel"])  # New in FCN-16s.


@pytest.mark.slow  # Learning at all: the plain network's (test_training.py) is enough by default.
def test_a_bn_network_learns_the_synthetic_shapes(tiny_config):
    config = bn_config(
        tiny_config, model__base_width=8, model__fc_width=32, batch_size=16, num_train_steps=40
    )
    mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
    losses = [float(m["loss"]) for _, m in train_steps(config, mesh, 40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
