"""FCN-16s on PASCAL VOC 2012 + SBD: the recipes and options of configs/fcn8s.py.

    python train.py --config=configs/fcn16s.py --workdir=/tmp/fcn16s \
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES --config.init_from=INIT
    python eval.py --config=configs/fcn16s.py --workdir=/tmp/fcn16s

INIT: the workdir of a trained FCN-32s (the paper's staged recipe: every layer both
nets have is taken, score_pool4 starts at zero); without it, ImageNet VGG-16 (torchvision's;
with `:caffe`, Caffe's), downloaded and cached on first use.
Expected, with `:paper,caffe` from FCN-32s: 65.0 mean IoU on seg11valid
(fcn.berkeleyvision.org's README; pytorch-fcn's conversion of the Caffe model: 65.01).
The batched recipe is fcn_jax's own, without a measured figure. The recipes against
their reference, field by field: configs/fcn8s.py.
"""

from configs import fcn8s


def get_config(options: str = ""):
    """options: comma-separated, from "paper" (sbd_train -> seg11valid) and "caffe"."""
    return fcn8s.get_config(options, variant="fcn16s")
