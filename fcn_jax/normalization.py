"""Input normalisation, in one place, matching the backbone's pretrained weights.

Images travel as uint8 from the input pipeline to the device and are normalised
inside the jitted step: a quarter of the host-to-device bytes of float32, and no
float work on the host.

  * ``caffe``: BGR, 0-255, minus the per-channel mean of the Caffe VGG-16 /
    reference FCN nets (fcn.berkeleyvision.org).
  * ``torch``: RGB scaled to 0-1, minus the ImageNet mean, over its std
    (torchvision's VGG-16).
  * ``mindspore``: BGR, 0-255, minus the ImageNet mean, over its std, both in
    0-255 units (the MindSpore FCN-8s tutorial and model zoo).
  * ``mindspore_rgb``: the same constants applied to RGB: how the MindSpore zoo's eval.py
    (which reads images with PIL) measured its figure, channels reversed from training.
"""

import jax.numpy as jnp

# Per-channel constants, in the channel order their names give.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# The MindSpore tutorial's constants, as it writes them: BGR order, 0-255 units.
MINDSPORE_MEAN_BGR = (103.53, 116.28, 123.675)
MINDSPORE_STD_BGR = (57.375, 57.12, 58.395)
NORMALIZATIONS = ("caffe", "torch", "mindspore", "mindspore_rgb")


# mode -> (the channel order the backbone takes, scale, mean, std): the backbone sees
# (x[order] / scale - mean) / std, the constants in that order and in those units.
_STEPS = {
    "caffe": ("BGR", 1.0, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0)),
    "torch": ("RGB", 255.0, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB),
    "mindspore": ("BGR", 1.0, MINDSPORE_MEAN_BGR, MINDSPORE_STD_BGR),
    "mindspore_rgb": ("RGB", 1.0, MINDSPORE_MEAN_BGR, MINDSPORE_STD_BGR),
}


def _steps(mode: str):
    if mode not in _STEPS:
        raise ValueError(f"normalization {mode!r} is not one of {NORMALIZATIONS}")
    return _STEPS[mode]


def mean_rgb_uint8(mode: str) -> tuple[int, int, int]:
    """The mean colour as uint8 RGB: what padding should be so it normalises to ~0."""
    order, scale, mean, _ = _steps(mode)
    return tuple(int(round(scale * c)) for c in (mean[::-1] if order == "BGR" else mean))


def describe(mode: str) -> dict:
    """What ``normalize`` does, for readers of exported models: x -> (x[order] / scale - mean) /
    std per channel, the constants in the order the model sees its channels; ``pad_rgb``,
    the uint8 RGB colour that normalises to about 0, to pad photos with."""
    order, scale, mean, std = _steps(mode)
    return dict(
        mode=mode,
        order=order,
        scale=scale,
        mean=list(mean),
        std=list(std),
        pad_rgb=list(mean_rgb_uint8(mode)),
    )


def normalize(images, mode: str, dtype=jnp.float32):
    """uint8 RGB [..., 3] -> normalised float ``dtype`` as the backbone expects (steps of
    1 are skipped: the same numbers, and no needless ops in exported graphs)."""
    order, scale, mean, std = _steps(mode)
    x = jnp.asarray(images).astype(jnp.float32)
    if order == "BGR":
        x = jnp.flip(x, -1)
    if scale != 1.0:
        x = x / scale
    x = x - jnp.asarray(mean, jnp.float32)
    if any(s != 1.0 for s in std):
        x = x / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)
