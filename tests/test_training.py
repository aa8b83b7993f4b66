"""Train/eval steps over device meshes, checkpoints, resume, and bad input."""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from fcn_jax import checkpointing, evaluation, input_pipeline, sharding, steps, training
from tests.conftest import save_ranked
from tests.test_init_from import as_variables, tiny_params

KEY = jax.random.key(1)


def mesh_of(shape, num_devices):
    return sharding.make_mesh(shape, devices=jax.devices()[:num_devices])


def train_steps(config, mesh, num_steps):
    """(state, host metrics) after each of ``num_steps`` steps from a fresh state."""
    programs = steps.compile_steps(config, mesh)
    state = programs.init(jax.random.key(0))
    batches = input_pipeline.train_iterator(config)
    for _ in range(num_steps):
        state, step_metrics = programs.train_step(
            state, sharding.global_batch(next(batches), mesh), jax.random.key(1)
        )
        yield state, jax.device_get(step_metrics)


def run_steps(config, mesh, num_steps=2):
    *_, last = train_steps(config, mesh, num_steps)
    return last


@pytest.mark.parametrize(
    "mesh_shape, rules",
    [
        # Replicated data parallelism: also the 1-vs-8 BatchNorm tests (test_batch_norm.py);
        # FSDP: also the ResNet one (test_resnet_training.py).
        pytest.param((8, 1), "replicated", marks=pytest.mark.slow),
        ((4, 2), "model"),
        pytest.param((8, 1), "fsdp", marks=pytest.mark.slow),
    ],
)
def test_sharded_train_steps_match_one_device(tiny_config, mesh_shape, rules):
    config = tiny_config(mesh__param_sharding=rules)
    ref_state, ref_metrics = run_steps(config, mesh_of((1, 1), 1))
    state, step_metrics = run_steps(config, mesh_of(mesh_shape, 8))
    fc6 = state.params["fc6"]["kernel"].sharding
    if rules == "replicated":
        assert fc6.is_fully_replicated
    else:
        assert fc6.spec == sharding.get_rules(rules)[0][1]
    np.testing.assert_allclose(step_metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        jax.device_get(state.params),
        jax.device_get(ref_state.params),
    )
    assert int(state.step) == 2


def test_param_sharding_rules_place_fc6_and_fc7(tiny_config):
    config = tiny_config(mesh__param_sharding="model")
    programs = steps.compile_steps(config, mesh_of((4, 2), 8))
    sh = programs.state_shardings.params
    assert sh["fc6"]["kernel"].spec == P(None, None, None, "model")
    assert sh["fc7"]["kernel"].spec == P(None, None, "model", None)
    assert sh["conv1_1"]["kernel"].spec == P()
    # The optimizer state mirrors the parameter paths and is sharded alike.
    opt_specs = {
        sharding.path_str(path): s.spec
        for path, s in jax.tree_util.tree_leaves_with_path(programs.state_shardings.opt_state)
    }
    fc6_moments = [spec for name, spec in opt_specs.items() if name.endswith("fc6/kernel")]
    assert fc6_moments and all(spec == P(None, None, None, "model") for spec in fc6_moments)


def test_sharding_rule_that_does_not_divide_is_rejected(tiny_config):
    config = tiny_config(mesh__param_sharding="fsdp", model__fc_width=12)
    with pytest.raises(
        ValueError, match=r"cannot shard params/fc6/.*does not divide by the 8 devices"
    ):
        steps.compile_steps(config, mesh_of((8, 1), 8))


def test_eval_confusion_matrix_is_the_same_on_8_devices(tiny_config):
    config = tiny_config()
    params = tiny_params("fcn8s")  # Trained-looking: the predictions vary across classes.
    results = []
    for shape, n in (((1, 1), 1), ((8, 1), 8)):
        programs = steps.compile_steps(config, mesh_of(shape, n))
        placed = sharding.put(as_variables(params), programs.variables_shardings)
        results.append(evaluation.evaluate(programs, placed, config).confusion_matrix)
    np.testing.assert_array_equal(results[0], results[1])
    size = config.dataset.image_size
    assert results[0].sum() <= 256 * size[0] * size[1]  # Void pixels are left out.
    assert results[0].sum() > 0.8 * 256 * size[0] * size[1]
    assert np.count_nonzero(results[0].sum(axis=0)) >= 3  # Predictions of several classes.


