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


def mmseg_scaled_size(height, width, ratio, img_scale=(2048, 512)):
    """mmsegmentation 0.x Resize(img_scale, ratio_range) for a drawn ratio, restated:
    random_sample_ratio's int box, then mmcv.rescale_size (keep_ratio) with int(x + 0.5)."""
    box = int(img_scale[0] * ratio), int(img_scale[1] * ratio)
    factor = min(max(box) / max(height, width), min(box) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def test_mmseg_resize_on_a_500x375_image_scales_it_0_68_to_2_73_times():
    ratios = np.random.default_rng(0).uniform(0.5, 2.0, 400).astype(np.float32)
    ours = [
        tuple(
            int(transforms.scaled_length(n, transforms.scale_factor(375, 500, r, (2048, 512))))
            for n in (375, 500)
        )
        for r in ratios
    ]
    assert ours == [mmseg_scaled_size(375, 500, float(r)) for r in ratios]
    heights = np.array([h for h, _ in ours])
    # min(2048 r / 500, 512 r / 375) = 1.365 r: 0.68-2.73 times, not the ratio's 0.5-2.
    assert 0.68 * 375 <= heights.min() < 0.7 * 375 and 2.7 * 375 < heights.max() <= 2.731 * 375
    assert mmseg_scaled_size(375, 500, 1.0) == (512, 683)  # The short side to 512.
    # In train_crop: at ratio 1 a 500x375 image is 683x512 and the 512x512 crop has no padding.
    jpeg, label = blocks(height=375, width=500, block=25)
    label[label == 255] = 1
    _, out = crop(jpeg, label, crop_size=(512, 512), scale_range=(1.0, 1.0), scale_base=(2048, 512))
    assert out.shape == (512, 512) and not (out == 255).any()


def class_shares(label):
    counts = np.bincount(label[label != 255].ravel(), minlength=5)
    return counts.max() / counts.sum(), np.count_nonzero(counts)


def test_cat_max_ratio_redraws_crops_that_one_class_dominates():
    """mmsegmentation's RandomCrop(cat_max_ratio=0.75): a crop whose commonest class holds
    75% or more of its labelled pixels, or which holds one class, is drawn again (10 times)."""
    label = np.ones((96, 96), np.uint8)
    label[:, 60:] = 2  # Crops of 48 hold two classes, at most 75% : 25%, only near x = 60.
    label[:8] = 255  # Void is not counted.
    jpeg = tf.io.encode_jpeg(np.where(label[..., None] == 2, 200, 50).astype(np.uint8)).numpy()
    kw = {"crop_size": (48, 48), "scale_range": (1.0, 1.0), "flip": False}
    plain = [class_shares(crop(jpeg, label, seed=(s, 3), **kw)[1]) for s in range(24)]
    ratio = [
        class_shares(crop(jpeg, label, seed=(s, 3), cat_max_ratio=0.75, **kw)[1]) for s in range(24)
    ]
    assert sum(share >= 0.75 for share, _ in plain) >= 12  # Most plain crops are one class.
    assert all(share < 0.75 and classes == 2 for share, classes in ratio), ratio
    # The rule itself, on labels: strictly below the ratio, void left out, one class refused.
    mixed = lambda lab: bool(transforms._mixed_enough(tf.constant(lab, tf.uint8), 0.75))  # noqa: E731
    assert not mixed([1, 1, 1, 2])  # 75%: not below.
    assert mixed([1, 1, 2, 2, 255, 255, 255])
    assert not mixed([1, 1, 1, 255, 255, 255, 255])  # One class.
    assert mixed([1, 1, 2, 3, 3])


def test_photometric_distortion_changes_colours_only_within_range():
    jpeg, label = blocks(seed=4)
    pairs = [
        (
            crop(jpeg, label, seed=(2, s)),
            crop(jpeg, label, seed=(2, s), photometric_distortion=True),
        )
        for s in range(4)
    ]
    for plain, changed in pairs:
        np.testing.assert_array_equal(plain[1], changed[1])  # The same crop, the same labels.
    assert sum(not np.array_equal(plain[0], changed[0]) for plain, changed in pairs) >= 2
    # On grey pixels saturation and hue do nothing: brightness and contrast keep them grey.
    grey = tf.constant(np.full((8, 8, 3), 100.0, np.float32))
    for s in range(8):
        out = transforms.photometric(grey, tf.constant([s, 1], tf.int64)).numpy()
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert 0 <= out.min() and out.max() <= 255 and (out == np.floor(out)).all()
    hue_moves = [
        transforms.photometric(tf.constant([[[200.0, 40.0, 40.0]]]), tf.constant([s, 2], tf.int64))
        .numpy()
        .ravel()
        for s in range(16)
    ]
    assert any(np.argmax(v) != 0 or v[1] != v[2] for v in hue_moves)  # Hue shifted some.


def test_bicubic_resize_of_training_images():
    jpeg, label = blocks(seed=6)
    cubic = crop(jpeg, label, seed=(5, 5), image_resize="bicubic")
    linear = crop(jpeg, label, seed=(5, 5))
    np.testing.assert_array_equal(cubic[1], linear[1])  # Labels: nearest either way.
    assert not np.array_equal(cubic[0], linear[0])
    assert np.abs(cubic[0].astype(int) - linear[0].astype(int)).mean() < 8  # The same image.
