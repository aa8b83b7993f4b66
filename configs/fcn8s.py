"""FCN-8s on PASCAL VOC 2012 + SBD: the batched recipe.

    python train.py --config=configs/fcn8s.py --workdir=/tmp/fcn8s \
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn8s.py --workdir=/tmp/fcn8s

Data: train on train_aug (VOC 2012 train + SBD, 10,582 images), evaluate on VOC
2012 val (1,449), with 512x512 random crops (scale 0.5-2, flip). The first run
prepares the `voc_sbd` TFDS dataset from manual_dir (see README). The FCN paper's
protocol, train on sbd_train (8,498) and evaluate on seg11valid (736), is
``--config=configs/fcn8s.py:paper``.
Model: FCN-8s, `same` geometry, bfloat16 compute, SGD momentum 0.9 with a poly
schedule over 30k steps of 16 images (~45 epochs).
Expected: about 65 mean IoU on VOC 2012 val when started from ImageNet VGG-16
weights (a batched VGG-16-BN FCN-8s reaches 64.7; the paper's converted Caffe
FCN-8s scores 65.5 on seg11valid). From scratch it reaches far less (~30).
"""

from configs import default

# (train split, eval split) of the two evaluation protocols.
PROTOCOLS = {"standard": ("train_aug", "voc_val"), "paper": ("sbd_train", "seg11valid")}


def get_config(protocol: str = "standard"):
    """protocol: "standard" (train_aug -> voc_val) or "paper" (sbd_train -> seg11valid)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"config protocol {protocol!r} is not one of {tuple(PROTOCOLS)}")
    config = default.get_config()
    config.model.variant = "fcn8s"
    config.model.num_classes = 21
    config.model.geometry = "same"
    config.model.dtype = "bfloat16"

    config.dataset.name = "voc_sbd"
    config.dataset.train_split, config.dataset.eval_split = PROTOCOLS[protocol]
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
    return config
