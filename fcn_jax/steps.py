"""The pure train, eval and predict steps, compiled once over a device mesh.

``train_step(state, batch, rng)``, ``eval_step(variables, batch)`` and
``predict_step(variables, images)`` are pure functions; ``compile_steps`` wraps
them in ``jax.jit`` with explicit input and output shardings (state by the
config's rules, batches split over "data") and donates the train state, so one
program serves one device, many, or many hosts. The training loop, evaluation and
prediction all run these.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training.dynamic_scale import DynamicScale

from fcn_jax import inference, losses, metrics, models, optim, resnet, sharding
from fcn_jax.normalization import normalize
from fcn_jax.visualize import VOID  # Not via input_pipeline: the steps need no TensorFlow.

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# loss_scale.kind: none; static, the loss times a constant (MindSpore's FixedLossScaleManager
# with drop_overflow_update=False: every step is applied); dynamic, flax's DynamicScale: it
# halves and the step is skipped when a gradient overflows, it doubles at a finite step that
# follows growth_interval finite ones (as torch's GradScaler and MindSpore's
# DynamicLossScaleManager do), and it lives in the train state.
LOSS_SCALES = ("none", "static", "dynamic")
# Step metrics that the training log sums over its interval instead of averaging.
COUNTED_METRICS = ("overflow_steps",)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any  # BatchNorm running statistics; {} for a model without BatchNorm.
    opt_state: Any
    # flax's DynamicScale (scale, finite steps in a row) with loss_scale.kind=dynamic, else None.
    loss_scale: Any = None


def initial_loss_scale(config) -> DynamicScale | None:
    """The dynamic loss scale a run starts with, or None when the scale is not dynamic."""
    options = config.loss_scale
    if options.kind != "dynamic":
        return None
    return DynamicScale(
        growth_interval=options.growth_interval,
        scale=jnp.asarray(options.value, jnp.float32),
        fin_steps=jnp.zeros((), jnp.int32),
    )


def variables(state: TrainState) -> dict:
    """What the eval and predict steps run: the parameters and the BatchNorm statistics."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def build_model(config) -> models.FCN | resnet.ResNetFCN:
    """The VGG FCN, or the ResNet FCN for a ResNet ``model.backbone``."""
    m = config.model
    if m.backbone in resnet.BACKBONES:
        return resnet.ResNetFCN(
            backbone=m.backbone,
            num_classes=m.num_classes,
            aux_head=m.aux_loss_weight > 0,
            base_width=m.base_width,
            dropout_rate=m.dropout_rate,
            dtype=DTYPES[m.dtype],
            freeze_batch_norm=m.freeze_batch_norm,
        )
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
        backbone=m.backbone,
        fc_batch_norm=m.fc_batch_norm,
        freeze_batch_norm=m.freeze_batch_norm,
        head_init=m.head_init,
    )


def make_init_fn(model: models.FCN, tx, loss_scale: DynamicScale | None = None):
    """rng -> TrainState at step 0. Variables do not depend on the input size."""

    def init(rng):
        images = jnp.zeros((1, models.MIN_INPUT_SIZE, models.MIN_INPUT_SIZE, 3), jnp.float32)
        initial = model.init(rng, images, train=False)
        params = initial["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=initial.get("batch_stats", {}),
            opt_state=tx.init(params),
            loss_scale=loss_scale,
        )

    return init


