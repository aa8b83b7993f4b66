"""pytorch-fcn's ports of the Caffe models: whole FCN-32s/16s/8s, and Caffe's VGG-16.

The published FCNs (``fcn32s_from_caffe.pth`` ...) name their layers as the Caffe
nets do (``conv1_1.weight`` ... ``fc7``, ``score_fr``, ``upscore8``), fc6/fc7 as
convolutions, the transposed convolutions without bias. Caffe's ImageNet VGG-16 comes
in those names too, or in torchvision's (pytorch-fcn's ``vgg16_from_caffe.pth``, read
by ``torchvision.backbone``): either way it expects the ``caffe`` normalisation.
"""

from __future__ import annotations

import numpy as np

from fcn_jax import models
from fcn_jax.weights import torch_file
from fcn_jax.weights.layouts import (
    CONVS,
    ConversionError,
    check_shapes,
    conv,
    expect_keys,
    fc6_from_flat,
    transposed,
)

HEADS = {
    "fcn32s": ("score_fr",),
    "fcn16s": ("score_fr", "score_pool4"),
    "fcn8s": ("score_fr", "score_pool4", "score_pool3"),
}
UPSAMPLES = {
    "fcn32s": ("upscore",),
    "fcn16s": ("upscore2", "upscore16"),
    "fcn8s": ("upscore2", "upscore_pool4", "upscore8"),
}


def variant_of(state: dict) -> str | None:
    """fcn32s, fcn16s or fcn8s from a whole FCN's upsampling layers; None for a backbone."""
    present = {k.split(".")[0] for k in state}
    for variant in ("fcn8s", "fcn16s", "fcn32s"):
        if set(UPSAMPLES[variant]) <= present:
            return variant
    return None


def backbone(state: dict) -> dict[str, dict[str, np.ndarray]]:
    """conv1_1 ... fc7 from the Caffe layer names (fc6/fc7 as convolutions or Linear)."""
    params = {n: {"kernel": conv(state[f"{n}.weight"]), "bias": state[f"{n}.bias"]} for n in CONVS}
    fc6 = state["fc6.weight"]
    fc6 = conv(fc6) if fc6.ndim == 4 else fc6_from_flat(fc6.T, "chw")
    fc7 = state["fc7.weight"]
    fc7 = conv(fc7) if fc7.ndim == 4 else fc7.T[None, None]
    params["fc6"] = {"kernel": fc6, "bias": state["fc6.bias"]}
    params["fc7"] = {"kernel": fc7, "bias": state["fc7.bias"]}
    return params


def caffe_backbone(state: dict) -> dict:
    """Variables of Caffe's VGG-16 in its own layer names (a classifier beside it is ignored)."""
    expected = {f"{n}.{p}" for n in (*CONVS, "fc6", "fc7") for p in ("weight", "bias")}
    expect_keys(state, expected, "Caffe VGG-16", ignore=("fc8.", "score", "upscore"))
    return {"params": backbone(state), "batch_stats": {}}


def from_torch_state_dict(state_dict, variant: str, num_classes: int = 21, at_once: bool = False):
    """A whole FCN from the PyTorch layout of the published models -> Flax ``params``."""
    if variant not in HEADS:
        raise ConversionError(f"variant {variant!r} is not one of {tuple(HEADS)}")
    state = torch_file.read_state_dict(state_dict)
    expected = {
        f"{n}.{p}" for n in (*CONVS, "fc6", "fc7", *HEADS[variant]) for p in ("weight", "bias")
    }
    expected |= {f"{n}.weight" for n in UPSAMPLES[variant]}
    present = {k.split(".")[0] for k in state}
    for other, heads in UPSAMPLES.items():  # A checkpoint of another variant says so.
        if other != variant and set(heads) <= present and not set(UPSAMPLES[variant]) <= present:
            raise ConversionError(
                f"these weights are an {other} (layers {sorted(heads)}), not an {variant}"
            )
    expect_keys(state, expected, f"{variant} state dict")
    found = state["score_fr.weight"].shape[0]
    if found != num_classes:
        raise ConversionError(
            f"score_fr has {found} classes but num_classes={num_classes}; convert with "
            f"num_classes={found}, or load only the backbone with load_backbone(...)"
        )
    params = backbone(state)
    for name in HEADS[variant]:
        params[name] = {"kernel": conv(state[f"{name}.weight"]), "bias": state[f"{name}.bias"]}
    for name in UPSAMPLES[variant]:
        params[name] = {"kernel": transposed(state[f"{name}.weight"])}
    check_shapes({"params": params}, model_for(params, variant, num_classes, at_once))
    return params


def model_for(params, variant: str, num_classes: int, at_once: bool = False) -> models.FCN:
    """The caffe-geometry FCN whose shapes ``params`` has (widths read from conv1_1, fc6)."""
    return models.FCN(
        variant=variant,
        num_classes=num_classes,
        geometry="caffe",
        at_once=at_once,
        base_width=int(np.shape(params["conv1_1"]["kernel"])[-1]),
        fc_width=int(np.shape(params["fc6"]["kernel"])[-1]),
    )
