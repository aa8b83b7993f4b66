"""FCN-16s on PASCAL VOC 2012 + SBD: the batched recipe of configs/fcn8s.py.

    python train.py --config=configs/fcn16s.py --workdir=/tmp/fcn16s
    python eval.py --config=configs/fcn16s.py --workdir=/tmp/fcn16s

Data and optimisation as configs/fcn8s.py (train_aug -> VOC 2012 val, 512x512
crops, bfloat16, SGD momentum 0.9, poly schedule, 30k steps of 16 images); the
paper's protocol (sbd_train -> seg11valid) is ``--config=configs/fcn16s.py:paper``.
Expected: about 64 mean IoU on VOC 2012 val from ImageNet VGG-16 weights
(the paper's converted Caffe FCN-16s scores 65.0 on seg11valid).
"""

from configs import fcn8s


def get_config(protocol: str = "standard"):
    """protocol: "standard" (train_aug -> voc_val) or "paper" (sbd_train -> seg11valid)."""
    config = fcn8s.get_config(protocol)
    config.model.variant = "fcn16s"
    return config
