"""Every weights file fcn_jax knows by name: where it is published, its checksum, what it is.

``--config.init_from=torchvision:vgg16`` (or any name below) downloads the file once,
checks it, converts it and caches the result (``weights.cache``). Each entry says where
its URLs and checksums were found. Checksums are the publishers': torchvision's file
names carry the first 8 hex digits of the file's SHA-256 (what ``torch.hub`` checks),
pytorch-fcn's code and Keras' give MD5s; the MindSpore tutorial publishes none.
"""

from __future__ import annotations

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class Weights:
    what: str  # What the weights are, with the publisher's score.
    file: str  # The file's name: in the cache, and on a mirror (FCN_JAX_WEIGHTS_MIRROR).
    urls: tuple[str, ...]  # Where it is published, tried in order.
    # "md5:<hex>" or "sha256:<hex, or its first digits>", of this file as published; the
    # first is the current upload, the others earlier uploads of the same weights.
    checksums: tuple[str, ...]
    layout: str  # How fcn_jax.weights.convert reads it.
    normalization: str  # The input normalisation the weights expect.
    backbone: str  # config.model.backbone of the network they fit.
    found: str  # Where the URLs and checksums come from.
    # BatchNorm after fc6/fc7 and no biases (the MindSpore tutorial's VGG); None for ResNets.
    fc_batch_norm: bool | None = False
    # Whole FCNs: the network their score layers were trained in.
    variant: str | None = None
    num_classes: int | None = None
    geometry: str | None = None
    at_once: bool | None = None


def _drive(file_id: str) -> tuple[str, ...]:
    """A Google Drive file: the direct download (files over 100 MB get a warning page at
    the published ``uc?id=`` address), then the published address."""
    return (
        f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t",
        f"https://drive.google.com/uc?id={file_id}",
    )


_TORCHVISION = "https://download.pytorch.org/models/"
_TORCHVISION_FOUND = (
    "pytorch/vision torchvision/models/{module}, {weights} (torchvision 0.28); the file name "
    "carries the first 8 hex digits of its SHA-256"
)
_PYTORCH_FCN_FOUND = (
    "wkentaro/pytorch-fcn torchfcn/models/{module}, {function} (Google Drive id and MD5 as "
    "re-uploaded in pull request 162, 2021; {earlier})"
)
_MINDSPORE_FOUND = (
    "mindspore-ai/docs tutorials/source_zh_cn/cv/fcn8s.ipynb and source_en/cv/fcn8s.md "
    "({where}); no checksum is published"
)
_CAFFE_FCN = {"layout": "fcn", "normalization": "caffe", "backbone": "vgg16", "geometry": "caffe"}

