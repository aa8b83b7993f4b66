"""torchvision's weights: ImageNet VGG-16 and VGG-16-BN, ImageNet ResNet-50/101, and
the whole fcn_resnet50/101.

VGG's convolutions are ``features.<i>`` (a vgg16_bn's BatchNorm at the next index),
fc6 and fc7 are ``classifier.0`` and ``classifier.3`` as Linear layers (fc6
flattened from (C, 7, 7)); the ResNet FCN layers are named after torchvision's
modules (``resnet.torchvision_names``). All expect the ``torch`` normalisation.
"""

from __future__ import annotations

from fcn_jax import models, resnet
from fcn_jax.weights import torch_file
from fcn_jax.weights.layouts import (
    CONVS,
    TORCH_BN_KEYS,
    ConversionError,
    check_shapes,
    conv,
    expect_keys,
    fc6_from_flat,
    torch_batch_norm,
    width,
)

# vgg16().features indices of the 13 convolutions.
VGG16_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# vgg16_bn().features: each convolution is followed by its BatchNorm at the next index.
VGG16_BN_FEATURES = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)


def vgg_backbone(state: dict) -> dict:
    """Variables of conv1_1 ... fc7 from torchvision's vgg16, or vgg16_bn (BatchNorms)."""
    bn = "features.1.running_mean" in state
    indices = VGG16_BN_FEATURES if bn else VGG16_FEATURES
    expected = {f"features.{i}.{p}" for i in indices for p in ("weight", "bias")}
    if bn:
        expected |= {f"features.{i + 1}.{p}" for i in indices for p in TORCH_BN_KEYS}
    expected |= {f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    ignore = ("classifier.6.", *(f"features.{i + 1}.num_batches_tracked" for i in indices))
    expect_keys(state, expected, f"torchvision VGG-16{'-BN' if bn else ''}", ignore=ignore)
    params, batch_stats = {}, {}
    for name, i in zip(CONVS, indices):
        params[name] = {
            "kernel": conv(state[f"features.{i}.weight"]),
            "bias": state[f"features.{i}.bias"],
        }
        if bn:
            norm = torch_batch_norm(state, f"features.{i + 1}")
            params[models.batch_norm_name(name)], batch_stats[models.batch_norm_name(name)] = norm
    params["fc6"] = {
        "kernel": fc6_from_flat(state["classifier.0.weight"].T, "chw"),
        "bias": state["classifier.0.bias"],
    }
    params["fc7"] = {
        "kernel": state["classifier.3.weight"].T[None, None],
        "bias": state["classifier.3.bias"],
    }
    return {"params": params, "batch_stats": batch_stats}


def backbone(state: dict) -> dict:
    """Variables of an ImageNet VGG-16(-BN) or ResNet-50/101 (its classifier ignored)."""
    if "layer1.0.conv1.weight" in state:
        return resnet_backbone(state)
    return vgg_backbone(state)


def _resnet_depth(state: dict, prefix: str, what: str) -> str:
    """resnet50 or resnet101, from the number of layer3 blocks (6 or 23) in ``state``."""
    blocks = {k[len(prefix) :].split(".")[1] for k in state if k.startswith(f"{prefix}layer3.")}
    for depth, counts in resnet.BLOCKS.items():
        if len(blocks) == counts[2]:
            return depth
    counts = {b: c[2] for b, c in resnet.BLOCKS.items()}
    raise ConversionError(
        f"{what}: {len(blocks)} {prefix}layer3 blocks, not those of a ResNet {counts}"
    )


def _resnet_variables(state: dict, names: dict[str, str], what: str, ignore=()) -> dict:
    """Variables of the ResNet FCN layers ``names`` (ours -> torchvision's module) from a
    torchvision state dict; every other key is refused unless ``ignore``d."""
    bn_suffix = models.batch_norm_name("")
    norms = {n: m for n, m in names.items() if n.endswith(bn_suffix)}
    expected = {f"{m}.{p}" for m in norms.values() for p in TORCH_BN_KEYS}
    expected |= {f"{m}.weight" for n, m in names.items() if n not in norms}
    expected |= {f"{m}.bias" for n, m in names.items() if n.endswith("_score")}
    ignore = (*ignore, *(f"{m}.num_batches_tracked" for m in norms.values()))
    expect_keys(state, expected, what, ignore=ignore)
    params, batch_stats = {}, {}
    for name, module in names.items():
        if name in norms:
            params[name], batch_stats[name] = torch_batch_norm(state, module)
        else:
            params[name] = {"kernel": conv(state[f"{module}.weight"])}
            if f"{module}.bias" in expected:
                params[name]["bias"] = state[f"{module}.bias"]
    return {"params": params, "batch_stats": batch_stats}


def resnet_backbone(state: dict) -> dict:
    """Variables of the dilated ResNet from torchvision's ImageNet resnet50/101 (fc ignored)."""
    what = "torchvision ImageNet ResNet"
    depth = _resnet_depth(state, "", what)
    names = {
        ours: theirs.removeprefix("backbone.")
        for ours, theirs in resnet.torchvision_names(depth, aux_head=False).items()
        if theirs.startswith("backbone.")
    }
    return _resnet_variables(state, names, f"{what} ({depth})", ignore=("fc.",))


def from_torchvision_segmentation(state_dict, num_classes: int | None = None):
    """(model, variables) of torchvision's fcn_resnet50/101 from its state dict (or file).

    The depth comes from the number of layer3 blocks, the auxiliary head from the
    ``aux_classifier.*`` keys, the classes from the classifier. ``model.apply(variables,
    images_nhwc, train=False)`` gives torchvision's eval outputs, ``{"out", "aux"}`` (only
    "out" without an auxiliary head), for inputs in the ``torch`` normalisation.
    """
    state = torch_file.read_state_dict(state_dict)
    what = "torchvision FCN-ResNet state dict"
    depth = _resnet_depth(state, "backbone.", what)
    aux_head = any(k.startswith("aux_classifier.") for k in state)
    names = resnet.torchvision_names(depth, aux_head)
    variables = _resnet_variables(state, names, f"{what} (fcn_{depth})")
    params = variables["params"]
    found = width(params, "classifier_score")
    if num_classes is not None and found != num_classes:
        raise ConversionError(
            f"classifier.4 has {found} classes but num_classes={num_classes}; convert with "
            f"num_classes={found}, or take only the backbone (--config.init_layers)"
        )
    model = resnet.ResNetFCN(
        backbone=depth,
        num_classes=found,
        aux_head=aux_head,
        base_width=width(params, "conv1"),
    )
    check_shapes(variables, model)
    return model, variables


def is_segmentation(state: dict) -> bool:
    """A whole fcn_resnet50/101 (its backbone under ``backbone.``), not an ImageNet net."""
    return "backbone.conv1.weight" in state
