"""FCN model: shapes, parameter counts, layer names, initialisation, geometry."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import models
from fcn_jax.models import FCN

# Published parameter counts of the reference nets with 21 classes.
PARAM_COUNTS = {"fcn32s": 136_152_917, "fcn16s": 134_815_994, "fcn8s": 134_489_759}
# torchvision's parameter counts of fcn_resnet50/101 with 21 classes, (backbone, aux head):
# with it the documented num_params, without it measured with torchvision 0.28.
TORCHVISION_FCN_RESNET_COUNTS = {
    ("resnet50", True): 35_322_218,
    ("resnet101", True): 54_314_346,
    ("resnet50", False): 32_957_013,
    ("resnet101", False): 51_949_141,
}


def abstract_init(model, shape=(1, 64, 64, 3)):
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape), train=False), jax.random.key(0))


def small(variant="fcn8s", geometry="same", **kw):
    kw = {"num_classes": 5, "base_width": 4, "fc_width": 16, **kw}
    return FCN(variant=variant, geometry=geometry, **kw)


@pytest.mark.parametrize("variant", models.VARIANTS)
@pytest.mark.parametrize("geometry", models.GEOMETRIES)
def test_full_vgg16_param_counts_and_layer_names(variant, geometry):
    variables = abstract_init(FCN(variant=variant, geometry=geometry))
    params = variables["params"]
    assert models.param_count(params) == PARAM_COUNTS[variant]
    expected_ups = {
        "fcn32s": {"upscore"},
        "fcn16s": {"upscore2", "upscore16"},
        "fcn8s": {"upscore2", "upscore_pool4", "upscore8"},
    }[variant]
    expected_scores = {"fcn32s": {"score_fr"}, "fcn16s": {"score_fr", "score_pool4"}}.get(
        variant, {"score_fr", "score_pool4", "score_pool3"}
    )
    assert set(params) == set(models.BACKBONE_LAYERS) | expected_scores | expected_ups
    assert params["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    assert params["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
    assert params["score_fr"]["kernel"].shape == (1, 1, 4096, 21)
    for name in expected_ups:  # Transposed convs carry no bias.
        f = models.UPSAMPLE_FACTORS[name]
        assert set(params[name]) == {"kernel"}
        assert params[name]["kernel"].shape == (2 * f, 2 * f, 21, 21)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


@pytest.mark.parametrize("variant", models.VARIANTS)
@pytest.mark.parametrize("geometry", models.GEOMETRIES)
@pytest.mark.parametrize("size", [(32, 32), (97, 131), (224, 224), (500, 375), (33, 64)])
def test_full_model_output_matches_input_size(variant, geometry, size):
    model = FCN(variant=variant, geometry=geometry)
    variables = abstract_init(model)
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False),
        variables,
        jax.ShapeDtypeStruct((2, *size, 3), jnp.float32),
    )
    assert out.shape == (2, *size, 21)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("variant", models.VARIANTS)
@pytest.mark.parametrize("geometry", models.GEOMETRIES)
def test_small_model_runs_on_odd_sizes(variant, geometry):
    model = small(variant, geometry)
    x = jax.random.normal(jax.random.key(1), (1, 45, 37, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    # Non-zero score layers, so the skips and crops actually shape the output.
    variables = jax.tree.map(lambda p: p + 0.01, variables)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (1, 45, 37, 5)
    assert np.isfinite(np.asarray(logits)).all()


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = small(dtype=jnp.bfloat16)
    x = jnp.ones((1, 64, 64, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert model.apply(variables, x, train=False).dtype == jnp.float32


def test_score_layers_start_at_zero_so_logits_start_at_zero():
    model = small()
    x = jax.random.normal(jax.random.key(2), (2, 64, 48, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    for name in models.SCORE_LAYERS:
        assert not np.any(np.asarray(variables["params"][name]["kernel"]))
    assert not np.any(np.asarray(model.apply(variables, x, train=False)))


def test_upsampling_is_initialised_bilinear_diagonal():
    variables = small().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    kernel = np.asarray(variables["params"]["upscore8"]["kernel"])
    assert kernel.shape == (16, 16, 5, 5)
    np.testing.assert_allclose(kernel, models.bilinear_kernel(8, 5))
    off_diagonal = kernel.copy()
    off_diagonal[:, :, range(5), range(5)] = 0
    assert not off_diagonal.any()
    # Caffe's 1-D bilinear filter for factor 8 is 1 - |i - 7.5| / 8; the 2-D one its outer product.
    f1 = 1 - np.abs(np.arange(16) - 7.5) / 8
    np.testing.assert_allclose(kernel[:, :, 0, 0], np.outer(f1, f1), rtol=1e-6)


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_upsampling_keeps_a_constant_map_constant(factor):
    up = models.Upsample(3, factor)
    x = jnp.full((1, 6, 5, 3), 2.5)
    variables = up.init(jax.random.key(0), x)
    y = np.asarray(up.apply(variables, x))
    assert y.shape[1:3] == ((6 - 1) * factor + 2 * factor, (5 - 1) * factor + 2 * factor)
    # Away from the borders (more than one factor in), every output is exactly 2.5.
    interior = y[:, factor:-factor, factor:-factor]
    np.testing.assert_allclose(interior, 2.5, rtol=1e-6)
    assert not np.allclose(y[:, 0, 0], 2.5)  # The unpadded border is attenuated.


def test_upsample_has_scatter_semantics_of_caffe_deconvolution():
    """out[i*f + k] += x[i] * w[k]: checked against a loop with random weights."""
    factor, cin, cout = 2, 3, 3
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 4, cin)).astype(np.float32)
    w = rng.normal(size=(4, 4, cin, cout)).astype(np.float32)
    up = models.Upsample(cout, factor)
    y = np.asarray(up.apply({"params": {"kernel": jnp.asarray(w)}}, jnp.asarray(x)))
    expected = np.zeros((1, (3 - 1) * 2 + 4, (4 - 1) * 2 + 4, cout), np.float32)
    for i in range(3):
        for j in range(4):
            expected[0, i * 2 : i * 2 + 4, j * 2 : j * 2 + 4] += np.einsum(
                "c,hwco->hwo", x[0, i, j], w
            )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", [0, 3])
def test_fc6_matmul_equals_convolution(padding):
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, 8))
    mm = models.FC6(16, padding, "matmul")
    conv = models.FC6(16, padding, "conv")
    variables = mm.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda p: p + 0.1, variables)  # Non-zero bias too.
    a, b = mm.apply(variables, x), conv.apply(variables, x)
    assert a.shape == (2, 9 - 6 + 2 * padding, 11 - 6 + 2 * padding, 16)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# The reference prototxt's upsampling layers and the pools they fuse, coarse to fine.
REFERENCE_UPSAMPLES = {
    "fcn32s": ("upscore",),
    "fcn16s": ("upscore2", "upscore16"),
    "fcn8s": ("upscore2", "upscore_pool4", "upscore8"),
}
REFERENCE_SKIPS = {"fcn32s": (), "fcn16s": ("pool4",), "fcn8s": ("pool4", "pool3")}


def caffe_reference(params, images, variant):
    """The reference Caffe net run layer by layer, its crops placed by coordinate maps.

    As Caffe's coord_map does for its Crop layer, every blob carries the map from its
    cells to input pixels, ``pixel = stride * cell + shift``: a convolution or pooling
    (kernel k, pad p) moves it by (k - 1) / 2 - p of its input cells, a deconvolution
    inverts its convolution's map. A crop aligns two maps. Nothing here reads
    models.CAFFE_CROPS.
    """
    dims = ("NHWC", "HWIO", "NHWC")

    def conv(x, name, pad):
        w, b = params[name]["kernel"], params[name]["bias"]
        pads = [(pad, pad)] * 2
        return jax.lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dims) + b

    def crop(big, big_map, size, small_map):
        offset = (small_map[1] - big_map[1]) / big_map[0]
        assert big_map[0] == small_map[0] and offset == int(offset) >= 0, (big_map, small_map)
        o = int(offset)
        return big[:, o : o + size[0], o : o + size[1]]

    x, stride, shift, pools = images, 1, 0.0, {}
    for stage, (names, _) in enumerate(models.VGG16_STAGES, start=1):
        for name in names:
            pad = 100 if name == "conv1_1" else 1
            x, shift = jax.nn.relu(conv(x, name, pad)), shift + stride * (1 - pad)
        h, w = x.shape[1:3]  # Caffe pools in ceil mode: a partial last window counts.
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        shift, stride = shift + stride * 0.5, stride * 2
        pools[f"pool{stage}"] = (x, (stride, shift))
    x, shift = jax.nn.relu(conv(x, "fc6", 0)), shift + stride * 3
    score = conv(jax.nn.relu(conv(x, "fc7", 0)), "score_fr", 0)
    skips = list(REFERENCE_SKIPS[variant])
    for name in REFERENCE_UPSAMPLES[variant]:
        w = params[name]["kernel"]
        f = w.shape[0] // 2  # Kernel 2f, stride f: the inverse of a map (f, (2f - 1) / 2).
        score = jax.lax.conv_transpose(
            score, jnp.flip(w, (0, 1)), (f, f), "VALID", dimension_numbers=dims
        )
        stride, shift = stride // f, shift - stride * (2 * f - 1) / 2 / f
        if skips:
            pool = skips.pop(0)
            feat, feat_map = pools[pool]
            skip = conv(feat, f"score_{pool}", 0)
            score = score + crop(skip, feat_map, score.shape[1:3], (stride, shift))
    return crop(score, (stride, shift), images.shape[1:3], (1, 0.0))


@pytest.mark.parametrize("variant", models.VARIANTS)
def test_caffe_geometry_is_the_reference_net_with_its_coordinate_map_crops(variant, monkeypatch):
    model = small(variant, "caffe")
    images = 50 * jax.random.normal(jax.random.key(5), (1, 45, 37, 3))
    params = model.init(jax.random.key(0), images, train=False)["params"]
    rng = np.random.default_rng(0)  # Random heads, so that every crop shows in the output.
    params = {
        name: {
            k: v + (0 if name in models.BACKBONE_LAYERS else rng.normal(size=v.shape))
            for k, v in layer.items()
        }
        for name, layer in params.items()
    }
    expected = np.asarray(caffe_reference(params, images, variant))
    atol = 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(
        model.apply({"params": params}, images, train=False), expected, rtol=1e-4, atol=atol
    )
    skips, final = models.CAFFE_CROPS[variant]
    for shifted in [
        (skips, final + 1),
        *[(skips[:i] + (o + 1,) + skips[i + 1 :], final) for i, o in enumerate(skips)],
    ]:
        monkeypatch.setitem(models.CAFFE_CROPS, variant, shifted)
        off = np.asarray(model.apply({"params": params}, images, train=False))
        assert np.abs(off - expected).max() > 100 * atol, shifted  # A crop one cell off shows.


def test_at_once_scales_pool_features_before_scoring():
    """With at_once, score_pool3 sees pool3 * 1e-4: so its weights matter 1e4x less."""
    x = jax.random.normal(jax.random.key(3), (1, 64, 64, 3))
    plain, at_once = small(), small(at_once=True)
    variables = plain.init(jax.random.key(0), x, train=False)
    params = flax.core.unfreeze(variables["params"])
    params["score_pool3"]["kernel"] = jnp.ones_like(params["score_pool3"]["kernel"])
    a = plain.apply({"params": params}, x, train=False)
    b = at_once.apply({"params": params}, x, train=False)
    assert float(jnp.abs(a).max()) > 0
    np.testing.assert_allclose(b, a * 1e-4, rtol=1e-3, atol=1e-8)


def test_dropout_uses_the_given_rng_and_only_in_training():
    model = small()
    x = jax.random.normal(jax.random.key(4), (1, 64, 64, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    variables = jax.tree.map(lambda p: p + 0.05, variables)

    def run(key):
        return model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(key)})

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))
    eval_a = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, model.apply(variables, x, train=False))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "fcn4s"}, "variant='fcn4s'"),
        ({"geometry": "valid"}, "geometry='valid'"),
        ({"fc6_impl": "fft"}, "fc6_impl='fft'"),
        ({"variant": "fcn16s", "at_once": True}, "at_once"),
    ],
)
def test_bad_model_arguments_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FCN(**kwargs)


@pytest.mark.parametrize("shape", [(1, 31, 64, 3), (1, 64, 16, 3)])
def test_input_below_minimum_is_rejected(shape):
    model = small()
    with pytest.raises(ValueError, match=r"smaller than the FCN minimum of 32x32"):
        model.init(jax.random.key(0), jnp.zeros(shape), train=False)


def test_non_rgb_input_is_rejected():
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        small().init(jax.random.key(0), jnp.zeros((1, 64, 64)), train=False)


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_upsample_equals_the_dilated_transposed_convolution(factor):
    rng = np.random.default_rng(factor)
    x = jnp.asarray(rng.normal(size=(2, 3, 5, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(2 * factor, 2 * factor, 4, 4)), jnp.float32)
    y = models.Upsample(4, factor).apply({"params": {"kernel": w}}, x)
    reference = jax.lax.conv_transpose(
        x,
        jnp.flip(w, (0, 1)),
        (factor, factor),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    assert y.shape == reference.shape == (2, (3 + 1) * factor, (5 + 1) * factor, 4)
    np.testing.assert_allclose(y, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, padding", [(3, 1), (3, 5), (1, 0), (7, 0), (7, 3)])
def test_conv2d_gradients_equal_xla_convolution(k, padding):
    """The CPU path computes the kernel gradient by im2col; it must equal XLA's."""
    rng = np.random.default_rng(k + padding)
    x = jnp.asarray(rng.normal(size=(2, 9, 11, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w)))

    reference = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), ((padding, padding),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    ours = lambda x, w: models.conv2d(x, w, padding)  # noqa: E731
    np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5, atol=1e-5)
    for a, b in zip(
        jax.grad(loss(ours), argnums=(0, 1))(x, w), jax.grad(loss(reference), argnums=(0, 1))(x, w)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
