"""Per-example tf.data transforms: random scale/pad/crop/flip for training, padding for eval.

Images stay uint8 end to end (normalisation happens on the device). Randomness
is stateless, drawn from a per-example seed, so an example's augmentation
depends only on (seed, its index in the stream): deterministic across runs,
thread counts and restarts.

Training crops before resizing: the random scale and crop are chosen first,
then only the source window that lands in the crop is decoded (JPEG) and
resized. This is the same distribution of crops as "resize the whole image, pad,
crop", without resizing pixels that are thrown away.
"""

from __future__ import annotations

import jax
import numpy as np
import tensorflow as tf

from fcn_jax.visualize import VOID  # The label of void pixels.


def invalid_labels(labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, pixel counts) of the labels other than 0..num_classes-1 and 255 (void)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=VOID + 1)
    counts[:num_classes] = counts[VOID] = 0
    bad = np.flatnonzero(counts)
    return bad, counts[bad]


def _uniform(seed, minval, maxval, dtype=tf.float32):
    return tf.random.stateless_uniform([], seed, minval=minval, maxval=maxval, dtype=dtype)


def train_crop(
    image_bytes,
    label,
    seed,
    *,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float],
    mean_rgb: tuple[int, int, int],
    flip: bool = True,
    color_jitter: float = 0.0,
):
    """JPEG bytes and a uint8 [H, W] label -> uint8 [ch, cw, 3] image and [ch, cw] label.

    Scale by s ~ U(scale_range) (bilinear image, nearest label), pad to the crop
    size (image with ``mean_rgb``, label with 255), take a random crop, flip
    horizontally with probability 1/2, optionally jitter brightness/contrast.
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    ch, cw = crop_size
    shape = tf.image.extract_jpeg_shape(image_bytes)
    h, w = shape[0], shape[1]
    s = _uniform(seeds[0], scale_range[0], scale_range[1])
    hs = tf.maximum(tf.cast(tf.round(tf.cast(h, tf.float32) * s), tf.int32), 1)
    ws = tf.maximum(tf.cast(tf.round(tf.cast(w, tf.float32) * s), tf.int32), 1)
    # Crop offset in the scaled-and-padded image; padding is at the bottom/right.
    oy = _uniform(seeds[1], 0, tf.maximum(hs, ch) - ch + 1, tf.int32)
    ox = _uniform(seeds[2], 0, tf.maximum(ws, cw) - cw + 1, tf.int32)
    out_h, out_w = tf.minimum(ch, hs - oy), tf.minimum(cw, ws - ox)
    # The source window that lands in the crop, in original pixels.
    y0 = tf.cast(tf.floor(tf.cast(oy, tf.float32) / s), tf.int32)
    x0 = tf.cast(tf.floor(tf.cast(ox, tf.float32) / s), tf.int32)
    y1 = tf.minimum(h, tf.cast(tf.math.ceil(tf.cast(oy + out_h, tf.float32) / s), tf.int32))
    x1 = tf.minimum(w, tf.cast(tf.math.ceil(tf.cast(ox + out_w, tf.float32) / s), tf.int32))
    y0, x0 = tf.minimum(y0, y1 - 1), tf.minimum(x0, x1 - 1)
    window = tf.stack([y0, x0, y1 - y0, x1 - x0])
    image = tf.image.decode_and_crop_jpeg(
        image_bytes,
        window,
        channels=3,
        dct_method="INTEGER_ACCURATE",  # As PIL decodes.
    )
    label = label[y0:y1, x0:x1]
    if flip:  # On the small window: resizing commutes with mirroring.
        do_flip = _uniform(seeds[3], 0.0, 1.0) < 0.5
        image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(do_flip, lambda: label[:, ::-1], lambda: label)
    size = tf.stack([out_h, out_w])
    mean = tf.constant(mean_rgb, tf.float32)
    # Resizing is linear, so subtract the mean first and pad the centred image with zeros.
    centred = tf.image.resize(tf.cast(image, tf.float32) - mean, size, method="bilinear")
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    if color_jitter > 0:
        centred = _jitter(centred, seeds[4], color_jitter)
    return _pad_centred(centred, label, crop_size, mean, clip=color_jitter > 0)


def _jitter(centred, seed, strength: float):
    """Random brightness (+-strength of the range) and contrast (x 1+-strength)."""
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x = centred + _uniform(s1, -strength, strength) * 255.0
    average = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
    return (x - average) * _uniform(s2, 1.0 - strength, 1.0 + strength) + average


def _pad_centred(centred, label, size, mean, clip: bool):
    """Pads a mean-subtracted float image with zeros (= the mean colour) and the label with 255."""
    h, w = tf.shape(label)[0], tf.shape(label)[1]
    paddings = [[0, size[0] - h], [0, size[1] - w]]
    image = tf.pad(centred, paddings + [[0, 0]]) + (mean + 0.5)  # +0.5, then truncation rounds.
    if clip:  # Bilinear values stay within 0..255; only jitter can leave it.
        image = tf.clip_by_value(image, 0, 255)
    image = tf.cast(image, tf.uint8)
    label = tf.pad(label, paddings, constant_values=tf.constant(VOID, tf.uint8))
    image.set_shape([size[0], size[1], 3])
    label.set_shape([size[0], size[1]])
    return image, label


def pad_to(image, label, size: tuple[int, int], mean_rgb):
    """Pads uint8 image and label at the bottom/right to ``size`` (mean colour, 255)."""
    mean = tf.constant(mean_rgb, tf.float32)
    return _pad_centred(tf.cast(image, tf.float32) - mean, label, size, mean, clip=False)


def eval_bucket(height: int, width: int, pad_size: tuple[int, int], stride=None):
    """The padded canvas for an eval image: ``pad_size``, or for a larger image
    ``pad_size`` plus the fewest whole ``stride`` steps that cover it (by default
    the next multiple of ``pad_size``; with sliding windows, the window stride).
    Sizes may be symbolic (exported programs pad to it: fcn_jax.export).
    """

    def side(size, pad, step):
        return pad + -(-jax.core.max_dim(size - pad, 0) // step) * step

    stride = stride or pad_size
    return side(height, pad_size[0], stride[0]), side(width, pad_size[1], stride[1])
