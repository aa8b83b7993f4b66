"""Test-time inference: flips, scales and sliding windows against hand-computed references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import inference, models


def tiny_fcn(**kw):
    model = models.FCN(
        variant="fcn8s", num_classes=5, geometry="same", base_width=4, fc_width=8, **kw
    )
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    # Non-zero score layers, so the logits depend on the image.
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape), params
    )
    return model, params


def logits_fn(model, params):
    return lambda x: model.apply({"params": params}, x, train=False)


def images(shape=(2, 64, 96, 3), seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def test_one_view_is_the_model_logits():
    model, params = tiny_fcn()
    x = images()
    np.testing.assert_array_equal(
        inference.predict_scores(logits_fn(model, params), x), logits_fn(model, params)(x)
    )


def test_flip_averages_the_mirrored_view_mirrored_back():
    model, params = tiny_fcn()
    f, x = logits_fn(model, params), images()
    want = (jax.nn.softmax(f(x)) + jax.nn.softmax(f(x[:, :, ::-1]))[:, :, ::-1]) / 2
    got = inference.predict_scores(f, x, flip=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # So flip TTA is exactly mirror-equivariant, whatever the network.
    mirrored = inference.predict_scores(f, x[:, :, ::-1], flip=True)
    np.testing.assert_allclose(mirrored[:, :, ::-1], got, atol=1e-6)


def test_flip_on_a_mirror_symmetric_input_predicts_as_without():
    """A mirror-symmetric net on a mirror-symmetric image: both views agree, TTA changes nothing."""
    model, params = tiny_fcn(fc6_impl="conv")
    params = jax.tree.map(lambda p: (p + p[:, ::-1]) / 2 if p.ndim == 4 else p, params)
    half = images((2, 64, 48, 3))
    x = jnp.concatenate([half, half[:, :, ::-1]], axis=2)
    f = logits_fn(model, params)
    plain = inference.predict_scores(f, x)
    np.testing.assert_allclose(plain, plain[:, :, ::-1], atol=1e-4)  # The premise holds.
    tta = inference.predict_scores(f, x, flip=True)
    np.testing.assert_array_equal(jnp.argmax(tta, -1), jnp.argmax(plain, -1))
    np.testing.assert_allclose(tta, jax.nn.softmax(plain), atol=1e-5)


def test_scales_average_probabilities_at_the_input_size():
    model, params = tiny_fcn()
    f, x = logits_fn(model, params), images()
    half = jax.image.resize(x, (2, 32, 48, 3), "bilinear")
    back = jax.image.resize(f(half), (2, 64, 96, 5), "bilinear")
    want = (jax.nn.softmax(f(x)) + jax.nn.softmax(back)) / 2
    got = inference.predict_scores(f, x, scales=(1.0, 0.5))
    assert got.shape == (2, 64, 96, 5)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_scaled_sizes_never_go_below_the_fcn_minimum():
    assert inference.scaled_size(64, 100, 0.25) == (32, 32)
    assert inference.scaled_size(512, 384, 1.75) == (896, 672)


@pytest.mark.parametrize("size, window, stride", [(100, 40, 27), (64, 64, 21), (30, 40, 27)])
def test_window_starts_cover_the_axis_flush_with_its_end(size, window, stride):
    starts = inference._starts(size, window, stride)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all() and starts[0] == 0
    assert starts[-1] == max(size - window, 0)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_sliding_windows_put_every_tile_back_in_place():
    """A per-pixel net must give the same scores tiled as whole: tiles land where they came from."""
    w = jax.random.normal(jax.random.key(2), (3, 4))
    seen = []

    def pointwise(x):
        seen.append(x.shape)
        return x @ w

    x = images((2, 100, 70, 3))
    got = inference.predict_scores(pointwise, x, window=(40, 32), stride=(27, 21))
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)
    assert set(seen) == {(2, 40, 32, 3)}  # The net only ever sees windows.


def test_overlapping_windows_average_their_logits():
    """Each window's scores are its own mean: overlaps must average, weighted by coverage."""

    def window_mean(x):
        return jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape)

    x = images((1, 32, 50, 3))
    got = inference.predict_scores(window_mean, x, window=(32, 32), stride=(32, 18))
    # Windows start at x = 0 and 18 (flush with the end): columns 18..31 average both.
    left, right = x[:, :, :32].mean(axis=(1, 2)), x[:, :, 18:].mean(axis=(1, 2))
    np.testing.assert_allclose(got[:, 5, 10], left, atol=1e-6)
    np.testing.assert_allclose(got[:, 5, 25], (left + right) / 2, atol=1e-6)
    np.testing.assert_allclose(got[:, 5, 40], right, atol=1e-6)


def test_window_stride_from_overlap():
    assert inference.window_stride((512, 384), 1 / 3) == (341, 256)
    assert inference.window_stride((512, 512), 0.0) == (512, 512)


@pytest.mark.parametrize(
    "size, box, want",
    [
        ((375, 500), (2048, 512), (512, 683)),  # mmsegmentation: the short side to 512.
        ((500, 375), (2048, 512), (683, 512)),
        ((1000, 200), (2048, 512), (2048, 410)),  # The long side bounds it.
        ((333, 500), (512, 512), (341, 512)),  # The MindSpore zoo: the long side to 512.
    ],
)
def test_fit_size_is_mmcvs_rescale_size(size, box, want):
    assert inference.fit_size(*size, box) == want


def test_the_mindspore_zoos_evaluation_protocol(tiny_config):
    """eval.py of the zoo, restated: RGB pixels normalised by the BGR constants, the long side
    rescaled to the box, padded with zeros to it, logits of the unpadded part resized back."""
    from fcn_jax import metrics, normalization, steps

    config = tiny_config(
        model__backbone="vgg16_bn",
        model__fc_batch_norm=True,
        dataset__normalization="mindspore",
        dataset__eval_normalization="mindspore_rgb",
        dataset__eval_native_size=True,
        inference__resize_to=(64, 64),
        inference__pad_resized=True,
    )
    model = steps.build_model(config)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
        jax.random.key(0)
    )
    rng = np.random.default_rng(0)
    variables["params"] = jax.tree.map(  # Trained-looking scores: predictions vary.
        lambda p: p + 0.3 * rng.standard_normal(p.shape).astype(np.float32), variables["params"]
    )
    batch = {
        "image": rng.integers(0, 256, (1, 40, 56, 3), np.uint8),
        "label": rng.integers(0, 4, (1, 40, 56)).astype(np.uint8),
    }
    got = jax.jit(steps.make_eval_step(model, config))(variables, batch)

    @jax.jit
    def zoo(variables, images):
        mean, std = normalization.MINDSPORE_MEAN_BGR, normalization.MINDSPORE_STD_BGR
        x = (images.astype(jnp.float32) - jnp.float32(mean)) / jnp.float32(std)  # No flip.
        x = jax.image.resize(x, (1, 46, 64, 3), "bilinear", antialias=False)  # 56 -> 64.
        x = jnp.pad(x, ((0, 0), (0, 64 - 46), (0, 0), (0, 0)))
        logits = model.apply(variables, x, train=False)[:, :46]
        return jax.image.resize(logits, (1, 40, 56, 4), "bilinear", antialias=False)

    logits = zoo(variables, batch["image"])
    want = metrics.confusion_matrix(batch["label"], jnp.argmax(logits, -1), 4)
    np.testing.assert_array_equal(got, want)
    assert np.count_nonzero(np.asarray(want).sum(0)) >= 2  # Several classes predicted.
