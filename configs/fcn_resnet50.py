"""FCN on a dilated ResNet-50 (torchvision's fcn_resnet50) with mmsegmentation's VOC recipe.

train_aug -> VOC 2012 val, 512x512 crops (scale 0.5-2, flip), batch 16, SGD momentum
0.9, learning rate 0.01 with poly decay (power 0.9), weight decay 5e-4, 20k steps,
auxiliary head on layer3 weighted 0.4, the `torch` normalisation (ImageNet mean/std),
bfloat16 compute, from torchvision's ImageNet ResNet-50 (init_from=torchvision:resnet50,
downloaded and cached on first use):

    python train.py --config=configs/fcn_resnet50.py --workdir=/tmp/fcn_resnet50 \\
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn_resnet50.py --workdir=/tmp/fcn_resnet50

Expected (mmsegmentation's FCN R-50-D8, 512x512, 20k: 67.1 mean IoU on VOC 2012 val;
not run here yet). mmsegmentation's network differs in detail: a ResNet-V1c stem (three
3x3 convolutions) and a head of two 3x3 convolutions that also sees its input;
torchvision's, built here, has the 7x7 stem and one 3x3 convolution; and mmsegmentation's
poly schedule stops at 1e-4, this one at 0.

torchvision's own weights (trained on a COCO subset with VOC's 21 classes: 60.5 mean IoU
on COCO val2017) segment photos or evaluate at once, through the same config:

    python predict.py --config=configs/fcn_resnet50.py \\
        --config.init_from=torchvision:fcn_resnet50_coco PHOTOS --output=/tmp/masks
"""

from configs import default

# mmsegmentation's configs/fcn/fcn_r{50,101}-d8_4xb4-20k_voc12aug-512x512.py.
AUX_LOSS_WEIGHT = 0.4


def get_config(backbone: str = "resnet50"):
    config = default.get_config()
    config.model.backbone = backbone
    config.model.num_classes = 21
    config.model.aux_loss_weight = AUX_LOSS_WEIGHT
    config.model.dropout_rate = 0.1  # In the heads, as torchvision's and mmseg's FCNHead.
    config.model.dtype = "bfloat16"

    config.dataset.name = "voc_sbd"
    config.dataset.train_split, config.dataset.eval_split = "train_aug", "voc_val"
    config.dataset.crop_size = (512, 512)
    config.dataset.scale_range = (0.5, 2.0)
    config.dataset.flip = True
    config.dataset.normalization = "torch"

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "poly"
    config.optimizer.poly_power = 0.9
    config.optimizer.warmup_steps = 0
    config.optimizer.weight_decay = 5e-4

    config.batch_size = 16
    config.num_train_steps = 20_000
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    config.init_from = f"torchvision:{backbone}"  # ImageNet, as torchvision's recipe.
    return config