def train(config, workdir):
    return training.train_and_evaluate(config, str(workdir))


def logged_steps(workdir, tag: str) -> list[int]:
    """The steps of summary ``tag`` in a run's TensorBoard files."""
    from tensorboard.backend.event_processing import event_file_loader

    steps = []
    for path in glob.glob(str(workdir / "events.out.tfevents.*")):
        for event in event_file_loader.EventFileLoader(path).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def saved_params(workdir, step):
    manager = checkpointing.make_manager(str(workdir), read_only=True)
    try:
        restored = manager.restore(
            step,
            args=checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore()),
        )
        return jax.device_get(restored["state"]["params"])
    finally:
        manager.close()


def test_resume_continues_exactly_where_training_stopped(tiny_config, tmp_path):
    config = tiny_config(num_train_steps=4)
    train(config, tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["2", "4"]
    # A run killed after saving step 2: resuming it must reach the same step 4.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
    train(config, tmp_path / "b")
    a, b = saved_params(tmp_path / "a", 4), saved_params(tmp_path / "b", 4)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # Bitwise, as after kill -9.
    # TensorBoard shows each step once: the killed run's steps 3 and 4 were dropped, and
    # all of them where it was killed before its first checkpoint.
    shutil.copytree(tmp_path / "a", tmp_path / "c", ignore=shutil.ignore_patterns("checkpoints"))
    train(config, tmp_path / "c")
    for tag in ("train/loss", "eval/mean_iou"):
        assert logged_steps(tmp_path / "b", tag) == [2, 4], tag
        assert logged_steps(tmp_path / "c", tag) == [2, 4], tag
    saved = json.loads((tmp_path / "a" / "checkpoints" / "4" / "config" / "metadata").read_text())
    assert saved["model"]["num_classes"] == config.model.num_classes
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "a"))


def test_restore_onto_another_mesh_gives_the_same_metrics(tiny_config, tmp_path):
    config = tiny_config(num_train_steps=2)
    last = train(config, tmp_path)
    out = tmp_path / "eval.json"
    other = tiny_config(mesh__shape=(4, 2), mesh__param_sharding="model")
    result, restored = evaluation.evaluate_checkpoint(other, str(tmp_path), "latest", str(out))
    eval_metrics, cm = result.metrics, result.confusion_matrix
    assert restored.step == 2
    assert eval_metrics["mean_iou"] == pytest.approx(last["mean_iou"], rel=1e-6)
    report = json.loads(out.read_text())
    assert report["step"] == 2 and report["split"] == "validation"
    assert np.array_equal(np.asarray(report["confusion_matrix"]), cm)
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "fw_iou", "iou", "accuracy"):
        assert key in report
    assert len(report["iou"]) == config.model.num_classes


def _fake_state(value):
    return {"w": np.full((2,), value, np.float32)}


def test_checkpoints_keep_latest_and_best_never_evicting_the_newest(tmp_path, tiny_config):
    config = tiny_config()
    manager = checkpointing.make_manager(str(tmp_path), keep=2)
    for step, miou in zip(range(1, 6), [0.1, 0.9, 0.2, 0.3, 0.4]):
        save_ranked(manager, step, _fake_state(step), config, miou)
    checkpointing.save(manager, 6, _fake_state(6), config)  # No eval at this step.
    manager.wait_until_finished()
    manager.close()
    # A new manager (as after a restart) still knows the metrics, and keeps the best.
    manager = checkpointing.make_manager(str(tmp_path), keep=2)
    save_ranked(manager, 7, _fake_state(7), config, 0.5)
    assert sorted(manager.all_steps()) == [2, 6, 7]
    manager.close()
    manager = checkpointing.make_manager(str(tmp_path), keep=2, read_only=True)
    assert sorted(manager.all_steps()) == [2, 6, 7]
    assert checkpointing.resolve_step(manager, "best") == 2
    assert checkpointing.resolve_step(manager, "latest") == 7
    assert checkpointing.resolve_step(manager, "6") == 6
    with pytest.raises(FileNotFoundError, match="no checkpoint 3"):
        checkpointing.resolve_step(manager, "3")
    with pytest.raises(ValueError, match="best, latest or a step"):
        checkpointing.resolve_step(manager, "newest")


