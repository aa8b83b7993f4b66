"""The MindSpore FCN-8s tutorial's network: its trained FCN-8s and its VGG-16 checkpoint.

VGG-16 with a BatchNorm after every convolution, fc6 and fc7 included, no biases,
"same" padding, learned upsampling; stages ``conv<s>`` of [conv, BatchNorm, ReLU] * n,
fc6/fc7 as ``conv6``/``conv7``. It expects the ``mindspore`` normalisation (BGR,
ImageNet mean/std in 0-255). The ``.ckpt`` is read without MindSpore (``mindspore_file``).
"""

from __future__ import annotations

import numpy as np

from fcn_jax import models
from fcn_jax.weights import mindspore_file
from fcn_jax.weights.layouts import ConversionError, check_shapes, conv, expect_keys, transposed

SCORES = ("score_fr", "score_pool4", "score_pool3")
UPSAMPLES = ("upscore2", "upscore_pool4", "upscore8")
_BN = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
# What MindSpore's ModelCheckpoint saves beside the network: optimizer state, counters.
_TRAINING_STATE = (
    "moments.",
    "accum.",
    "global_step",
    "learning_rate",
    "momentum",
    "scale_sense",
    "current_iterator_step",
    "last_overflow_iterator_step",
    "epoch_num",
    "step_num",
    "beta1_power",
    "beta2_power",
)


def _backbone_layers():
    """(our layer, MindSpore convolution prefix, its BatchNorm's prefix), conv1_1 ... fc7."""
    for stage, (names, _) in enumerate(models.VGG16_STAGES, start=1):
        for i, name in enumerate(names):  # Each stage is [conv, BatchNorm, ReLU] * n.
            yield name, f"conv{stage}.{3 * i}", f"conv{stage}.{3 * i + 1}"
    yield "fc6", "conv6.0", "conv6.1"
    yield "fc7", "conv7.0", "conv7.1"


def read(source) -> dict[str, np.ndarray]:
    """{name: float32 array} of the network in a ``.ckpt`` path (or such a dict already read)."""
    if isinstance(source, dict):
        return source
    try:
        tensors = mindspore_file.read(source)
    except OSError as e:
        raise ConversionError(f"cannot read {source}: {e}") from e
    except mindspore_file.FormatError as e:
        raise ConversionError(f"{source} is not a MindSpore checkpoint (.ckpt): {e}") from e
    return {
        k: np.asarray(v, np.float32)
        for k, v in tensors.items()
        if not k.startswith(_TRAINING_STATE)
    }


def is_whole(tensors: dict) -> bool:
    """A trained FCN-8s, not the VGG-16 to start one from."""
    return "score_fr.weight" in tensors


def variables(source, heads: bool) -> dict:
    """Variables of the tutorial's network (or, without ``heads``, of its VGG-16 backbone:
    fc6/fc7 when the file has them) from a ``.ckpt``."""
    tensors = read(source)
    layers = list(_backbone_layers())
    if not heads and not any(k.startswith(("conv6.", "conv7.")) for k in tensors):
        layers = layers[:-2]  # A VGG-16 of convolutions only.
    expected = set()
    for _, conv_name, bn in layers:
        expected |= {f"{conv_name}.weight", *(f"{bn}.{k}" for k in _BN)}
    head_names = (*SCORES, *UPSAMPLES)
    if heads:
        expected |= {f"{n}.weight" for n in head_names}
    ignore = () if heads else tuple(f"{n}." for n in head_names)
    expect_keys(tensors, expected, f"MindSpore FCN-8s checkpoint {source}", ignore=ignore)
    params, batch_stats = {}, {}
    for layer, conv_name, bn in layers:
        params[layer] = {"kernel": conv(tensors[f"{conv_name}.weight"])}
        norm = models.batch_norm_name(layer)
        values = {ours: tensors[f"{bn}.{theirs}"] for theirs, ours in _BN.items()}
        params[norm] = {k: values[k] for k in ("scale", "bias")}
        batch_stats[norm] = {k: values[k] for k in ("mean", "var")}
    if heads:
        for name in SCORES:
            params[name] = {"kernel": conv(tensors[f"{name}.weight"])}
        for name in UPSAMPLES:
            params[name] = {"kernel": transposed(tensors[f"{name}.weight"])}
    return {"params": params, "batch_stats": batch_stats}


def mindspore_model(variables, num_classes: int = 21) -> models.FCN:
    """The MindSpore tutorial's FCN-8s, of the widths ``variables`` have: VGG-16 with a
    BatchNorm after every convolution, fc6 and fc7 included, no biases, no dropout,
    "same" padding (the `same` geometry)."""
    params = variables["params"]
    return models.FCN(
        variant="fcn8s",
        num_classes=num_classes,
        geometry="same",
        backbone="vgg16_bn",
        fc_batch_norm=True,
        dropout_rate=0.0,
        base_width=int(np.shape(params["conv1_1"]["kernel"])[-1]),
        fc_width=int(np.shape(params["fc6"]["kernel"])[-1]),
    )


def from_mindspore_checkpoint(path, num_classes: int = 21):
    """(model, variables) of the MindSpore FCN-8s tutorial's network from its ``.ckpt``
    (a path, or the {name: array} dict of one).

    ``model.apply(variables, images_nhwc, train=False)`` gives the tutorial network's
    logits for inputs normalised as it does (``normalization.normalize(x,
    "mindspore")``), on images whose sides are multiples of 32, the sizes the
    tutorial's own network accepts (fcn_jax takes any size). MindSpore need not be
    installed: the file is read as the protobuf it is.
    """
    found_variables = variables(path, heads=True)
    found = found_variables["params"]["score_fr"]["kernel"].shape[-1]
    if found != num_classes:
        raise ConversionError(
            f"score_fr has {found} classes but num_classes={num_classes}; convert with "
            f"num_classes={found}, or load only the backbone (--config.init_layers)"
        )
    model = mindspore_model(found_variables, num_classes)
    check_shapes(found_variables, model)
    return model, found_variables
