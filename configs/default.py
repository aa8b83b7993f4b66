"""Default configuration: every field fcn_jax reads, with what it means.

The other config files start from ``get_config()`` here and change what their
recipe needs. Any field can be overridden on the command line, e.g.
``--config.batch_size=16 --config.optimizer.learning_rate=0.01``; an unknown
field is an error (the ConfigDict is locked).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.variant = "fcn8s"  # fcn32s | fcn16s | fcn8s (VGG backbones)
    # VGG FCNs: vgg16 | vgg16_bn (a BatchNorm after every VGG convolution, as torchvision's
    # vgg16_bn). ResNet FCNs: resnet50 | resnet101, torchvision's fcn_resnet50/101 (dilated,
    # output stride 8, FCNHead; variant, geometry, at_once, fc_* do not apply).
    config.model.backbone = "vgg16"
    # ResNet FCNs: weight of the auxiliary FCNHead's loss (on layer3); > 0 adds that head.
    # torchvision's recipe uses 0.5, mmsegmentation's 0.4.
    config.model.aux_loss_weight = 0.0
    # vgg16_bn only: BatchNorm after fc6/fc7 too, and no bias on the convolutions, fc6/fc7
    # and score layers: the network of the MindSpore FCN-8s tutorial.
    config.model.fc_batch_norm = False
    # Normalise by the running statistics in training too, and never update them: for
    # fine-tuning BatchNorm networks with small batches per device.
    config.model.freeze_batch_norm = False
    config.model.num_classes = 21  # 20 VOC classes + background.
    config.model.geometry = "caffe"  # caffe (exact reference nets) | same (cheaper, aligned)
    config.model.at_once = False  # FCN-8s "at-once": scale pool4 by 1e-2, pool3 by 1e-4.
    config.model.base_width = 64  # Width of conv1; VGG-16, ResNets: 64. Narrower for demos/tests.
    config.model.fc_width = 4096  # Channels of fc6/fc7; VGG-16 is 4096.
    config.model.dropout_rate = 0.5  # After fc6 and fc7; ResNet FCNs: in the heads (0.1).
    config.model.freeze_upsampling = True  # Keep the bilinear upsampling fixed, as the paper.
    # VGG FCNs: how the score layers and upsampling start. fcn: zero scores and bilinear
    # upsampling (the reference nets); xavier_uniform: both drawn as MindSpore's FCN-8s does.
    config.model.head_init = "fcn"
    config.model.fc6_impl = "matmul"  # matmul (faster on XLA CPU) | conv; same numbers.
    # Compute dtype: float32 | bfloat16 | float16 (params stay float32; float16 wants loss_scale).
    config.model.dtype = "float32"

    config.dataset = ml_collections.ConfigDict()
    # synthetic (built in, no download) | voc_sbd (PASCAL VOC 2012 + SBD, TFDS) |
    # folder (your data in VOC layout under data_dir).
    config.dataset.name = "synthetic"
    config.dataset.data_dir = (
        ""  # voc_sbd: TFDS data_dir ("" = ~/tensorflow_datasets); folder: root.
    )
    config.dataset.manual_dir = ""  # voc_sbd: archives or extracted folders to prepare from.
    config.dataset.train_split = "train"  # voc_sbd: train_aug | voc_train | sbd_train | ...
    config.dataset.eval_split = "validation"  # voc_sbd: voc_val | seg11valid | ...
    config.dataset.class_names = ()  # folder: class names in index order (optional).
    config.dataset.image_size = (96, 96)  # synthetic: (height, width) of every image.
    # Training augmentation of voc_sbd/folder data; synthetic images come unaugmented.
    config.dataset.crop_size = (512, 512)  # Training crop (height, width).
    config.dataset.scale_range = (0.5, 2.0)  # Random scale before cropping.
    # () scales each image by the random ratio itself; (long, short) scales it to fit inside
    # (long * ratio, short * ratio), keeping its shape: mmsegmentation's Resize(img_scale=
    # (2048, 512), ratio_range=scale_range) gives a 500x375 image 0.68-2.73 times its size.
    config.dataset.scale_base = ()
    config.dataset.image_resize = "bilinear"  # Training images: bilinear | bicubic.
    # < 1: redraw (up to 10 times) a crop whose commonest class covers this share of its
    # labelled pixels or more: mmsegmentation's RandomCrop(cat_max_ratio=0.75).
    config.dataset.cat_max_ratio = 1.0
    config.dataset.flip = True  # Random horizontal flip.
    config.dataset.color_jitter = 0.0  # Brightness/contrast jitter strength; 0 = off.
    # mmsegmentation's PhotoMetricDistortion: brightness, contrast, saturation and hue.
    config.dataset.photometric_distortion = False
    config.dataset.eval_pad_size = (512, 512)  # Eval images padded (label 255) to this size.
    # Evaluate (and predict) every image at its own size, unpadded, as the reference
    # FCN scoring does: exact for the caffe geometry, one compiled step per distinct
    # image size. False pads to eval_pad_size buckets: one compile, faster.
    config.dataset.eval_native_size = False
    config.dataset.cache = True  # Keep the encoded training split in host memory.
    # caffe (BGR - mean) | torch (ImageNet mean/std) | mindspore (BGR, ImageNet mean/std
    # in 0-255) | "" = what the init_from weights expect (recorded by their conversion), or
    # caffe when training from scratch.
    config.dataset.normalization = ""
    # What evaluation normalises by, when not the same ("" = dataset.normalization): the
    # MindSpore zoo's eval.py measured its figure with mindspore_rgb (see configs/fcn8s.py).
    config.dataset.eval_normalization = ""
    config.dataset.eval_batch_size = 8  # Global; the last batch is padded with void pixels.
    config.dataset.prefetch = 2  # Batches prepared ahead on the host.

    # Test-time inference, for evaluation (eval.py and during training) and predict.py.
    # Views (scales x flips) average their softmax probabilities at the original size.
    config.inference = ml_collections.ConfigDict()
    config.inference.flip = False  # Also run the mirrored image.
    config.inference.scales = (1.0,)  # Multi-scale, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75).
    # Tile images larger than dataset.eval_pad_size into windows of that size, instead
    # of running them whole (FCNs take any size; windows bound the memory).
    config.inference.sliding_window = False
    config.inference.window_overlap = 1 / 3  # Fraction of a window shared with the next.
    # () runs each image at its size. (long, short): rescale it to fit inside that box,
    # keeping its shape, run the model, and resize the scores back to the image's size
    # (bilinear): mmsegmentation's test Resize(scale=(2048, 512), keep_ratio=True). Needs
    # dataset.eval_native_size.
    config.inference.resize_to = ()
    # With resize_to: pad the rescaled image to the box, as the MindSpore zoo's eval.py pads
    # to 512x512 (its padding normalises to 0).
    config.inference.pad_resized = False

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # sgd | adam | adamw
    config.optimizer.learning_rate = 1e-3  # Peak learning rate.
    config.optimizer.schedule = "poly"  # constant | poly | cosine
    config.optimizer.poly_power = 0.9  # poly: lr * (1 - t / T) ** power.
    config.optimizer.warmup_steps = 0  # Linear warmup from 0 before the schedule.
    config.optimizer.momentum = 0.9  # sgd only; 0 disables momentum.
    config.optimizer.nesterov = False  # sgd only.
    config.optimizer.b1 = 0.9  # adam/adamw.
    config.optimizer.b2 = 0.999  # adam/adamw.
    config.optimizer.weight_decay = 5e-4  # On kernels only, never on biases (Caffe, MindSpore).
    # Decay every parameter, biases and BatchNorm scales and offsets too (torch's SGD, as
    # mmsegmentation and torchvision's references use it).
    config.optimizer.decay_all_parameters = False
    config.optimizer.bias_lr_mult = 1.0  # Caffe uses 2: biases learn twice as fast.
    config.optimizer.min_learning_rate = 0.0  # Where poly and cosine end (mmseg's min_lr).
    # The schedule steps every this many steps: MindSpore's zoo changes it once an epoch.
    config.optimizer.schedule_interval = 1
    config.optimizer.grad_clip_norm = 0.0  # Clip by global norm when > 0.

    # Loss: softmax cross-entropy ignoring label 255. "mean" averages over the
    # valid pixels of the global batch; "sum" is Caffe's unnormalised loss;
    # "mean_all_pixels" divides by every pixel, void ones too (mmsegmentation's).
    config.loss_reduction = "mean"

    # Loss scaling, for float16: none | static (the loss times value, every step applied:
    # MindSpore's FixedLossScaleManager) | dynamic (starts at value, halves and skips the
    # step when a gradient overflows, doubles at a finite step that follows growth_interval
    # finite ones; checkpointed with the run).
    config.loss_scale = ml_collections.ConfigDict()
    config.loss_scale.kind = "none"
    config.loss_scale.value = 2.0**16
    config.loss_scale.growth_interval = 2000

    config.mesh = ml_collections.ConfigDict()
    config.mesh.shape = (-1, 1)  # (data, model); -1 takes all remaining devices.
    config.mesh.param_sharding = "replicated"  # replicated | model (fc6/fc7 tensor parallel) | fsdp

    # Initialisation, dropout, the data order and augmentation (synthetic: the training
    # images; its validation set is the same for every seed).
    config.seed = 0
    config.batch_size = 8  # Global, over all devices and hosts.
    config.num_train_steps = 20_000
    config.log_every_steps = 50
    # An evaluated step is always saved too (before its evaluation), so best ranks it.
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    # Also save once this many minutes have passed since the last checkpoint or the end of
    # start-up (0 = off): bounds the work a crash can cost on slow hardware. SIGTERM and
    # Ctrl-C always save the step reached.
    config.checkpoint_every_minutes = 0.0
    config.eval_summary_images = 3  # Eval images (input | truth | prediction) in TensorBoard.
    config.keep_checkpoints = 2  # Latest N kept, plus the best by eval mean IoU.
    # When the workdir has no checkpoint yet, start from init_from: a name from the weights
    # catalogue (torchvision:vgg16, pytorch-fcn:fcn8s ..., fcn_jax/weights/catalogue.py:
    # downloaded, checked and converted once, then cached), a weights file (.pth, .ckpt,
    # .h5), converted weights (`python -m fcn_jax.convert ... --output=DIR`) or another
    # run's workdir (its best checkpoint: FCN-16s from a trained FCN-32s); "" trains from
    # scratch. init_layers picks the layers to take; () takes every layer that both have
    # (FCN-16s from FCN-32s: backbone and score_fr).
    config.init_from = ""
    config.init_layers = ()
    # On resume: keep the checkpoint's parameters and step with a new optimizer state (after
    # a divergence, or where config.optimizer no longer fits its state: grad_clip_norm
    # added, another optimizer, ...), the learning-rate schedule continuing at that step.
    # Once per change: a checkpoint written after the reset continues its own state.
    config.reset_optimizer = False

    config.lock()
    return config
