"""FCN-32s on PASCAL VOC 2012 + SBD: the recipes and options of configs/fcn8s.py.

    python train.py --config=configs/fcn32s.py --workdir=/tmp/fcn32s \
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn32s.py --workdir=/tmp/fcn32s

It starts from ImageNet VGG-16 (torchvision's; with `:caffe`, Caffe's), downloaded and
cached on first use (README: Pretrained weights); --config.init_from="" trains from scratch.
Expected: about 62-63 mean IoU on VOC 2012 val with the batched recipe; with
`:paper,caffe` the paper reports 63.6 on seg11valid (converted Caffe model: 63.63).
The coarse stride-32 output blurs boundaries, which the 16s and 8s skips recover.
"""

from configs import fcn8s


def get_config(options: str = ""):
    """options: comma-separated, from "paper" (sbd_train -> seg11valid) and "caffe"."""
    return fcn8s.get_config(options, variant="fcn32s")
