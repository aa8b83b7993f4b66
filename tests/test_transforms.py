"""Training crops keep image and label aligned, keep void, and are deterministic."""

import numpy as np
import pytest
import tensorflow as tf

from fcn_jax import transforms

MEAN = (123, 117, 104)
# Colour of each class in the test pattern; far apart so bilinear mixing is rare.
COLOURS = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.uint8)


def blocks(height=120, width=90, block=15, seed=0):
    """A label of random class blocks (some void) and an image painted by class."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(COLOURS), (-(-height // block), -(-width // block)))
    coarse[rng.random(coarse.shape) < 0.1] = 255
    label = np.kron(coarse, np.ones((block, block), np.int64))[:height, :width].astype(np.uint8)
    image = np.where(label[..., None] == 255, 128, COLOURS[np.minimum(label, 4)]).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(image, quality=100).numpy()
    return jpeg, label


def crop(jpeg, label, seed=(0, 1), **kw):
    kw = {"crop_size": (64, 64), "scale_range": (0.5, 2.0), "mean_rgb": MEAN, **kw}
    image, out = transforms.train_crop(
        tf.constant(jpeg), tf.constant(label), tf.constant(seed, tf.int64), **kw
    )
    return image.numpy(), out.numpy()


@pytest.mark.parametrize("seed", range(8))
def test_image_and_label_stay_aligned_through_scale_crop_flip(seed):
    jpeg, label = blocks(seed=seed)
    image, out = crop(jpeg, label, seed=(seed, seed + 1))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert out.shape == (64, 64) and out.dtype == np.uint8
    real = out < len(COLOURS)
    assert real.sum() > 200
    # The colour nearest each labelled pixel is its class's colour, except on block edges.
    nearest = np.argmin(
        ((image[..., None, :].astype(int) - COLOURS[None, None].astype(int)) ** 2).sum(-1), -1
    )
    agree = (nearest == out)[real].mean()
    assert agree > 0.9, agree


def test_void_stays_void_and_values_are_never_invented():
    jpeg, label = blocks(seed=3)
    for seed in range(10):
        _, out = crop(jpeg, label, seed=(seed, 7))
        assert set(np.unique(out)) <= set(np.unique(label)) | {255}
    big = crop(jpeg, label, seed=(1, 2), scale_range=(2.0, 2.0))[1]
    assert (big == 255).any()  # Void blocks survive an enlarging crop.


def test_shrunk_image_is_padded_with_mean_colour_and_void():
    jpeg, label = blocks(height=100, width=100, block=10)
    label[:] = 1
    image, out = crop(jpeg, label, scale_range=(0.5, 0.5), flip=False)
    # 100 x 0.5 = 50: the 64x64 crop holds the whole image at the top-left, padding elsewhere.
    assert (out[:50, :50] == 1).all()
    assert (out[50:, :] == 255).all() and (out[:, 50:] == 255).all()
    assert (image[50:, :] == MEAN).all() and (image[:, 50:] == MEAN).all()


def test_enlarged_crop_has_no_padding():
    jpeg, label = blocks(height=100, width=100, block=10)
    label[:] = 2
    image, out = crop(jpeg, label, scale_range=(2.0, 2.0))
    assert (out == 2).all()


def test_same_seed_same_crop_and_different_seed_differs():
    jpeg, label = blocks(seed=5)
    a, b = crop(jpeg, label, seed=(4, 4)), crop(jpeg, label, seed=(4, 4))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = crop(jpeg, label, seed=(4, 5))
    assert not np.array_equal(a[0], c[0])


def test_flip_mirrors_image_and_label_together():
    jpeg, label = blocks(height=64, width=64, block=8)
    flips = 0
    for seed in range(12):
        image, out = crop(jpeg, label, seed=(seed, 0), scale_range=(1.0, 1.0))
        plain = tf.io.decode_jpeg(jpeg, dct_method="INTEGER_ACCURATE").numpy()
        if np.array_equal(out, label[:, ::-1]):
            flips += 1
            np.testing.assert_array_equal(image, plain[:, ::-1])
        else:
            np.testing.assert_array_equal(out, label)
            np.testing.assert_array_equal(image, plain)
    assert 0 < flips < 12


def test_color_jitter_changes_pixels_but_not_labels():
    jpeg, label = blocks(seed=2)
    plain = crop(jpeg, label, seed=(9, 9))
    jittered = crop(jpeg, label, seed=(9, 9), color_jitter=0.3)
    np.testing.assert_array_equal(plain[1], jittered[1])
    assert not np.array_equal(plain[0], jittered[0])


def test_eval_buckets():
    assert transforms.eval_bucket(500, 375, (512, 512)) == (512, 512)
    assert transforms.eval_bucket(513, 100, (512, 512)) == (1024, 512)
    assert transforms.eval_bucket(512, 512, (512, 512)) == (512, 512)
    # Sliding windows of 512 every 341 pixels: the canvas grows by whole strides.
    assert transforms.eval_bucket(600, 300, (512, 512), (341, 341)) == (853, 512)
    assert transforms.eval_bucket(853, 1195, (512, 512), (341, 341)) == (853, 512 + 3 * 341)