def make_train_step(model: models.FCN, tx, config):
    normalization, reduction = config.dataset.normalization, config.loss_reduction
    aux_weight = config.model.aux_loss_weight
    scale = config.loss_scale.value if config.loss_scale.kind == "static" else 1.0

    def train_step(state: TrainState, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        images = normalize(batch["image"], normalization, model.dtype)
        labels = batch["label"].astype(jnp.int32)

        def loss_fn(params):
            # BatchNorm normalises by the statistics of the whole global batch: its mean
            # over a batch split across devices is a cross-device mean under jit.
            outputs, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            logits = models.main_logits(outputs)
            loss, num_valid = losses.cross_entropy(logits, labels, reduction=reduction)
            if aux_weight:  # The auxiliary head's loss, as torchvision's and mmseg's recipes.
                aux_loss, _ = losses.cross_entropy(outputs["aux"], labels, reduction=reduction)
                loss = loss + aux_weight * aux_loss
            # Frozen BatchNorm (or none) updates nothing: the statistics stay as they are.
            return loss, (logits, num_valid, updates.get("batch_stats", state.batch_stats))

        def scaled_loss_fn(params):
            loss, aux = loss_fn(params)
            return loss * scale, aux

        scaler, finite = state.loss_scale, None
        if scaler is None:  # Unscaled (a scale of 1 is exact), or a static scale.
            (loss, aux), grads = jax.value_and_grad(scaled_loss_fn, has_aux=True)(state.params)
            loss, grads = loss / scale, jax.tree.map(lambda g: g / scale, grads)
        else:  # Scaled, unscaled in float32; finite: whether every gradient is.
            scaler, finite, (loss, aux), grads = scaler.value_and_grad(loss_fn, has_aux=True)(
                state.params
            )
        logits, num_valid, batch_stats = aux
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if finite is not None:  # An overflowing step changes no parameter and no moment.
            params, opt_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (params, opt_state),
                (state.params, state.opt_state),
            )
        correct = (jnp.argmax(logits, -1) == labels) & (labels != VOID)
        step_metrics = {
            "loss": loss,
            "pixel_accuracy": jnp.sum(correct) / jnp.maximum(num_valid, 1.0),
            "grad_norm": optax.global_norm(grads),
            # Of the updated parameters: the ones a checkpoint of this step would hold.
            "param_norm": optax.global_norm(params),
        }
        if finite is not None:
            step_metrics["overflow_steps"] = 1.0 - finite.astype(jnp.float32)
            step_metrics["loss_scale"] = scaler.scale
        state = TrainState(state.step + 1, params, batch_stats, opt_state, scaler)
        return state, step_metrics

    return train_step


def make_scores_fn(model: models.FCN, config, normalization: str = ""):
    """(variables, uint8 images) -> class scores, with the config's test-time inference;
    images normalised by ``normalization``, by default dataset.normalization."""
    normalization = normalization or config.dataset.normalization
    options = config.inference
    window, stride = inference.sliding_windows(config)

    def scores(variables, images):
        def run(x):
            return inference.predict_scores(
                lambda v: models.main_logits(model.apply(variables, v, train=False)),
                x,
                scales=tuple(options.scales),
                flip=options.flip,
                window=window,
                stride=stride,
            )

        x = normalize(images, normalization, model.dtype)
        if not options.resize_to:
            return run(x)
        return inference.run_resized(run, x, tuple(options.resize_to), options.pad_resized)

    return scores


def make_eval_step(model: models.FCN, config):
    normalization = config.dataset.eval_normalization
    scores, num_classes = make_scores_fn(model, config, normalization), config.model.num_classes

    def eval_step(variables, batch):
        preds = jnp.argmax(scores(variables, batch["image"]), -1)
        return metrics.confusion_matrix(batch["label"], preds, num_classes)

    return eval_step


def make_predict_step(model: models.FCN, config):
    scores = make_scores_fn(model, config)

    def predict_step(variables, images):
        return jnp.argmax(scores(variables, images), -1).astype(jnp.uint8)

    return predict_step


@dataclasses.dataclass
class Programs:
    """The jitted functions and the shardings they agree on."""

    mesh: jax.sharding.Mesh
    state_shardings: Any
    abstract_state: Any  # ShapeDtypeStructs with shardings: a restore target.
    init: Any
    init_optimizer: Any  # (params, step) -> a new optimizer state, its schedule at step.
    init_loss_scale: Any  # () -> the loss scale a run starts with (None unless dynamic).
    train_step: Any
    eval_step: Any  # (variables, batch) -> confusion matrix.
    predict_step: Any  # (variables, uint8 images) -> uint8 class indices, on every process.

    @property
    def variables_shardings(self) -> dict:
        return variables(self.state_shardings)

    @property
    def abstract_variables(self) -> dict:
        return variables(self.abstract_state)


def compile_steps(config, mesh) -> Programs:
    model = build_model(config)
    tx, _ = optim.make_optimizer(
        config.optimizer, config.num_train_steps, config.model.freeze_upsampling
    )
    loss_scale = initial_loss_scale(config)
    init = make_init_fn(model, tx, loss_scale)
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
        init_optimizer=jax.jit(
            lambda params, step: optim.init_at(tx, params, step),
            out_shardings=state_sh.opt_state,
        ),
        init_loss_scale=jax.jit(lambda: loss_scale, out_shardings=state_sh.loss_scale),
        train_step=jax.jit(
            make_train_step(model, tx, config),
            in_shardings=(state_sh, batch_sh, repl),
            out_shardings=(state_sh, repl),
            donate_argnums=(0,),
        ),
        eval_step=jax.jit(
            make_eval_step(model, config),
            in_shardings=(variables(state_sh), batch_sh),
            out_shardings=repl,
        ),
        predict_step=jax.jit(
            make_predict_step(model, config),
            in_shardings=(variables(state_sh), batch_sh),
            out_shardings=repl,
        ),
    )
