"""The training loop: resume or start (from init_from), train, evaluate, checkpoint, log.

The steps it runs are the pure, compiled ones of ``fcn_jax.steps``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

from fcn_jax import (
    checkpointing,
    damage,
    evaluation,
    event_files,
    init_from,
    input_pipeline,
    models,
    preemption,
    resnet,
    sharding,
    steps,
    visualize,
)
from fcn_jax.config_lib import validate_config


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite."""


class _Progress:
    """steps/s, images/s and ETA over the last logging interval."""

    def __init__(self, start_step: int, total: int, batch_size: int):
        self.total, self.batch_size = total, batch_size
        self.last_step, self.last_time = start_step, time.perf_counter()

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps_per_sec = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        return {
            "steps_per_sec": steps_per_sec,
            "images_per_sec": steps_per_sec * self.batch_size,
            "eta_minutes": (self.total - step) / max(steps_per_sec, 1e-9) / 60,
        }


def _check_finite(step: int, step_metrics, manager) -> None:
    """Raises if the step's loss, or the parameters it produced, are not finite."""
    names = ("loss", "param_norm", "overflow_steps")
    values = jax.device_get({k: step_metrics[k] for k in names if k in step_metrics})
    # A step that a dynamic loss scale skipped changed nothing: its loss says nothing.
    skipped = bool(values.get("overflow_steps", 0.0))
    if np.isfinite(values["param_norm"]) and (skipped or np.isfinite(values["loss"])):
        return
    manager.wait_until_finished()
    last = manager.latest_step()
    what = (
        f"loss became {values['loss']} at step {step}"
        if not np.isfinite(values["loss"])
        else f"step {step} made the parameters {values['param_norm']}"
    )
    kept = f"the last good checkpoint is step {last}" if last else "no checkpoint was written"
    raise TrainingDivergedError(
        f"{what}; training stopped and {kept} (in {manager.directory}). Lower "
        "optimizer.learning_rate, or set optimizer.grad_clip_norm and add "
        "--config.reset_optimizer=true, then run the same command to resume."
    )


def train_and_evaluate(config, workdir: str, listener: preemption.Listener | None = None) -> dict:
    """Trains (resuming from the latest checkpoint in workdir); returns the last eval metrics.

    On SIGTERM/SIGINT it saves the step it reached and raises preemption.Preempted (in
    start-up, where nothing is unsaved, the process exits at once). ``listener``: the
    entry point's, entered before the slow imports; by default one for this call.
    """
    if listener is None:
        with preemption.Listener() as listener:
            listener.connected()  # jax.distributed, if any, was started by the caller.
            return train_and_evaluate(config, workdir, listener)
    validate_config(config)
    mesh = sharding.make_mesh(config.mesh.shape)
    sharding.check_batch_sizes(
        mesh,
        {
            "batch_size": config.batch_size,
            "dataset.eval_batch_size": config.dataset.eval_batch_size,
        },
    )
    input_pipeline.check_eval_split(config)  # Before hours of training, not after.
    damage.set_aside_unreadable_json(workdir)
    manager = checkpointing.make_manager(
        workdir,
        config.keep_checkpoints,
        every_steps=config.checkpoint_every_steps,
        every_minutes=config.checkpoint_every_minutes,
        listener=listener,
    )
    try:
        return _train(config, workdir, manager, mesh, listener)
    finally:
        manager.wait_until_finished()  # Still listening: a signal now cannot cut it short.
        manager.close()


def _train(config, workdir, manager, mesh, listener) -> dict:
    programs = None

    def compiled() -> steps.Programs:  # Once the normalisation is known.
        nonlocal programs
        programs = programs or steps.compile_steps(config, mesh)
        return programs

    start, state = damage.restore_newest(
        manager, lambda step: _resume(manager, step, config, compiled)
    )
    if jax.process_index() == 0:  # Events a killed run logged after its newest checkpoint.
        event_files.discard_after(workdir, start)
    writer = metric_writers.create_default_writer(  # After that: it starts a new file.
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )
    try:
        return _train_from(config, manager, mesh, listener, compiled, state, start, writer)
    finally:
        writer.close()


