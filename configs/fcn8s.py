"""FCN-8s on PASCAL VOC 2012 + SBD. Options after the file name, comma-separated.

Batched recipe (default): fcn_jax's own, no reference to reproduce and no expected figure
measured: train_aug -> VOC 2012 val, 512x512 crops (scale 0.5-2, flip), `same` geometry,
bfloat16, SGD momentum 0.9, learning rate 0.01 with 500 warmup steps and poly decay, weight
decay 5e-4 on kernels, 30k steps of 16, from torchvision's ImageNet VGG-16
(init_from=torchvision:vgg16, downloaded and cached on first use; --config.init_from=""
trains from scratch, and learns far less).

    python train.py --config=configs/fcn8s.py --workdir=/tmp/fcn8s \\
        --config.dataset.manual_dir=DIR_WITH_VOC_AND_SBD_ARCHIVES
    python eval.py --config=configs/fcn8s.py --workdir=/tmp/fcn8s

Options:
  paper    the FCN paper's protocol: train on sbd_train (8,498), evaluate on seg11valid (736),
           every image at its own size, unpadded, as the reference scoring does (one
           compiled eval step per distinct image size; caffe does this too).
  caffe    the reference Caffe optimisation (table below): batch 1 whole images, `caffe`
           geometry, float32, SGD momentum 0.99, unnormalised loss, learning rate 1e-10
           (32s) / 1e-12 (16s) / 1e-14 (8s), 100k steps; from Caffe's VGG-16
           (init_from=pytorch-fcn:vgg16_from_caffe, the caffe normalisation).
  at_once  FCN-8s trained at once from VGG-16 (pool4 scaled by 0.01, pool3 by 0.0001 before
           scoring); with caffe, the reference voc-fcn8s-atonce solver: 1e-10, 300k steps.
  mindspore  the MindSpore model zoo's FCN-8s (the tutorial's network; table below), from the
           tutorial's VGG-16 checkpoint (init_from=mindspore:vgg16_bn):
               python train.py --config=configs/fcn8s.py:mindspore --workdir=/tmp/fcn8s_ms

The paper's staged recipes (`--config=configs/fcnXs.py:paper,caffe`), results on seg11valid:
  FCN-32s from Caffe's VGG-16 (the option's init_from)                       63.6 mIoU
  FCN-16s from the trained FCN-32s (--config.init_from=<FCN-32s workdir>)    65.0
  FCN-8s  from the trained FCN-16s (--config.init_from=<FCN-16s workdir>)    65.5
  FCN-8s at-once from VGG-16 (`configs/fcn8s.py:paper,caffe,at_once`)        65.4
(fcn.berkeleyvision.org's README; pytorch-fcn reports its conversions of the Caffe models at
63.63 / 65.01 / 65.51 / 65.40, see the README). The published models evaluate directly:
    python eval.py --config=configs/fcn8s.py:paper,caffe --workdir=/tmp/fcn8s_caffe \\
        --config.init_from=pytorch-fcn:fcn8s

`paper,caffe` against shelhamer/fcn.berkeleyvision.org (voc-fcn*/net.py, solver.prototxt,
solve.py; voc_layers.py; score.py):
  field            reference                                  fcn_jax            same?
  data             SBDDSegDataLayer sbd train, VOC2011 val    sbd_train,          yes (val images
                                                              seg11valid          from VOC 2012)
  order            random.randint per step (with replacement,  seeded reshuffle   no: epochs
                   seed 1337)                                 every epoch
  input            whole image, its own size, batch 1         padded to 512x512   no: one compiled
                                                              (mean colour, 255)  step; the edge
                                                              batch 1             sees padding
  normalisation    BGR - (104.00699, 116.66877, 122.67892)    caffe               yes
  loss             SoftmaxWithLoss normalize: false           loss_reduction=sum  yes
  solver           SGD lr 1e-10/1e-12/1e-14 fixed (atonce     the same            yes
                   1e-10), momentum 0.99, max_iter 100k (300k)
  weight decay     5e-4, decay_mult 0 on biases               kernels only        yes
  bias lr          lr_mult 2                                  bias_lr_mult=2      yes
  score layers     zero-filled (Caffe's default filler)       head_init=fcn       yes
  upsampling       surgery.interp bilinear, lr_mult 0         frozen bilinear     yes
  dropout          0.5 after fc6, fc7                         0.5                 yes
  evaluation       score.seg_tests every 4000 iterations      every 4000 steps,   yes
                   at native size                             eval_native_size

`mindspore` against mindspore-ai/models r1.10 official/cv/FCN8s (default_config.yaml for
Ascend, train.py, src/; its README's 64.67 mean IoU on VOC 2012 val, Ascend 910, 1 device):
  field            reference                                  fcn_jax             same?
  network          src/nets/FCN8s.py (the tutorial's)         vgg16_bn, fc BN,    yes
                                                              no bias, no dropout
  head init        score_*, upscore* weight_init=             head_init=          yes
                   xavier_uniform                             xavier_uniform
  data             vocaug list (SBD train+val - VOC trainval  train_aug           yes
                   + VOC train), shuffled, drop_remainder
  epoch            10,582 // 32 = 330 steps, 500 epochs       165,000 steps       yes; no epoch
                                                                                  bounds (the 22
                                                                                  dropped images
                                                                                  roll over)
  decode           cv2 BGR                                    normalization=      yes
                   (x - [103.53, 116.28, 123.675])            mindspore
                   / [57.375, 57.12, 58.395]
  scale            U(0.5, 2.0), int(s * h) (truncates)        scale_range, rounds no: a pixel
  resize           cv2 INTER_CUBIC, label INTER_NEAREST       bicubic (tf.image,  no: Keys a=-0.5
                                                              a=-0.5); nearest    vs OpenCV's
                                                              with half-pixel     -0.75; OpenCV's
                                                              centres             nearest floors
  crop, flip       pad 0 (mean) / 255 to 512, crop, p=0.5     the same            yes
  precision        amp_level O3 (float16, BatchNorm too),     float16, BatchNorm  no: statistics
                   FixedLossScaleManager(1024, no drop)       statistics float32; in float32
                                                              static scale 1024
  optimizer        nn.Momentum 0.9, weight decay 1e-4 (not    sgd, kernels only   yes
                   gamma/beta; the net has no biases)
  learning rate    CosineAnnealingLR 0.015 -> 0 over 500      cosine, schedule_   yes
                   epochs, changed once an epoch              interval=330
  batch            train_batch_size 32                        32                  yes
  evaluation       eval.py: PIL RGB, normalised by the BGR    eval_normalization= yes (as measured)
                   constants (channels reversed from          mindspore_rgb
                   training), long side to 512 (cv2 linear),  resize_to=(512,     no: logits, not
                   pad 512x512, softmax, scores resized back  512), pad_resized   softmax, resized
                   (cv2 linear), batch 16                     batch 16            back; rounding
The tutorial notebook (mindspore-ai/docs tutorials/.../cv/fcn8s.ipynb) trains the same net for
one epoch of a small set at batch 4, learning rate 0.05, as a demonstration; its figure (89.6
mean IoU) is measured on its training data: not a reference. Expected, from the zoo's README:
64.67 mean IoU on VOC 2012 val (not run here). Evaluate as trained, not as measured, with
--config.dataset.eval_normalization=mindspore.
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
# The MindSpore zoo's epoch: train_aug's 10,582 images in batches of 32, the last partial
# batch dropped (dataset.batch(32, drop_remainder=True)).
MINDSPORE_BATCH = 32
MINDSPORE_EPOCH_STEPS = 10_582 // MINDSPORE_BATCH
MINDSPORE_EPOCHS = 500


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
        config.model.freeze_upsampling = False  # The zoo learns its upsampling.
        config.model.head_init = "xavier_uniform"
        config.model.dtype = "float16"
        config.loss_scale.kind, config.loss_scale.value = "static", 1024.0
        config.dataset.normalization = "mindspore"
        config.dataset.image_resize = "bicubic"
        config.dataset.eval_native_size = True
        config.dataset.eval_normalization = "mindspore_rgb"
        config.dataset.eval_batch_size = 16
        config.inference.resize_to = (512, 512)
        config.inference.pad_resized = True
        config.optimizer.learning_rate = 0.015
        config.optimizer.schedule = "cosine"
        config.optimizer.schedule_interval = MINDSPORE_EPOCH_STEPS
        config.optimizer.warmup_steps = 0
        config.optimizer.weight_decay = 1e-4
        config.batch_size = MINDSPORE_BATCH
        config.num_train_steps = MINDSPORE_EPOCHS * MINDSPORE_EPOCH_STEPS
        config.eval_every_steps = config.checkpoint_every_steps = 10 * MINDSPORE_EPOCH_STEPS
        config.keep_checkpoints = 5  # keep_checkpoint_max.
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
