"""Every config file loads, describes a valid model, and carries a runbook docstring."""

import importlib

import jax
import jax.numpy as jnp
import pytest

from fcn_jax import models, steps
from fcn_jax.config_lib import validate_config
from tests.test_models import PARAM_COUNTS, TORCHVISION_FCN_RESNET_COUNTS

CONFIGS = ("default", "demo", "fcn32s", "fcn16s", "fcn8s", "fcn_resnet50", "fcn_resnet101")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model(name):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    model = steps.build_model(config)
    variables = jax.eval_shape(
        lambda k: model.init(k, jnp.zeros((1, 64, 64, 3)), train=False), jax.random.key(0)
    )
    count = models.param_count(variables["params"])
    if name in PARAM_COUNTS:
        assert config.model.variant == name
        assert count == PARAM_COUNTS[name]
    if name != "default":
        assert "python train.py --config=configs/" in module.__doc__
    for sentence in module.__doc__.split("Expected")[1:]:  # A figure only with its source.
        assert "README" in sentence.split(".\n")[0], sentence[:200]
    if name in ("fcn8s", "fcn_resnet50"):  # Recipes against their reference, field by field.
        assert module.__doc__.count("same?") == (2 if name == "fcn8s" else 1)


def test_demo_config_is_valid_as_shipped():
    from configs import demo

    validate_config(demo.get_config())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("variant", "fcn4s", "model.variant='fcn4s' is not one of"),
        ("geometry", "full", "model.geometry='full' is not one of"),
        ("dtype", "float64", "model.dtype='float64' is not one of"),
        ("head_init", "zeros", "model.head_init='zeros' is not one of"),
        ("num_classes", 0, "model.num_classes=0 must be a positive integer"),
        ("backbone", "resnet18", "model.backbone='resnet18' is not one of"),
        ("aux_loss_weight", 0.4, "model.aux_loss_weight=0.4 must be >= 0, and 0 unless"),
    ],
)
def test_validation_names_the_bad_field(field, value, message):
    from configs import demo

    config = demo.get_config()
    config.model[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_config(config)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_paper_protocol_is_one_config_argument(name):
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    values(["prog", f"--config=configs/{name}.py:paper"])
    assert (values.config.dataset.train_split, values.config.dataset.eval_split) == (
        "sbd_train",
        "seg11valid",
    )
    values(["prog", f"--config=configs/{name}.py"])
    assert (values.config.dataset.train_split, values.config.dataset.eval_split) == (
        "train_aug",
        "voc_val",
    )


def test_unknown_option_is_refused():
    from configs import fcn8s

    with pytest.raises(ValueError, match=r"options \['papers'\] are not among"):
        fcn8s.get_config("papers")


@pytest.mark.parametrize(
    "name, options, lr, steps",
    [
        # The reference solver.prototxt files: voc-fcn32s, voc-fcn16s, voc-fcn8s, -atonce.
        ("fcn32s", "", 1e-10, 100_000),
        ("fcn16s", "", 1e-12, 100_000),
        ("fcn8s", "", 1e-14, 100_000),
        ("fcn8s", ",at_once", 1e-10, 300_000),
    ],
)
def test_caffe_recipe(name, options, lr, steps):
    config = importlib.import_module(f"configs.{name}").get_config("paper,caffe" + options)
    assert (config.optimizer.learning_rate, config.num_train_steps) == (lr, steps)
    assert config.model.at_once == bool(options)
    assert (config.optimizer.momentum, config.batch_size, config.loss_reduction) == (0.99, 1, "sum")
    assert (config.optimizer.bias_lr_mult, config.optimizer.weight_decay) == (2.0, 5e-4)
    assert (config.model.geometry, config.dataset.eval_split) == ("caffe", "seg11valid")
    validate_config(config)


def test_at_once_is_an_fcn8s_recipe():
    from configs import fcn8s, fcn16s

    assert fcn8s.get_config("at_once").model.at_once
    assert fcn8s.get_config("at_once").optimizer.learning_rate == 0.01  # Batched recipe.
    with pytest.raises(ValueError, match="at_once is an FCN-8s recipe, not one for fcn16s"):
        fcn16s.get_config("at_once")


def test_mindspore_recipe_is_the_tutorials_network_and_the_model_zoos_recipe():
    from configs import fcn8s, fcn16s
    from tests.test_batch_norm import MINDSPORE_FCN8S_STATISTICS, MINDSPORE_FCN8S_TRAINABLE

    config = fcn8s.get_config("mindspore")
    validate_config(config)
    variables = jax.eval_shape(
        lambda k: steps.build_model(config).init(k, jnp.zeros((1, 64, 64, 3)), train=False),
        jax.random.key(0),
    )
    assert models.param_count(variables["params"]) == MINDSPORE_FCN8S_TRAINABLE
    assert models.param_count(variables["batch_stats"]) == MINDSPORE_FCN8S_STATISTICS
    assert config.dataset.normalization == "mindspore"
    assert (config.dataset.crop_size, config.dataset.scale_range, config.dataset.flip) == (
        (512, 512),
        (0.5, 2.0),
        True,
    )
    opt = config.optimizer
    assert (opt.name, opt.momentum, opt.learning_rate, opt.schedule) == (
        "sgd",
        0.9,
        0.015,
        "cosine",
    )
    # 10,582 // 32 = 330 steps an epoch (drop_remainder), 500 epochs; the rate changes
    # once an epoch (CosineAnnealingLR); decay on the kernels, not on gamma and beta.
    assert (opt.weight_decay, config.batch_size, config.num_train_steps) == (1e-4, 32, 165_000)
    assert (opt.schedule_interval, opt.min_learning_rate, opt.decay_all_parameters) == (
        330,
        0.0,
        False,
    )
    assert config.model.dropout_rate == 0 and not config.model.freeze_upsampling
    assert (config.model.head_init, config.model.dtype, config.dataset.image_resize) == (
        "xavier_uniform",
        "float16",
        "bicubic",
    )
    assert (config.loss_scale.kind, config.loss_scale.value) == ("static", 1024.0)
    # The zoo's eval.py: PIL RGB normalised by its BGR constants, long side 512, padded.
    assert (config.dataset.eval_normalization, config.dataset.eval_native_size) == (
        "mindspore_rgb",
        True,
    )
    assert (config.inference.resize_to, config.inference.pad_resized) == ((512, 512), True)
    with pytest.raises(ValueError, match="mindspore is an FCN-8s recipe, not one for fcn16s"):
        fcn16s.get_config("mindspore")
    with pytest.raises(ValueError, match="mindspore and caffe are two different recipes"):
        fcn8s.get_config("mindspore,caffe")


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101"])
def test_resnet_recipes_are_mmsegmentations_on_torchvisions_networks(backbone):
    config = importlib.import_module(f"configs.fcn_{backbone}").get_config()
    validate_config(config)
    variables = jax.eval_shape(
        lambda k: steps.build_model(config).init(k, jnp.zeros((1, 64, 64, 3)), train=False),
        jax.random.key(0),
    )
    assert models.param_count(variables["params"]) == TORCHVISION_FCN_RESNET_COUNTS[backbone, True]
    assert (config.model.backbone, config.model.aux_loss_weight) == (backbone, 0.4)
    data = config.dataset
    assert (data.train_split, data.eval_split, data.normalization) == (
        "train_aug",
        "voc_val",
        "torch",
    )
    assert (data.crop_size, data.scale_range, data.flip) == ((512, 512), (0.5, 2.0), True)
    # Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)), RandomCrop(cat_max_ratio=0.75),
    # PhotoMetricDistortion; test Resize to fit (2048, 512).
    assert (data.scale_base, data.cat_max_ratio, data.photometric_distortion) == (
        (2048, 512),
        0.75,
        True,
    )
    assert (config.inference.resize_to, data.eval_native_size) == ((2048, 512), True)
    assert (config.loss_reduction, config.model.dtype) == ("mean_all_pixels", "float32")
    opt = config.optimizer
    assert (opt.name, opt.momentum, opt.learning_rate, opt.schedule, opt.poly_power) == (
        "sgd",
        0.9,
        0.01,
        "poly",
        0.9,
    )
    assert (opt.weight_decay, config.batch_size, config.num_train_steps) == (5e-4, 16, 20_000)
    assert (opt.decay_all_parameters, opt.min_learning_rate) == (True, 1e-4)
    config.model.aux_loss_weight = -0.1
    with pytest.raises(ValueError, match=r"model.aux_loss_weight=-0.1 must be >= 0"):
        validate_config(config)


@pytest.mark.parametrize(
    "name, options, weights, normalization",
    [
        ("fcn32s", "", "torchvision:vgg16", "torch"),
        ("fcn16s", "paper", "torchvision:vgg16", "torch"),
        ("fcn8s", "at_once", "torchvision:vgg16", "torch"),
        ("fcn32s", "paper,caffe", "pytorch-fcn:vgg16_from_caffe", "caffe"),
        ("fcn8s", "paper,caffe,at_once", "pytorch-fcn:vgg16_from_caffe", "caffe"),
        ("fcn8s", "mindspore", "mindspore:vgg16_bn", "mindspore"),
        ("fcn_resnet50", None, "torchvision:resnet50", "torch"),
        ("fcn_resnet101", None, "torchvision:resnet101", "torch"),
        ("demo", None, "", "torch"),  # The quick start stays offline.
        ("default", None, "", "caffe"),
    ],
)
def test_each_recipe_starts_from_its_own_backbone(name, options, weights, normalization):
    """What the recipe names fits its network and sets its input normalisation, known
    without a download (the suite's empty mirror would fail one)."""
    from fcn_jax import init_from

    module = importlib.import_module(f"configs.{name}")
    config = module.get_config() if options is None else module.get_config(options)
    assert config.init_from == weights
    init_from.check_before_download(config, whole_model=False)
    init_from.resolve_normalization(config, None, None)
    assert config.dataset.normalization == normalization


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss_scale.kind", "auto", "loss_scale.kind='auto' is not one of"),
        ("loss_scale.value", 0.0, "loss_scale.value=0.0 must be > 0"),
        ("loss_scale.growth_interval", 0, "loss_scale.growth_interval=0 must be a positive"),
        ("loss_reduction", "mean_valid", "loss_reduction='mean_valid' is not one of"),
        ("dataset.cat_max_ratio", 1.5, "dataset.cat_max_ratio=1.5 not in (0, 1]"),
        ("dataset.scale_base", (512,), "dataset.scale_base=(512,) must be () or (long, short)"),
        ("dataset.image_resize", "area", "dataset.image_resize='area' is not one of"),
        ("dataset.eval_normalization", "bgr", "dataset.eval_normalization='bgr' is not one of"),
        ("inference.resize_to", (2048, 512), "set dataset.eval_native_size=True too"),
        ("optimizer.min_learning_rate", 0.1, "optimizer.min_learning_rate=0.1 must lie in"),
        ("optimizer.schedule_interval", 0, "optimizer.schedule_interval=0 must be a positive"),
    ],
)
def test_validation_names_the_bad_recipe_field(field, value, message):
    from configs import demo

    config = demo.get_config()
    section, leaf = field.rsplit(".", 1) if "." in field else (None, field)
    (config[section] if section else config)[leaf] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(config)
