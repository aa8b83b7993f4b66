"""FCN-32s on PASCAL VOC 2012 + SBD: the recipes and options of configs/fcn8s.py.

    python train.py --config=configs/fcn32s.py --workdir=/tmp/fcn32s \
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn32s.py --workdir=/tmp/fcn32s

It starts from ImageNet VGG-16 (torchvision's; with `:caffe`, Caffe's), downloaded and
cached on first use (README: Pretrained weights); --config.init_from="" trains from scratch.
Expected, with `:paper,caffe`: 63.6 mean IoU on seg11valid (fcn.berkeleyvision.org's
README; pytorch-fcn's conversion of the Caffe model: 63.63). The batched recipe is
fcn_jax's own, without a measured figure. The coarse stride-32 output blurs boundaries,
which the 16s and 8s skips recover. The recipes against their reference, field by field:
configs/fcn8s.py.
"""

from configs import fcn8s


def get_config(options: str = ""):
    """options: comma-separated, from "paper" (sbd_train -> seg11valid) and "caffe"."""
    return fcn8s.get_config(options, variant="fcn32s")
