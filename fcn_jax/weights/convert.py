"""A weights file of any source format -> Flax variables and what they are; the converter CLI.

Layouts: ``fcn`` (a whole published FCN in pytorch-fcn's layout), ``torchvision``
(ImageNet VGG-16/-BN or ResNet-50/101, or a whole fcn_resnet50/101), ``caffe`` (Caffe's
VGG-16 in PyTorch layout, in Caffe's or torchvision's layer names), ``keras`` (a ``.h5``)
and ``mindspore`` (the tutorial's ``.ckpt``: a whole FCN-8s or its VGG-16).

    python -m fcn_jax.convert --layout=torchvision --input=vgg16-397923af.pth --output=DIR
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

from fcn_jax import models, resnet
from fcn_jax.weights import converted, keras, mindspore, pytorch_fcn, torch_file, torchvision
from fcn_jax.weights.layouts import ConversionError, abstract_variables

LAYOUTS = ("torchvision", "caffe", "keras", "mindspore")  # Those of a backbone.
# Which input normalisation each layout's weights expect.
NORMALIZATION = {
    "fcn": "caffe",
    "torchvision": "torch",
    "caffe": "caffe",
    "keras": "caffe",
    "mindspore": "mindspore",
}


def read_backbone(source, layout: str) -> dict:
    """Variables of conv1_1 ... fc7 (with their BatchNorms for a vgg16_bn) of a VGG-16, or of
    a ResNet-50/101, in ``layout``; see ``load_backbone``."""
    if layout == "torchvision":
        return torchvision.backbone(torch_file.read_state_dict(source))
    if layout == "caffe":
        state = torch_file.read_state_dict(source)
        if "features.0.weight" in state:  # e.g. pytorch-fcn's vgg16_from_caffe.pth.
            return torchvision.vgg_backbone(state)
        return pytorch_fcn.caffe_backbone(state)
    if layout == "keras":
        if isinstance(source, dict):
            raise ConversionError("the keras layout reads a .h5 file path")
        return keras.backbone(source)
    if layout == "mindspore":
        return mindspore.variables(source, heads=False)
    raise ConversionError(f"layout {layout!r} is not one of {LAYOUTS}")


def load_backbone(variables, source, layout: str):
    """A copy of ``variables`` with conv1_1 ... fc7 taken from a VGG-16 in ``layout``.

    torchvision weights expect the ``torch`` normalisation; caffe and keras
    weights the ``caffe`` one (BGR, 0-255, minus the mean). Caffe weights come in
    Caffe's layer names (``conv1_1.weight`` ...) or in torchvision's
    (``features.0.weight`` ..., as pytorch-fcn's ``vgg16_from_caffe.pth``): the
    layout, not the key names, says which normalisation they expect; mindspore
    weights the ``mindspore`` one. The backbone must be the model's: a vgg16_bn's
    BatchNorms (torchvision's ``vgg16_bn``, the MindSpore tutorial's VGG-16) come
    along with their convolutions.
    """
    backbone = read_backbone(source, layout)
    layers = tuple(backbone["params"])
    return converted.merge_into(variables, backbone, layers, f"the {layout} backbone")[0]


def backbone_model(variables):
    """An FCN whose backbone has the shapes of ``variables`` (widths, BatchNorms, biases)."""
    params = variables["params"]
    depth = resnet.backbone_of(params)
    if depth:
        return resnet.ResNetFCN(
            backbone=depth, base_width=int(np.shape(params["conv1"]["kernel"])[-1])
        )
    return models.FCN(
        backbone="vgg16_bn" if models.batch_norm_name("conv1_1") in params else "vgg16",
        fc_batch_norm=converted.fc_batch_norm(params),
        base_width=int(np.shape(params["conv1_1"]["kernel"])[-1]),
        fc_width=int(np.shape(params["fc6"]["kernel"])[-1]) if "fc6" in params else 4096,
    )


def convert(source, layout: str, *, variant=None, num_classes=None, at_once: bool = False):
    """(variables, fields for ``converted.save_weights``) of a weights file in ``layout``.

    Whole FCNs give their variant, classes (``num_classes`` checks them; None reads
    them off the file), geometry and at-once setting; a backbone records ``variant``
    and ``num_classes`` as given (None: any). Every shape is checked against the
    network the weights are for.
    """
    if layout in ("fcn", "torchvision", "caffe"):
        source = torch_file.read_state_dict(source)  # Read once.
    elif layout == "mindspore":
        source = mindspore.read(source)
    head = {"geometry": None, "at_once": None}
    if layout == "fcn":  # The published FCNs are caffe-geometry nets.
        variant = variant or pytorch_fcn.variant_of(source)
        if variant is None:
            raise ConversionError("these weights have no FCN upsampling layers: not a whole FCN")
        if num_classes is None and "score_fr.weight" in source:
            num_classes = int(source["score_fr.weight"].shape[0])
        params = pytorch_fcn.from_torch_state_dict(source, variant, num_classes, at_once)
        variables, head = {"params": params}, {"geometry": "caffe", "at_once": at_once}
    elif layout == "mindspore" and mindspore.is_whole(source):  # The trained FCN-8s.
        if num_classes is None:
            num_classes = int(source["score_fr.weight"].shape[0])
        _, variables = mindspore.from_mindspore_checkpoint(source, num_classes)
        variant, head = "fcn8s", {"geometry": "same", "at_once": False}
    elif layout == "torchvision" and torchvision.is_segmentation(source):  # fcn_resnet50/101.
        model, variables = torchvision.from_torchvision_segmentation(source, num_classes)
        num_classes = model.num_classes
    else:
        variables = read_backbone(source, layout)
        zeros = jax.tree.map(
            lambda s: np.zeros(s.shape, s.dtype), abstract_variables(backbone_model(variables))
        )
        converted.merge_into(zeros, variables, source=f"the {layout} backbone")  # Every shape.
    depth = resnet.backbone_of(variables["params"])
    if depth and variant is not None:  # ResNet FCNs are torchvision's models.
        variant = f"fcn_{depth}"
    fields = {
        "variant": variant,
        "num_classes": num_classes,
        "normalization": NORMALIZATION[layout],
        **head,
    }
    return variables, fields


def detect(path) -> tuple[str, object]:
    """(layout, the file's contents or path) of a weights file, from its suffix and its keys;
    refused, naming the choices, where the keys cannot tell."""
    suffix = pathlib.Path(path).suffix.lower()
    if suffix == ".ckpt":
        return "mindspore", path
    if suffix in (".h5", ".hdf5"):
        return "keras", path
    state = torch_file.read_state_dict(path)
    if torchvision.is_segmentation(state) or any(
        k in state for k in ("layer1.0.conv1.weight", "features.1.running_mean")
    ):
        return "torchvision", state
    if "features.0.weight" in state:
        raise ConversionError(
            f"{path} holds a VGG-16 in torchvision's layer names, which both torchvision's "
            "ImageNet weights (torch normalisation) and Caffe ports such as pytorch-fcn's "
            "vgg16_from_caffe.pth (caffe normalisation) use, and its checksum is not in the "
            "catalogue: convert it with `python -m fcn_jax.convert --layout=torchvision` or "
            "`--layout=caffe` and give the output folder"
        )
    variant = pytorch_fcn.variant_of(state)
    if variant == "fcn8s":
        raise ConversionError(
            f"{path} holds an FCN-8s in pytorch-fcn's layout, whose layers are the same trained "
            "staged or at once, and its checksum is not in the catalogue: convert it with "
            "`python -m fcn_jax.convert --layout=fcn --variant=fcn8s` (add --at_once for one "
            "trained at once) and give the output folder"
        )
    if variant or "conv1_1.weight" in state:
        return ("fcn" if variant else "caffe"), state
    raise ConversionError(
        f"{path} is not weights of a network fcn_jax knows (its first keys: {sorted(state)[:4]}): "
        "a .pth of torchvision or pytorch-fcn, a MindSpore .ckpt or a Keras .h5"
    )


def main(argv):
    from absl import flags

    flags_ = flags.FLAGS
    if len(argv) > 1:
        raise ConversionError(f"unexpected arguments {argv[1:]}")
    variables, fields = convert(
        flags_.input,
        flags_.layout,
        variant=flags_.variant,
        num_classes=flags_.num_classes,
        at_once=flags_.at_once,
    )
    converted.save_weights(flags_.output, variables, **fields)
    print(
        f"Wrote {sorted(variables['params'])} to {flags_.output} ({fields['normalization']} inputs)"
    )


def run() -> None:
    """``python -m fcn_jax.convert``: one weights file into a folder for --config.init_from."""
    from absl import app, flags

    flags.DEFINE_string(
        "input", None, "Weights file (.pth/.pt state dict, Keras .h5 or MindSpore .ckpt)."
    )  # torchvision: vgg16, vgg16_bn, resnet50/101 (backbones) or fcn_resnet50/101 (whole).
    flags.DEFINE_enum("layout", "fcn", ("fcn", *LAYOUTS), "fcn = a whole pytorch-fcn model.")
    flags.DEFINE_enum("variant", "fcn8s", models.VARIANTS, "FCN variant.")
    flags.DEFINE_integer("num_classes", 21, "Classes of the model.")
    flags.DEFINE_bool("at_once", False, "FCN-8s at-once.")
    flags.DEFINE_string("output", None, "New directory for --config.init_from.")
    flags.mark_flags_as_required(["input", "output"])

    def guarded(argv):
        try:
            main(argv)
        except (ConversionError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")

    app.run(guarded)


if __name__ == "__main__":
    run()
