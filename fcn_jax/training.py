"""Training and evaluation: pure steps compiled once over a device mesh, and the loop.

``train_step(state, batch, rng)`` and ``eval_step(params, batch)`` are pure
functions; ``compile_steps`` wraps them in ``jax.jit`` with explicit input and
output shardings (state by the config's rules, batches split over "data") and
donates the state, so one program serves one device, many, or many hosts.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from jax.sharding import SingleDeviceSharding

from fcn_jax import (
    checkpointing,
    convert,
    evaluation,
    inference,
    input_pipeline,
    losses,
    metrics,
    models,
    optim,
    sharding,
    visualize,
)
from fcn_jax.config_lib import validate_config
from fcn_jax.normalization import normalize

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite."""


def build_model(config) -> models.FCN:
    m = config.model
    return models.FCN(
        variant=m.variant,
        num_classes=m.num_classes,
        geometry=m.geometry,
        at_once=m.at_once,
        base_width=m.base_width,
        fc_width=m.fc_width,
        dropout_rate=m.dropout_rate,
        fc6_impl=m.fc6_impl,
        dtype=DTYPES[m.dtype],
    )


def make_init_fn(model: models.FCN, tx):
    """rng -> TrainState at step 0. Parameters do not depend on the input size."""

    def init(rng):
        images = jnp.zeros((1, models.MIN_INPUT_SIZE, models.MIN_INPUT_SIZE, 3), jnp.float32)
        params = model.init(rng, images, train=False)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def make_train_step(model: models.FCN, tx, config):
    normalization, reduction = config.dataset.normalization, config.loss_reduction

    def train_step(state: TrainState, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        images = normalize(batch["image"], normalization, model.dtype)
        labels = batch["label"].astype(jnp.int32)

        def loss_fn(params):
            logits = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
            loss, num_valid = losses.cross_entropy(logits, labels, reduction=reduction)
            return loss, (logits, num_valid)

        (loss, (logits, num_valid)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = (jnp.argmax(logits, -1) == labels) & (labels != input_pipeline.VOID)
        step_metrics = {
            "loss": loss,
            "pixel_accuracy": jnp.sum(correct) / jnp.maximum(num_valid, 1.0),
            "grad_norm": optax.global_norm(grads),
        }
        return TrainState(state.step + 1, params, opt_state), step_metrics

    return train_step


def make_scores_fn(model: models.FCN, config):
    """(params, uint8 images) -> class scores, with the config's test-time augmentation."""
    normalization, options = config.dataset.normalization, config.inference
    window, stride = inference.sliding_windows(config)

    def scores(params, images):
        return inference.predict_scores(
            lambda x: model.apply({"params": params}, x, train=False),
            normalize(images, normalization, model.dtype),
            scales=tuple(options.scales),
            flip=options.flip,
            window=window,
            stride=stride,
        )

    return scores


def make_eval_step(model: models.FCN, config):
    scores, num_classes = make_scores_fn(model, config), config.model.num_classes

    def eval_step(params, batch):
        preds = jnp.argmax(scores(params, batch["image"]), -1)
        return metrics.confusion_matrix(batch["label"], preds, num_classes)

    return eval_step


def make_predict_step(model: models.FCN, config):
    scores = make_scores_fn(model, config)

    def predict_step(params, images):
        return jnp.argmax(scores(params, images), -1).astype(jnp.uint8)

    return predict_step


@dataclasses.dataclass
class Programs:
    """The jitted functions and the shardings they agree on."""

    mesh: jax.sharding.Mesh
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs with shardings: a restore target.
    init: Any
    train_step: Any
    eval_step: Any  # (params, batch) -> confusion matrix.
    predict_step: Any  # (params, uint8 images) -> uint8 class indices, on every process.


def compile_steps(config, mesh) -> Programs:
    model = build_model(config)
    tx, _ = optim.make_optimizer(
        config.optimizer, config.num_train_steps, config.model.freeze_upsampling
    )
    init = make_init_fn(model, tx)
    shapes = jax.eval_shape(init, jax.random.key(0))
    rules = sharding.get_rules(config.mesh.param_sharding)
    state_sh = sharding.tree_shardings(shapes, mesh, rules)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_sh
    )
    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    return Programs(
        mesh=mesh,
        state_shardings=state_sh,
        abstract_state=abstract,
        init=jax.jit(init, out_shardings=state_sh),
        train_step=jax.jit(
            make_train_step(model, tx, config),
            in_shardings=(state_sh, batch_sh, repl),
            out_shardings=(state_sh, repl),
            donate_argnums=(0,),
        ),
        eval_step=jax.jit(
            make_eval_step(model, config),
            in_shardings=(state_sh.params, batch_sh),
            out_shardings=repl,
        ),
        predict_step=jax.jit(
            make_predict_step(model, config),
            in_shardings=(state_sh.params, batch_sh),
            out_shardings=repl,
        ),
    )


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
    loss = float(jax.device_get(step_metrics["loss"]))
    if not np.isfinite(loss):
        manager.wait_until_finished()
        last = manager.latest_step()
        kept = f"the last good checkpoint is step {last}" if last else "no checkpoint was written"
        raise TrainingDivergedError(
            f"loss became {loss} at step {step}; training stopped and {kept} "
            f"(in {manager.directory}). Lower optimizer.learning_rate, add "
            "optimizer.grad_clip_norm or warmup, and resume."
        )


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (resuming from the latest checkpoint in workdir); returns the last eval metrics."""
    validate_config(config)
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    resolve_normalization(config, manager, manager.latest_step())
    mesh = sharding.make_mesh(config.mesh.shape)
    sharding.check_batch_sizes(
        mesh,
        {
            "batch_size": config.batch_size,
            "dataset.eval_batch_size": config.dataset.eval_batch_size,
        },
    )
    programs = compile_steps(config, mesh)
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    eval_metrics: dict = {}
    try:
        start = manager.latest_step()
        if start is None:
            state, start = programs.init(init_rng), 0
            if config.init_from:
                state = _init_from(state, programs, config)
            writer.write_hparams(_flat_hparams(config))
        else:
            checkpointing.check_compatible(manager, start, config)
            state = checkpointing.restore_state(manager, start, programs.abstract_state)
            logging.info("Resumed from checkpoint %d in %s", start, manager.directory)
        logging.info(
            "Training %s (%s geometry, %d parameters) on mesh %s, global batch %d",
            config.model.variant,
            config.model.geometry,
            models.param_count(state.params),
            dict(mesh.shape),
            config.batch_size,
        )
        batches = input_pipeline.train_iterator(config, start_step=start)
        progress = _Progress(start, config.num_train_steps, config.batch_size)
        history, previous = [], None
        for step in range(start + 1, config.num_train_steps + 1):
            local = next(batches)
            input_pipeline.check_labels(local["label"], config.model.num_classes)
            state, step_metrics = programs.train_step(
                state, sharding.global_batch(local, mesh), dropout_rng
            )
            if previous is not None:  # Check the step before, so the device keeps busy.
                _check_finite(step - 1, previous, manager)
            previous = step_metrics
            history.append(step_metrics)
            is_last = step == config.num_train_steps
            if step % config.log_every_steps == 0 or is_last:
                summary = {k: float(np.mean(v)) for k, v in jax.device_get(_stack(history)).items()}
                summary.update(progress(step))
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
                history = []
            evaluated = None
            if step % config.eval_every_steps == 0 or is_last:
                result = evaluation.evaluate(
                    programs, state.params, config, num_examples=config.eval_summary_images
                )
                eval_metrics = result.metrics
                evaluated = evaluation.scalar_metrics(eval_metrics)
                _write_eval_summaries(writer, step, result, config)
            if step % config.checkpoint_every_steps == 0 or is_last:
                _check_finite(step, step_metrics, manager)  # Never save a diverged state.
                checkpointing.save(manager, step, state, config, evaluated)
        if previous is not None:
            _check_finite(config.num_train_steps, previous, manager)
        return eval_metrics
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()


def resolve_normalization(config, manager, step) -> None:
    """Fills dataset.normalization="" from the checkpoint, the init_from weights, or caffe."""
    if config.dataset.normalization:
        return
    if step is not None:
        value = checkpointing.saved_config(manager, step)["dataset"]["normalization"]
    elif config.init_from:
        value = load_init(config.init_from, params=False)[1]["normalization"]
    else:
        value = "caffe"
    config.dataset.normalization = value
    logging.info("Input normalisation: %s", value)


def load_init(path: str, params: bool = True):
    """(params or None, meta) from converted weights, or a training workdir's best checkpoint.

    A workdir gives the paper's staged training: FCN-16s from a trained FCN-32s,
    FCN-8s from FCN-16s.
    """
    if not os.path.isdir(checkpointing.checkpoint_dir(path)):
        return convert.load_weights(path) if params else (None, convert.load_meta(path))
    manager = checkpointing.make_manager(path, read_only=True)
    try:
        step = checkpointing.resolve_step(manager, "best")
        saved = ml_collections.ConfigDict(checkpointing.saved_config(manager, step))
        meta = {
            "variant": saved.model.variant,
            "num_classes": saved.model.num_classes,
            "normalization": saved.dataset.normalization,
            "geometry": saved.model.geometry,
            "at_once": saved.model.at_once,
            "checkpoint": step,
        }
        if not params:
            return None, meta
        model, device = build_model(saved), jax.local_devices()[0]
        shapes = jax.eval_shape(make_init_fn(model, optax.identity()), jax.random.key(0)).params
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=SingleDeviceSharding(device)),
            shapes,
        )
        restored = checkpointing.restore_params(manager, step, abstract)
        return jax.tree.map(np.asarray, restored), meta
    finally:
        manager.close()


def _init_from(state: TrainState, programs: Programs, config) -> TrainState:
    """The fresh state with the layers taken from config.init_from."""
    weights, meta = load_init(config.init_from)
    params, taken = convert.merge_into(state.params, weights, config.init_layers)
    convert.check_head(meta, config.model, taken, config.init_from)
    logging.info("Initialised %s from %s (%s)", list(taken), config.init_from, meta)
    return state.replace(params=sharding.put(params, programs.state_shardings.params))


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