def test_resuming_a_workdir_of_another_model_is_refused(tiny_config, tmp_path):
    train(tiny_config(num_train_steps=2), tmp_path)
    with pytest.raises(checkpointing.CheckpointMismatchError, match=r"model.num_classes"):
        train(tiny_config(num_train_steps=4, model__num_classes=5), tmp_path)
    with pytest.raises(checkpointing.CheckpointMismatchError, match=r"model.variant"):
        train(tiny_config(num_train_steps=4, model__variant="fcn16s"), tmp_path)
    with pytest.raises(checkpointing.CheckpointMismatchError, match=r"model.at_once"):
        train(tiny_config(num_train_steps=4, model__at_once=True), tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # Nothing overwritten.


def test_eval_without_checkpoint_says_train_first(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluation.evaluate_checkpoint(tiny_config(), str(tmp_path))


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path):
    train(tiny_config(num_train_steps=2), tmp_path)
    # Step 3's loss comes from step 2's parameters and is finite; its update is not, and
    # step 3 is a checkpoint step: the new parameters are checked before saving.
    bad = tiny_config(
        num_train_steps=6, checkpoint_every_steps=1, optimizer__learning_rate=float("inf")
    )
    with pytest.raises(
        training.TrainingDivergedError,
        match=r"step 3 made the parameters nan; training stopped and the last good checkpoint "
        r"is step 2 .*grad_clip_norm and add --config.reset_optimizer=true, then run the same",
    ):
        train(bad, tmp_path)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    params = saved_params(tmp_path, 2)
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))


def test_labels_outside_the_classes_are_reported_by_value(tiny_config, tmp_path):
    # The synthetic data has classes 0..3; a 3-class model cannot take label 3.
    with pytest.raises(ValueError, match=r"label value 3 found"):
        train(tiny_config(model__num_classes=3), tmp_path)


def test_check_labels_accepts_void_and_names_bad_values():
    input_pipeline.check_labels(np.array([[0, 20, 255]], np.uint8), 21)
    with pytest.raises(
        ValueError, match=r"label value 21 found \(1 pixels; all bad values: \[21, 254\]"
    ):
        input_pipeline.check_labels(np.array([[0, 21, 254, 255]], np.uint8), 21)


