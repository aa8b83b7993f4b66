"""Demo: a slim FCN-8s on the built-in synthetic shapes, trained on a laptop CPU.

    python train.py --config=configs/demo.py --workdir=/tmp/fcn_demo
    python eval.py --config=configs/demo.py --workdir=/tmp/fcn_demo

Data: seeded images of circles, squares and triangles on textured backgrounds
(colour says nothing about the class), generated on the fly, no download.
Expected: eval mean IoU >= 0.80 on the 256 validation images, in under 10
minutes on 2 CPU cores (see README for the measured figure).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.variant = "fcn8s"
    config.model.num_classes = 4
    config.model.geometry = "same"
    config.model.base_width = 16
    config.model.fc_width = 128
    config.model.dropout_rate = 0.1
    config.model.freeze_upsampling = False

    config.dataset.name = "synthetic"
    config.dataset.image_size = (64, 64)
    config.dataset.normalization = "torch"
    config.dataset.eval_batch_size = 32

    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.weight_decay = 0.0

    config.batch_size = 16
    config.num_train_steps = 2_000
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    return config
