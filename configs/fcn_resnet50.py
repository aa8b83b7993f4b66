"""FCN on a dilated ResNet-50 (torchvision's fcn_resnet50) with mmsegmentation's VOC recipe.

mmsegmentation's FCN R-50-D8 512x512 20k on VOC 2012 aug, field by field: train_aug -> VOC
2012 val, batch 16, SGD, poly, 20k steps, its augmentation, loss and evaluation. It starts
from torchvision's ImageNet ResNet-50 (init_from=torchvision:resnet50, downloaded and cached
on first use; --config.init_from="" trains from scratch):

    python train.py --config=configs/fcn_resnet50.py --workdir=/tmp/fcn_resnet50 \\
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn_resnet50.py --workdir=/tmp/fcn_resnet50

Against open-mmlab/mmsegmentation 0.x, which trained the published model (configs/fcn/
fcn_r50-d8_512x512_20k_voc12aug.py; _base_/models/fcn_r50-d8.py, datasets/pascal_voc12{,_aug}.py,
schedules/schedule_20k.py; mmseg/datasets/pipelines/transforms.py, models/losses/):
  field          reference                                     fcn_jax               same?
  backbone       ResNetV1c (3x3 stem), resnet50_v1c weights,   torchvision's (7x7    no: the net
                 dilations (1, 1, 2, 4), contract_dilation     stem), its weights    converted here
  decode head    FCNHead 2 convs of 512, concat_input          1 conv, no concat     no (ditto)
  auxiliary      FCNHead on stage 3, 1 conv of 256, weight 0.4 the same, 0.4         yes
  norm           SyncBN (global batch), norm_eval False        global batch          yes
  dropout        0.1 in both heads                             0.1                   yes
  data           train.txt + aug.txt (10,582)                  train_aug             yes
  resize         Resize(img_scale=(2048, 512), ratio_range=    scale_base=(2048,     yes (bilinear
                 (0.5, 2.0)): 0.68-2.73x for 500x375           512), scale_range     on the mean-
                                                                                     centred image)
  crop           RandomCrop 512, cat_max_ratio=0.75            cat_max_ratio=0.75    yes
  flip           p=0.5                                         p=0.5                 yes
  photometric    PhotoMetricDistortion                         photometric_          yes, but hue
                                                               distortion            and saturation
                                                                                     in float HSV
  normalisation  RGB, mean [123.675, 116.28, 103.53], std      torch (the same       yes
                 [58.395, 57.12, 57.375]; pad 0 after it       numbers); mean pad
  loss           CrossEntropyLoss averaged over every pixel,   loss_reduction=       yes
                 void too (avg_non_ignore=False)               mean_all_pixels
  optimizer      SGD lr 0.01, momentum 0.9, weight decay 5e-4  decay_all_parameters  yes
                 on every parameter
  schedule       poly power 0.9, min_lr 1e-4, 20k iterations   min_learning_rate     yes
  batch          4 GPUs x 4                                    16                    yes
  precision      float32                                       float32               yes
  evaluation     every 2k iterations; test Resize to fit       every 2k; resize_to=  yes (float
                 (2048, 512), whole image, logits resized      (2048, 512), native   resize, no
                 back bilinearly                               size                  uint8 round)
mmsegmentation 1.x pads the raw image with black before normalising (0.x: the mean colour).
Expected (mmsegmentation's configs/fcn/README.md, 0.x: FCN R-50-D8, 512x512, 20k): 67.08 mean
IoU on VOC 2012 val, with its own network (not run here). --config.model.dtype=bfloat16
trains faster, off the reference.

torchvision's own weights (trained on a COCO subset with VOC's 21 classes: 60.5 mean IoU
on COCO val2017) segment photos or evaluate at once, through the same config:

    python predict.py --config=configs/fcn_resnet50.py \\
        --config.init_from=torchvision:fcn_resnet50_coco PHOTOS --output=/tmp/masks
"""

from configs import default

# mmsegmentation's configs/fcn/fcn_r{50,101}-d8_512x512_20k_voc12aug.py.
AUX_LOSS_WEIGHT = 0.4
# Its Resize(img_scale) in training (scaled by ratio_range) and in testing.
MMSEG_IMG_SCALE = (2048, 512)


def get_config(backbone: str = "resnet50"):
    config = default.get_config()
    config.model.backbone = backbone
    config.model.num_classes = 21
    config.model.aux_loss_weight = AUX_LOSS_WEIGHT
    config.model.dropout_rate = 0.1  # In the heads, as torchvision's and mmseg's FCNHead.
    config.model.dtype = "float32"

    config.dataset.name = "voc_sbd"
    config.dataset.train_split, config.dataset.eval_split = "train_aug", "voc_val"
    config.dataset.crop_size = (512, 512)
    config.dataset.scale_range = (0.5, 2.0)
    config.dataset.scale_base = MMSEG_IMG_SCALE
    config.dataset.cat_max_ratio = 0.75
    config.dataset.flip = True
    config.dataset.photometric_distortion = True
    config.dataset.normalization = "torch"
    config.dataset.eval_native_size = True
    config.inference.resize_to = MMSEG_IMG_SCALE

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "poly"
    config.optimizer.poly_power = 0.9
    config.optimizer.min_learning_rate = 1e-4
    config.optimizer.warmup_steps = 0
    config.optimizer.weight_decay = 5e-4
    config.optimizer.decay_all_parameters = True
    config.loss_reduction = "mean_all_pixels"

    config.batch_size = 16
    config.num_train_steps = 20_000
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    config.init_from = f"torchvision:{backbone}"  # ImageNet, as torchvision's recipe.
    return config