def test_batches_that_do_not_divide_the_data_axis_are_refused_before_any_data(
    tiny_config, tmp_path
):
    for field, override, value in (
        ("batch_size", "batch_size", 1),
        ("dataset.eval_batch_size", "dataset__eval_batch_size", 12),
    ):
        config = tiny_config(mesh__shape=(-1, 1), **{override: value})
        with pytest.raises(
            ValueError,
            match=rf"config field {field}={value} does not divide over the 8 devices of the "
            r"mesh's data axis .*--config.mesh.shape=\(1,-1\)",
        ):
            train(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_the_caffe_recipe_runs_its_batch_of_one_on_a_host_of_8_devices(tiny_config):
    from configs import fcn8s

    caffe = fcn8s.get_config("caffe")
    config = tiny_config(batch_size=caffe.batch_size, mesh__shape=caffe.mesh.shape)
    mesh = sharding.make_mesh(config.mesh.shape)
    assert dict(mesh.shape) == {"data": 1, "model": 8}
    sharding.check_batch_sizes(mesh, {"batch_size": 1, "dataset.eval_batch_size": 32})
    programs = steps.compile_steps(config, mesh)
    batch = next(input_pipeline.train_iterator(config))
    assert batch["image"].shape[0] == 1
    state, step_metrics = programs.train_step(
        programs.init(jax.random.key(0)), sharding.global_batch(batch, mesh), jax.random.key(1)
    )
    assert int(state.step) == 1 and np.isfinite(float(step_metrics["loss"]))


def test_checkpoints_from_before_batch_norm_evaluate_and_resume(tiny_config, tmp_path):
    """Checkpoints written before the train state held batch_stats (and the config a
    backbone) still evaluate and resume."""
    import ml_collections

    config = tiny_config(num_train_steps=4)
    programs = steps.compile_steps(config, mesh_of((1, 1), 1))
    state = jax.device_get(programs.init(jax.random.key(0)))
    earlier = config.to_dict()
    for field in ("backbone", "fc_batch_norm", "freeze_batch_norm"):
        del earlier["model"][field]
    del earlier["loss_scale"]
    manager = checkpointing.make_manager(str(tmp_path))
    old_state = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    save_ranked(manager, 2, old_state, ml_collections.ConfigDict(earlier), 0.1)
    manager.close()
    result, restored = evaluation.evaluate_checkpoint(config, str(tmp_path), "latest")
    assert restored.step == 2 and restored.variables["batch_stats"] == {}
    train(config, tmp_path)  # Resumes at step 2.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_float16_dynamic_loss_scale_skips_overflows_halves_and_resumes_bitwise(
    tiny_config, tmp_path
):
    """An overflowing float16 step changes no parameter and no moment and halves the scale;
    the log counts it; finite steps grow the scale back; a checkpoint restores the scale
    bitwise and training goes on as unbroken; a checkpoint from before loss scaling starts
    the configured scale."""
    config = tiny_config(
        model__dtype="float16",
        loss_scale__kind="dynamic",
        loss_scale__value=2.0**40,  # Gradients times 2^40 overflow float16's 65504.
        loss_scale__growth_interval=1,
    )
    mesh = mesh_of((1, 1), 1)
    programs = steps.compile_steps(config, mesh)
    batches = input_pipeline.train_iterator(config)

    def step(state):
        return programs.train_step(state, sharding.global_batch(next(batches), mesh), KEY)

    state = programs.init(jax.random.key(0))
    start = jax.device_get(state)
    state, first = step(state)
    skipped = jax.device_get(state)
    assert float(first["overflow_steps"]) == 1 and float(skipped.loss_scale.scale) == 2.0**39
    jax.tree.map(np.testing.assert_array_equal, skipped.params, start.params)
    jax.tree.map(np.testing.assert_array_equal, skipped.opt_state, start.opt_state)
    assert int(skipped.step) == 1
    state = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.float32(2.0**8)))
    state, second = step(state)
    state, third = step(state)  # A finite step after growth_interval finite ones: doubled.
    assert float(second["overflow_steps"]) == float(third["overflow_steps"]) == 0
    assert float(third["loss_scale"]) == 2.0**9
    moved = jax.tree.map(
        lambda a, b: np.abs(a - b).max(), jax.device_get(state.params), start.params
    )
    assert min(jax.tree.leaves(moved)) > 0
    log = training._summarize({k: np.stack([first[k], second[k], third[k]]) for k in first})
    assert log["overflow_steps"] == 1  # Counted over the interval, not averaged.

    manager = checkpointing.make_manager(str(tmp_path))
    checkpointing.save(manager, 3, state, config)
    manager.wait_until_finished()
    resumed = training._resume(manager, 3, config, lambda: programs)
    kept = jax.device_get(state)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), kept)
    assert float(kept.loss_scale.scale) == 2.0**9 and int(kept.loss_scale.fin_steps) == 0
    batch = sharding.global_batch(next(batches), mesh)
    one = jax.device_get(programs.train_step(state, batch, KEY)[0])
    other = jax.device_get(programs.train_step(resumed, batch, KEY)[0])
    jax.tree.map(np.testing.assert_array_equal, one, other)  # Bitwise, as unbroken.

    earlier = config.to_dict()
    del earlier["loss_scale"]
    old = {"step": kept.step, "params": kept.params, "batch_stats": {}, "opt_state": kept.opt_state}
    checkpointing.save(manager, 4, old, ml_collections.ConfigDict(earlier))
    manager.wait_until_finished()
    started = jax.device_get(training._resume(manager, 4, config, lambda: programs))
    assert float(started.loss_scale.scale) == 2.0**40 and int(started.step) == 3
    manager.close()


@pytest.mark.slow  # The scaled arithmetic is the dynamic scale's test's, less its backoff.
def test_a_static_loss_scale_is_exact_on_float32_steps(tiny_config):
    """MindSpore's fixed scale (1024): the loss times it, the gradients divided by it, every
    step applied; a power of 2 changes no float32 gradient, so the step is the unscaled one."""
    mesh = mesh_of((1, 1), 1)
    states = [
        run_steps(tiny_config(loss_scale__kind=kind, loss_scale__value=1024.0), mesh, 1)
        for kind in ("static", "none")
    ]
    (scaled, scaled_metrics), (plain, plain_metrics) = states
    assert "overflow_steps" not in scaled_metrics and scaled.loss_scale is None
    jax.tree.map(
        np.testing.assert_array_equal, *(jax.device_get(s.params) for s in (scaled, plain))
    )
    assert float(scaled_metrics["loss"]) == float(plain_metrics["loss"])
