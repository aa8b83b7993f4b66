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

IMAGE_RESIZES = ("bilinear", "bicubic")  # tf.image.resize methods for training images.


def invalid_labels(labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, pixel counts) of the labels other than 0..num_classes-1 and 255 (void)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=VOID + 1)
    counts[:num_classes] = counts[VOID] = 0
    bad = np.flatnonzero(counts)
    return bad, counts[bad]


def _uniform(seed, minval, maxval, dtype=tf.float32):
    return tf.random.stateless_uniform([], seed, minval=minval, maxval=maxval, dtype=dtype)


def scale_factor(height, width, ratio, scale_base=()):
    """The factor an image of height x width is scaled by for a random ``ratio``.

    Without ``scale_base``, the ratio itself. With ``scale_base`` (long, short), as
    mmsegmentation's Resize(img_scale=scale_base, ratio_range): the box
    (int(long * ratio), int(short * ratio)), and the largest factor that fits the image
    inside it keeping its aspect ratio (mmcv.rescale_size). Works on numbers and tensors.
    """
    if not scale_base:
        return ratio
    long_side, short_side = max(scale_base), min(scale_base)
    box_long = tf.floor(long_side * ratio)
    box_short = tf.floor(short_side * ratio)
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    return tf.minimum(box_long / tf.maximum(height, width), box_short / tf.minimum(height, width))


def scaled_length(length, factor):
    """round(length * factor), halves up as mmcv rounds (int(x + 0.5)), at least 1."""
    scaled = tf.floor(tf.cast(length, tf.float32) * factor + 0.5)
    return tf.maximum(tf.cast(scaled, tf.int32), 1)


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
    scale_base: tuple[int, int] | tuple = (),
    cat_max_ratio: float = 1.0,
    photometric_distortion: bool = False,
    image_resize: str = "bilinear",
):
    """JPEG bytes and a uint8 [H, W] label -> uint8 [ch, cw, 3] image and [ch, cw] label.

    Scale by ``scale_factor`` of a ratio ~ U(scale_range) (``image_resize`` for the image,
    nearest for the label), pad to the crop size (image with ``mean_rgb``, label with
    255), take a random crop, flip horizontally with probability 1/2, optionally jitter
    brightness/contrast or apply ``photometric_distortion`` (mmsegmentation's).

    With ``cat_max_ratio`` < 1 a crop whose commonest class covers that share of its
    labelled pixels or more (or that holds one class only) is drawn again, up to 10 times,
    the last draw kept: mmsegmentation's RandomCrop(cat_max_ratio).
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    ch, cw = crop_size
    shape = tf.image.extract_jpeg_shape(image_bytes)
    h, w = shape[0], shape[1]
    s = scale_factor(h, w, _uniform(seeds[0], scale_range[0], scale_range[1]), scale_base)
    hs, ws = scaled_length(h, s), scaled_length(w, s)

    def offsets(attempt):
        """The crop's offset in the scaled-and-padded image (padding is at the bottom/right)."""
        sy, sx = seeds[1], seeds[2]
        if attempt is not None:
            sy = tf.random.experimental.stateless_fold_in(sy, attempt)
            sx = tf.random.experimental.stateless_fold_in(sx, attempt)
        oy = _uniform(sy, 0, tf.maximum(hs, ch) - ch + 1, tf.int32)
        ox = _uniform(sx, 0, tf.maximum(ws, cw) - cw + 1, tf.int32)
        return oy, ox

    def window(oy, ox):
        """(y0, y1, x0, x1) in original pixels of the part that lands in the crop, and its
        (height, width) in the crop."""
        out_h, out_w = tf.minimum(ch, hs - oy), tf.minimum(cw, ws - ox)
        y0 = tf.cast(tf.floor(tf.cast(oy, tf.float32) / s), tf.int32)
        x0 = tf.cast(tf.floor(tf.cast(ox, tf.float32) / s), tf.int32)
        y1 = tf.minimum(h, tf.cast(tf.math.ceil(tf.cast(oy + out_h, tf.float32) / s), tf.int32))
        x1 = tf.minimum(w, tf.cast(tf.math.ceil(tf.cast(ox + out_w, tf.float32) / s), tf.int32))
        y0, x0 = tf.minimum(y0, y1 - 1), tf.minimum(x0, x1 - 1)
        return (y0, y1, x0, x1), tf.stack([out_h, out_w])

    def label_crop(oy, ox):  # Unflipped: the class counts are the same.
        (y0, y1, x0, x1), size = window(oy, ox)
        return tf.image.resize(label[y0:y1, x0:x1, None], size, method="nearest")[..., 0]

    oy, ox = offsets(None)
    if cat_max_ratio < 1:

        def redraw(attempt, oy, ox):
            return (attempt + 1, *offsets(attempt + 1))

        def rejected(attempt, oy, ox):
            return (attempt < 10) & ~_mixed_enough(label_crop(oy, ox), cat_max_ratio)

        _, oy, ox = tf.while_loop(rejected, redraw, (tf.constant(0), oy, ox))
    (y0, y1, x0, x1), size = window(oy, ox)
    image = tf.image.decode_and_crop_jpeg(
        image_bytes,
        tf.stack([y0, x0, y1 - y0, x1 - x0]),
        channels=3,
        dct_method="INTEGER_ACCURATE",  # As PIL decodes.
    )
    label = label[y0:y1, x0:x1]
    if flip:  # On the small window: resizing commutes with mirroring.
        do_flip = _uniform(seeds[3], 0.0, 1.0) < 0.5
        image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
        label = tf.cond(do_flip, lambda: label[:, ::-1], lambda: label)
    mean = tf.constant(mean_rgb, tf.float32)
    # Resizing is linear, so subtract the mean first and pad the centred image with zeros.
    centred = tf.image.resize(tf.cast(image, tf.float32) - mean, size, method=image_resize)
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    if color_jitter > 0:
        centred = _jitter(centred, seeds[4], color_jitter)
    if photometric_distortion:
        centred = photometric(centred + mean, seeds[5]) - mean
    clip = color_jitter > 0 or image_resize != "bilinear"  # Bilinear stays within 0..255.
    return _pad_centred(centred, label, crop_size, mean, clip=clip)