def _train_from(config, manager, mesh, listener, compiled, state, start, writer) -> dict:
    """Trains from checkpoint ``start`` (None: from scratch, or from config.init_from)."""
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    eval_metrics = {}
    if start is None:
        init_from.resolve_normalization(config, None, None)
        programs = compiled()
        state, start = programs.init(init_rng), 0
        if config.init_from:
            state = init_from.initialise(state, programs, config)
        else:
            logging.info("config.init_from is empty: every layer starts from its initialiser")
        writer.write_hparams(_flat_hparams(config))
    else:
        programs = compiled()
        logging.info("Resumed from checkpoint %d in %s", start, manager.directory)
        if _evaluation_due(start, config) and not checkpointing.is_ranked(manager, start):
            logging.info("Checkpoint %d was saved but not evaluated", start)
            eval_metrics = _evaluate(programs, state, config, manager, start, writer, listener)
    logging.info(
        "Training %s (%d parameters) on mesh %s, global batch %d",
        _model_name(config.model),
        models.param_count(state.params),
        dict(mesh.shape),
        config.batch_size,
    )
    batches = input_pipeline.train_iterator(config, start_step=start)
    progress = _Progress(start, config.num_train_steps, config.batch_size)
    history, previous, path = [], None, None
    for step in range(start + 1, config.num_train_steps + 1):
        local = next(batches)
        input_pipeline.check_labels(local["label"], config.model.num_classes)
        state, step_metrics = programs.train_step(
            state, sharding.global_batch(local, mesh), dropout_rng
        )
        if step == start + 1:  # Compiled, on its way: start-up is over.
            listener.running()
            checkpointing.start_clock(manager)  # checkpoint_every_minutes counts from here.
        if previous is not None:  # Check the step before, so the device keeps busy.
            _check_finite(step - 1, previous, manager)
        previous = step_metrics
        history.append(step_metrics)
        stopping = listener.poll()  # The processes' one agreement per step.
        is_last = step == config.num_train_steps
        evaluating = _evaluation_due(step, config)
        # orbax's save decision includes the preemption's (PreemptionCheckpointingPolicy).
        due = manager.should_save(step) or evaluating or is_last
        if step % config.log_every_steps == 0 or is_last or stopping:
            summary = _summarize(jax.device_get(_stack(history)))
            summary.update(progress(step))
            writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
            history = []
        if due:  # Never save a diverged state. Saved before evaluating: see checkpointing.
            _check_finite(step, step_metrics, manager)
            path = checkpointing.save(manager, step, state, config)
        if stopping:
            raise _preempted(manager, listener, step, path)
        if evaluating:
            if listener.poll():  # A signal during the save: the evaluation can wait.
                raise _preempted(manager, listener, step, path)
            eval_metrics = _evaluate(programs, state, config, manager, step, writer, listener)
    if previous is not None:
        _check_finite(config.num_train_steps, previous, manager)
    manager.wait_until_finished()
    if listener.poll():  # A signal during the last save: it is on disk now.
        raise _preempted(manager, listener, config.num_train_steps, path)
    listener.finished()
    return eval_metrics


def _evaluation_due(step: int, config) -> bool:
    return step % config.eval_every_steps == 0 or step == config.num_train_steps


def _preempted(manager, listener, step: int, path) -> preemption.Preempted:
    manager.wait_until_finished()
    error = preemption.Preempted(listener.exit_signal, step, path)
    logging.warning("%s", error)
    return error


def _evaluate(programs, state, config, manager, step: int, writer, listener) -> dict:
    """Evaluates the saved step, attaches its mean IoU to its checkpoint (which ranks it for
    ``best``) and writes the summaries. A preemption meanwhile ends the process at once,
    once the step's save is on disk, and the evaluation runs first when the run resumes.
    If it fails (out of memory with TTA, say), the step is saved all the same."""
    why = (
        f"during the evaluation of step {step}: step {step} is saved in "
        f"{checkpointing.step_path(manager, step)}, and its evaluation runs first when the run "
        "resumes"
    )
    logging.info("Evaluating step %d on %s", step, config.dataset.eval_split)
    with listener.nothing_unsaved(manager.wait_until_finished, why):
        try:
            result = evaluation.evaluate(
                programs, steps.variables(state), config, num_examples=config.eval_summary_images
            )
        except Exception:
            manager.wait_until_finished()
            logging.warning(
                "Evaluation at step %d failed; the step is saved, and its evaluation runs first "
                "when the run resumes",
                step,
            )
            raise
        checkpointing.attach_metrics(manager, step, result.metrics)
        _write_eval_summaries(writer, step, result, config)
    return result.metrics


def _model_name(m) -> str:
    if m.backbone in resnet.BACKBONES:
        return f"FCN {m.backbone}" + (" with its auxiliary head" if m.aux_loss_weight else "")
    return f"{m.variant} on {m.backbone}, {m.geometry} geometry"


def _resume(manager, step: int, config, compiled) -> steps.TrainState:
    """The train state of checkpoint ``step`` (a new optimizer state if config asks)."""
    checkpointing.check_compatible(manager, step, config)
    init_from.resolve_normalization(config, manager, step)
    programs = compiled()
    abstract = programs.abstract_state
    if checkpointing.optimizer_carries_over(manager, step, config, abstract.params):
        state = checkpointing.restore_state(manager, step, abstract)
        if state.loss_scale is None:  # Written without a dynamic scale: start one.
            state = state.replace(loss_scale=programs.init_loss_scale())
        return state
    step_array, variables = checkpointing.restore_without_optimizer(manager, step, abstract)
    return steps.TrainState(
        step=step_array,
        opt_state=programs.init_optimizer(variables["params"], step_array),
        loss_scale=programs.init_loss_scale(),
        **variables,
    )


def _write_eval_summaries(writer, step: int, result, config) -> None:
    """The scores, each class's IoU, and example images (input | truth | prediction)."""
    scalars = {f"eval/{k}": v for k, v in evaluation.scalar_metrics(result.metrics).items()}
    names = visualize.class_names(config)
    for name, iou in zip(names, result.metrics["iou"]):
        if np.isfinite(iou):  # NaN: the class is absent from the split.
            scalars[f"eval_iou/{name}"] = float(iou)
    writer.write_scalars(step, scalars)
    if result.examples is not None:
        writer.write_images(step, {"eval/input_truth_prediction": result.examples})


def _summarize(history: dict) -> dict[str, float]:
    """Means over the logging interval; counts (overflowing steps) are summed."""
    return {
        k: float(np.sum(v) if k in steps.COUNTED_METRICS else np.mean(v))
        for k, v in history.items()
    }


def _stack(history):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *history)


def _flat_hparams(config) -> dict:
    flat = {}

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[f"{prefix}{k}"] = str(v) if isinstance(v, (tuple, list)) else v

    walk("", config.to_dict())
    return flat
