"""FCN on a dilated ResNet-101 (torchvision's fcn_resnet101): the recipe of
configs/fcn_resnet50.py, mmsegmentation's FCN R-101-D8 512x512 20k on VOC 2012 aug, field by
field as the table there says (the same differences: ResNetV1c and its two-convolution head
there, torchvision's network here).

    python train.py --config=configs/fcn_resnet101.py --workdir=/tmp/fcn_resnet101 \\
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn_resnet101.py --workdir=/tmp/fcn_resnet101

Expected (mmsegmentation's configs/fcn/README.md, 0.x: FCN R-101-D8, 512x512, 20k): 71.16
mean IoU on VOC 2012 val, with its own network (not run here). It starts from torchvision's
ImageNet ResNet-101 (init_from=torchvision:resnet101, downloaded and cached on first use).
torchvision's COCO weights (torchvision:fcn_resnet101_coco, 63.7 mean IoU on COCO val2017)
segment photos
as there.
"""

from configs import fcn_resnet50


def get_config():
    return fcn_resnet50.get_config("resnet101")