def _mixed_enough(label, cat_max_ratio: float):
    """Whether the labelled (non-void) pixels hold two classes or more, none of them
    ``cat_max_ratio`` of them or more."""
    counts = tf.math.bincount(
        tf.reshape(tf.cast(label, tf.int32), [-1]), minlength=VOID + 1, maxlength=VOID + 1
    )[:VOID]
    total = tf.cast(tf.reduce_sum(counts), tf.float32)
    most = tf.cast(tf.reduce_max(counts), tf.float32)
    return (tf.math.count_nonzero(counts) > 1) & (most < cat_max_ratio * total)


def photometric(image, seed):
    """mmsegmentation's PhotoMetricDistortion of a float RGB image in 0..255.

    Each with probability 1/2: brightness + U(-32, 32), contrast x U(0.5, 1.5) (before the
    colour steps or after them, at random), saturation x U(0.5, 1.5), hue + an integer in
    [-18, 18) of OpenCV's 180 steps; after each the image is clipped and truncated to whole
    values, as mmsegmentation's uint8 steps. Saturation and hue go through tf.image's float
    HSV, not OpenCV's uint8 HSV (hue in 2-degree steps): values can differ by a rounding step.
    """
    s = tf.unstack(tf.random.experimental.stateless_split(seed, 9))

    def maybe(k, fn, x):
        return tf.cond(_uniform(s[k], 0.0, 1.0) < 0.5, lambda: fn(x), lambda: x)

    def whole(x):
        return tf.floor(tf.clip_by_value(x, 0.0, 255.0))

    def in_hsv(x, channel, fn):
        hsv = tf.unstack(tf.image.rgb_to_hsv(x / 255.0), axis=-1)
        hsv[channel] = fn(hsv[channel])
        return tf.round(tf.image.hsv_to_rgb(tf.stack(hsv, -1)) * 255.0)

    def brightness(x):
        return whole(x + _uniform(s[4], -32.0, 32.0))

    def contrast(x):
        return whole(x * _uniform(s[5], 0.5, 1.5))

    def saturation(x):
        return in_hsv(x, 1, lambda v: whole(v * 255.0 * _uniform(s[6], 0.5, 1.5)) / 255.0)

    def hue(x):
        delta = tf.cast(_uniform(s[7], -18, 18, tf.int32), tf.float32) / 180.0
        return in_hsv(x, 0, lambda h: tf.math.floormod(h + delta, 1.0))

    x = maybe(0, brightness, whole(tf.round(image)))  # From the uint8 image mmseg has.
    contrast_first = _uniform(s[8], 0.0, 1.0) < 0.5
    x = tf.cond(contrast_first, lambda: maybe(1, contrast, x), lambda: x)
    x = maybe(3, hue, maybe(2, saturation, x))
    return tf.cond(contrast_first, lambda: x, lambda: maybe(1, contrast, x))


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
