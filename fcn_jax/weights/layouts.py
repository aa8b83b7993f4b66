"""How tensors map between frameworks, and the checks every source format shares.

PyTorch convolutions are (out, in, kH, kW), Flax's (kH, kW, in, out). PyTorch, Caffe
and MindSpore transposed convolutions are (in, out, kH, kW) with scatter semantics,
which ``models.Upsample`` shares, so they need a transpose and no spatial flip.
VGG's fc6 as a Linear layer is flattened from (C, 7, 7) in torchvision and from
(7, 7, C) in Keras.

Weights travel as Flax variables, ``{"params": ..., "batch_stats": ...}``: a
BatchNorm after ``layer`` is ``<layer>_bn``, its scale and offset in ``params``
and its running mean and variance in ``batch_stats``.
"""

from __future__ import annotations

import jax
import numpy as np

from fcn_jax import models

# VGG-16's convolutions, conv1_1 ... conv5_3.
CONVS = tuple(n for names, _ in models.VGG16_STAGES for n in names)
TORCH_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class ConversionError(ValueError):
    """Weights that do not fit the requested model; nothing is written."""


def conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch (out, in, kH, kW) -> Flax (kH, kW, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def transposed(weight: np.ndarray) -> np.ndarray:
    """PyTorch/MindSpore transposed convolution (in, out, kH, kW) -> (kH, kW, in, out), no flip."""
    return weight.transpose(2, 3, 0, 1)


def fc6_from_flat(weight: np.ndarray, order: str) -> np.ndarray:
    """A (in, out) matrix over flattened 7x7 patches -> a (7, 7, C, out) kernel."""
    features, out = weight.shape
    if features % 49:
        raise ConversionError(f"fc6 has {features} inputs, not a multiple of 7*7")
    c = features // 49
    if order == "chw":  # torchvision / PyTorch flatten
        return weight.reshape(c, 7, 7, out).transpose(1, 2, 0, 3)
    return weight.reshape(7, 7, c, out)  # Keras (channels last) flatten


def torch_batch_norm(state: dict, prefix: str) -> tuple[dict, dict]:
    """(params, batch_stats) of a PyTorch BatchNorm2d."""
    return (
        {"scale": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]},
        {"mean": state[f"{prefix}.running_mean"], "var": state[f"{prefix}.running_var"]},
    )


def expect_keys(state: dict, expected: set[str], what: str, ignore=()) -> None:
    """Refuses a state dict that lacks any of ``expected`` or has others (unless ``ignore``d)."""
    missing = sorted(expected - set(state))
    unexpected = sorted(k for k in set(state) - expected if not k.startswith(tuple(ignore)))
    if missing:
        raise ConversionError(f"{what}: missing keys {missing}")
    if unexpected:
        raise ConversionError(f"{what}: unexpected keys {unexpected}")


def width(params, layer: str) -> int:
    """Output channels of ``layer``'s kernel."""
    return int(np.shape(params[layer]["kernel"])[-1])


def abstract_variables(model) -> dict:
    """The model's variables as ShapeDtypeStructs (``batch_stats`` is {} without BatchNorm)."""
    images = jax.ShapeDtypeStruct((1, models.MIN_INPUT_SIZE, models.MIN_INPUT_SIZE, 3), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def check_shapes(variables, model) -> None:
    """Refuses variables that lack a layer of ``model`` or have another shape, naming it."""
    for collection, layers in abstract_variables(model).items():
        for name, layer in layers.items():
            if name not in variables.get(collection, {}):
                raise ConversionError(f"layer {name} is missing")
            for key, spec in layer.items():
                if key not in variables[collection][name]:
                    raise ConversionError(f"layer {name} lacks its {key}")
                got = np.shape(variables[collection][name][key])
                if got != spec.shape:
                    raise ConversionError(
                        f"layer {name} {key}: the weights have shape {got}, "
                        f"the model needs {spec.shape}"
                    )
