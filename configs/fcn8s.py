"""FCN-8s on PASCAL VOC 2012 + SBD. Options after the file name, comma-separated.

Batched recipe (default): train_aug -> VOC 2012 val, 512x512 crops (scale 0.5-2,
flip), `same` geometry, bfloat16, SGD momentum 0.9, poly schedule, 30k steps of 16, from
torchvision's ImageNet VGG-16 (init_from=torchvision:vgg16, downloaded and cached on
first use; --config.init_from="" trains from scratch).

    python train.py --config=configs/fcn8s.py --workdir=/tmp/fcn8s \\
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn8s.py --workdir=/tmp/fcn8s

Expected: about 65 mean IoU on VOC 2012 val from ImageNet VGG-16 weights (a batched
VGG-16-BN FCN-8s reaches 64.7); from scratch far less (~30).

Options:
  paper    the FCN paper's protocol: train on sbd_train (8,498), evaluate on seg11valid (736),
           every image at its own size, unpadded, as the reference scoring does (one
           compiled eval step per distinct image size; caffe does this too).
  caffe    the reference Caffe optimisation: batch 1 whole images (padded to 512, no
           augmentation; a data axis of 1, so any number of devices runs it), `caffe`
           geometry, float32, SGD momentum 0.99, unnormalised loss,
           learning rate 1e-10 (32s) / 1e-12 (16s) / 1e-14 (8s), weight decay 5e-4 on
           weights, biases learning 2x, 100k steps; from Caffe's VGG-16
           (init_from=pytorch-fcn:vgg16_from_caffe, the caffe normalisation).
  at_once  FCN-8s trained at once from VGG-16 (pool4 scaled by 0.01, pool3 by 0.0001 before
           scoring); with caffe, the reference voc-fcn8s-atonce solver: learning rate
           1e-10, 300k steps.
  mindspore  the MindSpore FCN-8s tutorial's network and model-zoo recipe: VGG-16 with a
           BatchNorm after every convolution (fc6/fc7 too, no biases, no dropout), its
           normalisation (BGR, ImageNet mean/std in 0-255), learned upsampling, 512x512
           crops, scale 0.5-2, flip, batch 32, SGD momentum 0.9, weight decay 1e-4 (not on
           BatchNorm), learning rate 0.015 with cosine decay, 500 epochs of train_aug
           (165,500 steps), from the tutorial's VGG-16 checkpoint (init_from=mindspore:vgg16_bn):
               python train.py --config=configs/fcn8s.py:mindspore --workdir=/tmp/fcn8s_ms
           Expected (MindSpore's model zoo, not run here): 64.67 mean IoU on VOC 2012 val.

The paper's staged recipes (`--config=configs/fcnXs.py:paper,caffe`), results on seg11valid:
  FCN-32s from Caffe's VGG-16 (the option's init_from)                       63.6 mIoU
  FCN-16s from the trained FCN-32s (--config.init_from=<FCN-32s workdir>)    65.0
  FCN-8s  from the trained FCN-16s (--config.init_from=<FCN-16s workdir>)    65.5
  FCN-8s at-once from VGG-16 (`configs/fcn8s.py:paper,caffe,at_once`)        65.4
(the reference's figures; pytorch-fcn reports its conversions of the Caffe models at
63.63 / 65.01 / 65.51 / 65.40, see the README). The published models evaluate directly:
    python eval.py --config=configs/fcn8s.py:paper,caffe --workdir=/tmp/fcn8s_caffe \\
        --config.init_from=pytorch-fcn:fcn8s
"""

from configs import default

# (train split, eval split) of the two evaluation protocols.
PROTOCOLS = {"standard": ("train_aug", "voc_val"), "paper": ("sbd_train", "seg11valid")}
# The reference solvers (voc-fcn32s, voc-fcn16s, voc-fcn8s, voc-fcn8s-atonce):
# (base_lr, max_iter).
CAFFE_SOLVERS = {
    "fcn32s": (1e-10, 100_000),
    "fcn16s": (1e-12, 100_000),
    "fcn8s": (1e-14, 100_000),
    "fcn8s_at_once": (1e-10, 300_000),
}
OPTIONS = ("paper", "caffe", "at_once", "mindspore")
# train_aug has 10,582 images: an epoch of batch 32 is 331 steps (MindSpore's model zoo).
MINDSPORE_EPOCH_STEPS = -(-10_582 // 32)


def get_config(options: str = "", variant: str = "fcn8s"):
    chosen = [o for o in options.split(",") if o]
    unknown = sorted(set(chosen) - set(OPTIONS))
    if unknown:
        raise ValueError(f"config options {unknown} are not among {OPTIONS}")
    for recipe in ("at_once", "mindspore"):
        if recipe in chosen and variant != "fcn8s":
            raise ValueError(f"config option {recipe} is an FCN-8s recipe, not one for {variant}")
    if {"mindspore", "caffe"} <= set(chosen):
        raise ValueError("config options mindspore and caffe are two different recipes")
    config = default.get_config()
    config.model.variant = variant
    config.model.at_once = "at_once" in chosen
    config.model.num_classes = 21
    config.model.geometry = "same"
    config.model.dtype = "bfloat16"

    config.dataset.name = "voc_sbd"
    protocol = "paper" if "paper" in chosen else "standard"
    config.dataset.train_split, config.dataset.eval_split = PROTOCOLS[protocol]
    # The reference scores every image alone at its own size; padding changes the result.
    config.dataset.eval_native_size = "paper" in chosen or "caffe" in chosen
    config.dataset.crop_size = (512, 512)

    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "poly"
    config.optimizer.warmup_steps = 500
    config.optimizer.weight_decay = 5e-4

    config.batch_size = 16
    config.num_train_steps = 30_000
    config.eval_every_steps = 3_000
    config.checkpoint_every_steps = 3_000
    config.init_from = "torchvision:vgg16"  # The caffe and mindspore recipes set their own.

    if "mindspore" in chosen:
        config.init_from = "mindspore:vgg16_bn"
        config.model.backbone = "vgg16_bn"
        config.model.fc_batch_norm = True
        config.model.dropout_rate = 0.0
        config.model.freeze_upsampling = False  # The tutorial learns its upsampling.
        config.dataset.normalization = "mindspore"
        config.optimizer.learning_rate = 0.015
        config.optimizer.schedule = "cosine"
        config.optimizer.warmup_steps = 0
        config.optimizer.weight_decay = 1e-4
        config.batch_size = 32
        config.num_train_steps = 500 * MINDSPORE_EPOCH_STEPS
        config.eval_every_steps = config.checkpoint_every_steps = 10 * MINDSPORE_EPOCH_STEPS
    if "caffe" in chosen:
        config.init_from = "pytorch-fcn:vgg16_from_caffe"
        config.model.geometry = "caffe"
        config.model.dtype = "float32"
        config.dataset.scale_range = (1.0, 1.0)  # Whole images: 512 covers VOC's 500 max.
        config.dataset.flip = False
        solver = "fcn8s_at_once" if config.model.at_once else variant
        config.optimizer.learning_rate, config.num_train_steps = CAFFE_SOLVERS[solver]
        config.optimizer.momentum = 0.99
        config.optimizer.schedule = "constant"
        config.optimizer.warmup_steps = 0
        config.optimizer.bias_lr_mult = 2.0
        config.loss_reduction = "sum"
        config.batch_size = 1
        config.mesh.shape = (1, -1)  # A batch of one is not split: every device runs it.
        config.eval_every_steps = 4_000
        config.checkpoint_every_steps = 4_000
    return config
