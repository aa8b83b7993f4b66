"""Checks a config before anything runs, so a typo fails in a second with its name."""

from __future__ import annotations

from fcn_jax import input_pipeline, losses, models, normalization, optim, resnet, sharding, steps
from fcn_jax.transforms import IMAGE_RESIZES, VOID
from fcn_jax.weights import catalogue

_CHOICES = (
    ("model.variant", models.VARIANTS),
    ("model.geometry", models.GEOMETRIES),
    ("model.backbone", models.BACKBONES + resnet.BACKBONES),
    ("model.fc6_impl", models.FC6_IMPLS),
    ("model.dtype", tuple(steps.DTYPES)),
    ("model.head_init", models.HEAD_INITS),
    ("dataset.name", input_pipeline.DATASETS),
    ("dataset.normalization", ("", *normalization.NORMALIZATIONS)),
    ("dataset.eval_normalization", ("", *normalization.NORMALIZATIONS)),
    ("dataset.image_resize", IMAGE_RESIZES),
    ("optimizer.name", optim.OPTIMIZERS),
    ("optimizer.schedule", optim.SCHEDULES),
    ("loss_reduction", losses.REDUCTIONS),
    ("loss_scale.kind", steps.LOSS_SCALES),
    ("mesh.param_sharding", tuple(sharding.RULE_SETS)),
)
_POSITIVE = (
    "batch_size",
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "model.num_classes",
    "model.base_width",
    "model.fc_width",
    "dataset.eval_batch_size",
    "optimizer.schedule_interval",
    "loss_scale.growth_interval",
)


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def validate_config(config) -> None:
    """Raises ValueError naming the field, its value and what is allowed."""
    for field, allowed in _CHOICES:
        value = _get(config, field)
        if value not in allowed:
            raise ValueError(f"config field {field}={value!r} is not one of {allowed}")
    for field in _POSITIVE:
        value = _get(config, field)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config field {field}={value!r} must be a positive integer")
    if not config.checkpoint_every_minutes >= 0:
        raise ValueError(
            f"config field checkpoint_every_minutes={config.checkpoint_every_minutes!r} must "
            "be >= 0 (0: by steps only)"
        )
    if config.model.at_once and config.model.variant != "fcn8s":
        raise ValueError(
            f"config field model.at_once=True applies to fcn8s, not {config.model.variant!r}"
        )
    if config.model.fc_batch_norm and config.model.backbone != "vgg16_bn":
        raise ValueError(
            "config field model.fc_batch_norm=True needs model.backbone='vgg16_bn', not "
            f"{config.model.backbone!r}"
        )
    aux_weight = config.model.aux_loss_weight
    if aux_weight < 0 or (aux_weight and config.model.backbone not in resnet.BACKBONES):
        raise ValueError(
            f"config field model.aux_loss_weight={aux_weight} must be >= 0, and 0 unless "
            f"model.backbone is one of {resnet.BACKBONES} (not {config.model.backbone!r})"
        )
    if not 0 <= config.model.dropout_rate < 1:
        raise ValueError(
            f"config field model.dropout_rate={config.model.dropout_rate} not in [0, 1)"
        )
    for field in ("dataset.image_size", "dataset.crop_size", "dataset.eval_pad_size"):
        size = tuple(_get(config, field))
        if len(size) != 2 or min(size) < models.MIN_INPUT_SIZE:
            raise ValueError(
                f"config field {field}={size} must be (height, width), each at least "
                f"{models.MIN_INPUT_SIZE} pixels (the FCN minimum)"
            )
    low, high = config.dataset.scale_range
    if not 0 < low <= high:
        raise ValueError(f"config field dataset.scale_range={(low, high)} needs 0 < low <= high")
    for field in ("dataset.scale_base", "inference.resize_to"):
        box = tuple(_get(config, field))
        if box and (len(box) != 2 or min(box) < 1):
            raise ValueError(
                f"config field {field}={box} must be () or (long, short) in pixels, "
                "e.g. (2048, 512)"
            )
    if not 0 < config.dataset.cat_max_ratio <= 1:
        raise ValueError(
            f"config field dataset.cat_max_ratio={config.dataset.cat_max_ratio} not in (0, 1] "
            "(1: any crop)"
        )
    if config.inference.resize_to and not config.dataset.eval_native_size:
        raise ValueError(
            f"config field inference.resize_to={tuple(config.inference.resize_to)} rescales each "
            "image by its own size: set dataset.eval_native_size=True too"
        )
    if not 0 <= config.optimizer.min_learning_rate <= config.optimizer.learning_rate:
        raise ValueError(
            f"config field optimizer.min_learning_rate={config.optimizer.min_learning_rate} "
            f"must lie in [0, optimizer.learning_rate={config.optimizer.learning_rate}]"
        )
    if not config.loss_scale.value > 0:
        raise ValueError(f"config field loss_scale.value={config.loss_scale.value} must be > 0")
    if not 0 < config.model.num_classes <= VOID:
        raise ValueError(
            f"config field model.num_classes={config.model.num_classes}: labels are uint8 "
            f"with {VOID} for void, so 1..{VOID} classes"
        )
    if config.eval_summary_images < 0:
        raise ValueError(
            f"config field eval_summary_images={config.eval_summary_images} must be >= 0"
        )
    scales = tuple(config.inference.scales)
    if not scales or min(scales) <= 0:
        raise ValueError(
            f"config field inference.scales={scales} needs one or more positive scales, "
            "e.g. (1.0,) or (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)"
        )
    if not 0 <= config.inference.window_overlap < 1:
        raise ValueError(
            f"config field inference.window_overlap={config.inference.window_overlap} not in [0, 1)"
        )
    names = tuple(config.dataset.class_names)
    if names and len(names) != config.model.num_classes:
        raise ValueError(
            f"config field dataset.class_names has {len(names)} names but model.num_classes="
            f"{config.model.num_classes}"
        )
    catalogue.check_name(config.init_from)