CATALOGUE = {
    "torchvision:vgg16": Weights(
        what="torchvision's ImageNet VGG-16 (IMAGENET1K_V1, 71.59 top-1)",
        file="vgg16-397923af.pth",
        urls=(_TORCHVISION + "vgg16-397923af.pth",),
        checksums=("sha256:397923af",),
        layout="torchvision",
        normalization="torch",
        backbone="vgg16",
        found=_TORCHVISION_FOUND.format(module="vgg.py", weights="VGG16_Weights.IMAGENET1K_V1"),
    ),
    "torchvision:vgg16_bn": Weights(
        what="torchvision's ImageNet VGG-16 with BatchNorm (IMAGENET1K_V1, 73.36 top-1)",
        file="vgg16_bn-6c64b313.pth",
        urls=(_TORCHVISION + "vgg16_bn-6c64b313.pth",),
        checksums=("sha256:6c64b313",),
        layout="torchvision",
        normalization="torch",
        backbone="vgg16_bn",
        found=_TORCHVISION_FOUND.format(module="vgg.py", weights="VGG16_BN_Weights.IMAGENET1K_V1"),
    ),
    "torchvision:resnet50": Weights(
        what="torchvision's ImageNet ResNet-50 (IMAGENET1K_V1, 76.13 top-1: the backbone "
        "torchvision's fcn_resnet50 trains from)",
        file="resnet50-0676ba61.pth",
        urls=(_TORCHVISION + "resnet50-0676ba61.pth",),
        checksums=("sha256:0676ba61",),
        layout="torchvision",
        normalization="torch",
        backbone="resnet50",
        fc_batch_norm=None,
        found=_TORCHVISION_FOUND.format(
            module="resnet.py", weights="ResNet50_Weights.IMAGENET1K_V1"
        ),
    ),
    "torchvision:resnet101": Weights(
        what="torchvision's ImageNet ResNet-101 (IMAGENET1K_V1, 77.37 top-1: the backbone "
        "torchvision's fcn_resnet101 trains from)",
        file="resnet101-63fe2227.pth",
        urls=(_TORCHVISION + "resnet101-63fe2227.pth",),
        checksums=("sha256:63fe2227",),
        layout="torchvision",
        normalization="torch",
        backbone="resnet101",
        fc_batch_norm=None,
        found=_TORCHVISION_FOUND.format(
            module="resnet.py", weights="ResNet101_Weights.IMAGENET1K_V1"
        ),
    ),
    "torchvision:fcn_resnet50_coco": Weights(
        what="torchvision's fcn_resnet50 with its aux head, trained on a COCO subset with "
        "VOC's 21 classes (60.5 mean IoU on COCO val2017)",
        file="fcn_resnet50_coco-1167a1af.pth",
        urls=(_TORCHVISION + "fcn_resnet50_coco-1167a1af.pth",),
        checksums=("sha256:1167a1af",),
        layout="torchvision",
        normalization="torch",
        backbone="resnet50",
        fc_batch_norm=None,
        variant="fcn_resnet50",
        num_classes=21,
        found=_TORCHVISION_FOUND.format(
            module="segmentation/fcn.py", weights="FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1"
        ),
    ),
    "torchvision:fcn_resnet101_coco": Weights(
        what="torchvision's fcn_resnet101 with its aux head, trained on a COCO subset with "
        "VOC's 21 classes (63.7 mean IoU on COCO val2017)",
        file="fcn_resnet101_coco-7ecb50ca.pth",
        urls=(_TORCHVISION + "fcn_resnet101_coco-7ecb50ca.pth",),
        checksums=("sha256:7ecb50ca",),
        layout="torchvision",
        normalization="torch",
        backbone="resnet101",
        fc_batch_norm=None,
        variant="fcn_resnet101",
        num_classes=21,
        found=_TORCHVISION_FOUND.format(
            module="segmentation/fcn.py", weights="FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1"
        ),
    ),
    "pytorch-fcn:vgg16_from_caffe": Weights(
        what="Caffe's ImageNet VGG-16, ported to PyTorch by pytorch-fcn in torchvision's layer "
        "names; BGR 0-255 inputs",
        file="vgg16_from_caffe.pth",
        urls=_drive("1adDBTGY3GcEB_47dvcibajyzi872RAs3") + _drive("0B9P1L--7Wd2vLTJZMXpIRkVVRFk"),
        checksums=("md5:aa75b158f4181e7f6230029eb96c1b13",),
        layout="caffe",
        normalization="caffe",
        backbone="vgg16",
        found=_PYTORCH_FCN_FOUND.format(
            module="vgg.py",
            function="_get_vgg16_pretrained_model()",
            earlier="the same MD5 at its 2017 id 0B9P1L--7Wd2vLTJZMXpIRkVVRFk",
        ),
    ),
    "pytorch-fcn:fcn32s": Weights(
        what="the reference Caffe FCN-32s (voc-fcn32s) in PyTorch: 63.63 mean IoU on seg11valid",
        file="fcn32s_from_caffe.pth",
        urls=_drive("11k2Q0bvRQgQbT6-jYWeh6nmAsWlSCY3f") + _drive("0B9P1L--7Wd2vM2oya3k0Zlgtekk"),
        checksums=("md5:d3eb467a80e7da0468a20dfcbc13e6c8", "md5:8acf386d722dc3484625964cbe2aba49"),
        **_CAFFE_FCN,
        variant="fcn32s",
        num_classes=21,
        at_once=False,
        found=_PYTORCH_FCN_FOUND.format(
            module="fcn32s.py",
            function="FCN32s.download()",
            earlier="2017: id 0B9P1L--7Wd2vM2oya3k0Zlgtekk, MD5 8acf386d...",
        ),
    ),
    "pytorch-fcn:fcn16s": Weights(
        what="the reference Caffe FCN-16s (voc-fcn16s) in PyTorch: 65.01 mean IoU on seg11valid",
        file="fcn16s_from_caffe.pth",
        urls=_drive("1bctu58B6YH9bu6lBBSBB2rUeGlGhYLoP") + _drive("0B9P1L--7Wd2vVGE3TkRMbWlNRms"),
        checksums=("md5:a2d4035f669f09483b39c9a14a0d6670", "md5:991ea45d30d632a01e5ec48002cac617"),
        **_CAFFE_FCN,
        variant="fcn16s",
        num_classes=21,
        at_once=False,
        found=_PYTORCH_FCN_FOUND.format(
            module="fcn16s.py",
            function="FCN16s.download()",
            earlier="2017: id 0B9P1L--7Wd2vVGE3TkRMbWlNRms, MD5 991ea45d...",
        ),
    ),
    "pytorch-fcn:fcn8s": Weights(
        what="the reference Caffe FCN-8s (voc-fcn8s) in PyTorch: 65.51 mean IoU on seg11valid",
        file="fcn8s_from_caffe.pth",
        urls=_drive("1ieXWyoG68xqoHJPWdyrDyaIaaWlfmUxI") + _drive("0B9P1L--7Wd2vT0FtdThWREhjNkU"),
        checksums=("md5:de93e540ec79512f8770033849c8ae89", "md5:dbd9bbb3829a3184913bccc74373afbb"),
        **_CAFFE_FCN,
        variant="fcn8s",
        num_classes=21,
        at_once=False,
        found=_PYTORCH_FCN_FOUND.format(
            module="fcn8s.py",
            function="FCN8s.download()",
            earlier="2017: id 0B9P1L--7Wd2vT0FtdThWREhjNkU, MD5 dbd9bbb3...",
        ),
    ),
    "pytorch-fcn:fcn8s_at_once": Weights(
        what="the reference Caffe FCN-8s trained at once (voc-fcn8s-atonce) in PyTorch: "
        "65.40 mean IoU on seg11valid",
        file="fcn8s-atonce_from_caffe.pth",
        urls=_drive("0B9P1L--7Wd2vblE1VUIxV1o2d2M"),
        checksums=("md5:bfed4437e941fef58932891217fe6464",),
        **_CAFFE_FCN,
        variant="fcn8s",
        num_classes=21,
        at_once=True,
        found="wkentaro/pytorch-fcn torchfcn/models/fcn8s.py, FCN8sAtOnce.download() (its 2017 "
        "Google Drive id, not re-uploaded in pull request 162: it may no longer be served)",
    ),
    "mindspore:vgg16_bn": Weights(
        what="the MindSpore FCN-8s tutorial's VGG-16 with BatchNorm, in its network's layer "
        "names (fcn8s_vgg16_pretrain.ckpt)",
        file="fcn8s_vgg16_pretrain.ckpt",
        urls=(
            "https://mindspore-website.obs.cn-north-4.myhuaweicloud.com/notebook/datasets/"
            "fcn8s_vgg16_pretrain.ckpt",
        ),
        checksums=(),
        layout="mindspore",
        normalization="mindspore",
        backbone="vgg16_bn",
        fc_batch_norm=True,
        found=_MINDSPORE_FOUND.format(where="load_vgg16"),
    ),
    "mindspore:fcn8s": Weights(
        what="the MindSpore FCN-8s tutorial's trained FCN-8s (FCN8s.ckpt, which its evaluation "
        "and inference use; no score is published with it)",
        file="FCN8s.ckpt",
        urls=(
            "https://mindspore-website.obs.cn-north-4.myhuaweicloud.com/notebook/datasets/"
            "FCN8s.ckpt",
        ),
        checksums=(),
        layout="mindspore",
        normalization="mindspore",
        backbone="vgg16_bn",
        fc_batch_norm=True,
        variant="fcn8s",
        num_classes=21,
        geometry="same",
        at_once=False,
        found=_MINDSPORE_FOUND.format(where="model evaluation"),
    ),
    "keras:vgg16": Weights(
        what="Keras' ImageNet VGG-16 (ported from the VGG authors' Caffe model; BGR 0-255 inputs)",
        file="vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        urls=(
            "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
            "https://github.com/fchollet/deep-learning-models/releases/download/v0.1/"
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
        ),
        checksums=("md5:64373286793e3c8b2b4e3219cbf3544b",),
        layout="keras",
        normalization="caffe",
        backbone="vgg16",
        found="keras-team/keras keras/src/applications/vgg16.py, WEIGHTS_PATH and file_hash "
        "(MD5); older Keras fetched the same MD5 from fchollet/deep-learning-models' v0.1 "
        "release",
    ),
}
_NAME = re.compile(r"[\w.-]+:[\w.-]+")


def check_name(init_from: str) -> None:
    """Refuses an ``init_from`` spelt as a name (``source:name``) that is not in the
    catalogue, listing the names there are; paths that exist are not names."""
    if _NAME.fullmatch(init_from) and init_from not in CATALOGUE and not os.path.exists(init_from):
        get(init_from)


def get(name: str) -> Weights:
    """The entry of ``name``; an unknown name is refused, listing the known ones."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ValueError(
            f"init_from={name!r} is not a name in the weights catalogue; known: "
            f"{', '.join(CATALOGUE)} (or give a weights file, a converted folder or a workdir)"
        ) from None


def meta(name: str) -> dict:
    """What the converted weights of ``name`` record (``converted.describe``), known before
    the file is downloaded: enough to choose the normalisation and check the config."""
    entry = get(name)
    fields = ("variant", "num_classes", "normalization", "geometry", "at_once")
    return {
        **{f: getattr(entry, f) for f in fields},
        "backbone": entry.backbone,
        "fc_batch_norm": entry.fc_batch_norm,
    }
