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
"""

import jax.numpy as jnp

# Per-channel constants in RGB order.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# The MindSpore tutorial's constants, as it writes them: BGR order, 0-255 units.
MINDSPORE_MEAN_BGR = (103.53, 116.28, 123.675)
MINDSPORE_STD_BGR = (57.375, 57.12, 58.395)
NORMALIZATIONS = ("caffe", "torch", "mindspore")


def mean_rgb_uint8(mode: str) -> tuple[int, int, int]:
    """The mean colour as uint8 RGB: what padding should be so it normalises to ~0."""
    if mode == "caffe":
        return tuple(int(round(c)) for c in CAFFE_MEAN_BGR[::-1])
    if mode == "torch":
        return tuple(int(round(255 * c)) for c in IMAGENET_MEAN_RGB)
    if mode == "mindspore":
        return tuple(int(round(c)) for c in MINDSPORE_MEAN_BGR[::-1])
    raise ValueError(f"normalization {mode!r} is not one of {NORMALIZATIONS}")


def describe(mode: str) -> dict:
    """What ``normalize`` does, for readers of exported models: x -> (x[order] / scale - mean) /
    std per channel, the constants in the order the model sees its channels; ``pad_rgb``,
    the uint8 RGB colour that normalises to about 0, to pad photos with."""
    constants = {
        "caffe": ("BGR", 1.0, list(CAFFE_MEAN_BGR), [1.0] * 3),
        "torch": ("RGB", 255.0, list(IMAGENET_MEAN_RGB), list(IMAGENET_STD_RGB)),
        "mindspore": ("BGR", 1.0, list(MINDSPORE_MEAN_BGR), list(MINDSPORE_STD_BGR)),
    }
    if mode not in constants:
        raise ValueError(f"normalization {mode!r} is not one of {NORMALIZATIONS}")
    order, scale, mean, std = constants[mode]
    return dict(
        mode=mode,
        order=order,
        scale=scale,
        mean=mean,
        std=std,
        pad_rgb=list(mean_rgb_uint8(mode)),
    )


def normalize(images, mode: str, dtype=jnp.float32):
    """uint8 RGB [..., 3] -> normalised float ``dtype`` as the backbone expects."""
    x = jnp.asarray(images).astype(jnp.float32)
    if mode == "caffe":
        x = jnp.flip(x, -1) - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    elif mode == "torch":
        x = (x / 255.0 - jnp.asarray(IMAGENET_MEAN_RGB)) / jnp.asarray(IMAGENET_STD_RGB)
    elif mode == "mindspore":
        x = (jnp.flip(x, -1) - jnp.asarray(MINDSPORE_MEAN_BGR)) / jnp.asarray(MINDSPORE_STD_BGR)
    else:
        raise ValueError(f"normalization {mode!r} is not one of {NORMALIZATIONS}")
    return x.astype(dtype)
