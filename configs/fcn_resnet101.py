"""FCN on a dilated ResNet-101 (torchvision's fcn_resnet101): the recipe of
configs/fcn_resnet50.py (mmsegmentation's, VOC 2012 train_aug, 20k steps of 16).

    python train.py --config=configs/fcn_resnet101.py --workdir=/tmp/fcn_resnet101 \\
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn_resnet101.py --workdir=/tmp/fcn_resnet101

Expected (mmsegmentation's FCN R-101-D8, 512x512, 20k: 71.2 mean IoU on VOC 2012 val;
not run here yet; its network differs as configs/fcn_resnet50.py says). It starts from
torchvision's ImageNet ResNet-101 (init_from=torchvision:resnet101); torchvision's COCO
weights (torchvision:fcn_resnet101_coco, 63.7 mean IoU on COCO val2017) segment photos
as there.
"""

from configs import fcn_resnet50


def get_config():
    return fcn_resnet50.get_config("resnet101")
