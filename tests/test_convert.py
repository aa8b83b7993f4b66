"""fcn_jax.convert against PyTorch reference nets (tests/torch_reference.py).

Every check compares logits: a converted net must reproduce the reference
net's output on odd input sizes, which exercises the kernel layouts, the
transposed-convolution layout, the Caffe crops and fc6's flatten order.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="torch is absent: the converter tests need pip install -r requirements-convert.txt",
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch_reference as ref  # noqa: E402
from mindspore_fixtures import write_checkpoint  # noqa: E402

from fcn_jax import convert, models  # noqa: E402
from fcn_jax.convert import ConversionError  # noqa: E402

SIZES = ((97, 131), (65, 33))
VARIANTS = (("fcn32s", False), ("fcn16s", False), ("fcn8s", False), ("fcn8s", True))
B, F = 8, 32  # Narrow widths: base (conv1) width and fc width.


def _image(h, w, n=1, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def torch_logits(net, x_nchw):
    with torch.no_grad():
        return net(torch.from_numpy(x_nchw)).numpy().transpose(0, 2, 3, 1)


def flax_logits(params, variant, x_nchw, *, num_classes=21, at_once=False):
    model = convert.model_for(params, variant, num_classes, at_once=at_once)
    out = model.apply({"params": params}, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), train=False)
    return np.asarray(out)


def assert_match(actual, expected):
    assert actual.shape == expected.shape
    atol = 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=atol)


def assert_differs(actual, expected):
    """Far from matching: the check ``assert_match`` makes would catch this."""
    assert np.abs(actual - expected).max() > 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize(
    "variant, at_once", VARIANTS, ids=[v + "_at_once" * a for v, a in VARIANTS]
)
def test_from_torch_state_dict_matches_reference(variant, at_once):
    net = ref.reference_net(variant, at_once=at_once, base_width=B, fc_width=F)
    params = convert.from_torch_state_dict(net.state_dict(), variant, 21, at_once=at_once)

    model = convert.model_for(params, variant, 21, at_once=at_once)
    assert (model.geometry, model.base_width, model.fc_width) == ("caffe", B, F)
    assert (model.variant, model.num_classes, model.at_once) == (variant, 21, at_once)
    # The tree is exactly the model's: same layers, same shapes.
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    init = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    assert jax.tree.map(lambda s: s.shape, init["params"]) == jax.tree.map(np.shape, params)

    for i, (h, w) in enumerate(SIZES):
        x = _image(h, w, n=i + 1, seed=i)
        expected = torch_logits(net, x)
        assert_match(flax_logits(params, variant, x, at_once=at_once), expected)
    if at_once:  # Without the pool scaling the skips are 100x and 10000x too strong.
        assert_differs(flax_logits(params, variant, x, at_once=False), expected)


@pytest.mark.slow  # Full width; the narrow ones above check every layer's conversion.
def test_full_width_fcn8s_matches_reference():
    net = ref.reference_net("fcn8s", base_width=64, fc_width=4096, seed=5)
    params = convert.from_torch_state_dict(net.state_dict(), "fcn8s")
    assert convert.model_for(params, "fcn8s", 21).base_width == 64
    x = _image(37, 45, seed=5)
    expected = torch_logits(net, x)
    del net
    assert_match(flax_logits(params, "fcn8s", x), expected)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_wrapped_and_numpy_state_dicts():
    net = ref.reference_net("fcn16s", base_width=4, fc_width=16, seed=2)
    sd = net.state_dict()
    bare = convert.from_torch_state_dict(sd, "fcn16s")
    as_numpy = {k: v.numpy() for k, v in sd.items()}
    _assert_trees_equal(convert.from_torch_state_dict(as_numpy, "fcn16s"), bare)
    # A pytorch-fcn training checkpoint.
    checkpoint = {"epoch": 3, "iteration": 1000, "arch": "FCN16s", "model_state_dict": sd}
    _assert_trees_equal(convert.from_torch_state_dict(checkpoint, "fcn16s"), bare)
    checkpoint = {"model_state_dict": as_numpy}
    _assert_trees_equal(convert.from_torch_state_dict(checkpoint, "fcn16s"), bare)
    for leaf in jax.tree.leaves(bare):
        assert np.asarray(leaf).dtype == np.float32


# ---------------------------------------------------------------------------------------------
# load_backbone: the reference FCN-8s's trunk re-exported in each layout.

BACKBONE_LAYERS = models.BACKBONE_LAYERS


def test_reference_exports_follow_each_layout():
    """The exports feed fc6 the way torchvision's Linear and Keras' Flatten (H, W, C) do."""
    net = ref.reference_net("fcn8s", base_width=B, fc_width=F, seed=3)
    x = torch.from_numpy(_image(65, 33, seed=3))
    tv = ref.TorchvisionVGG16(B, F)
    tv.load_state_dict(ref.to_torchvision(net), strict=True)
    with torch.no_grad():
        fc7 = net.trunk(x)[2]
        np.testing.assert_allclose(tv.fc7(x).numpy(), fc7.numpy(), rtol=1e-5, atol=1e-5)
        pool5 = tv.features(x)  # (1, C, h, w)
        patch = pool5[0, :, 1:8, :7]  # The 7x7 window behind fc6's output cell (1, 0).
        kernel, bias = ref.keras_weights(net)["fc1"]
        keras_fc6 = patch.permute(1, 2, 0).reshape(-1).numpy() @ kernel + bias
        fc6 = net.fc6(pool5)[0, :, 1, 0].numpy()
    np.testing.assert_allclose(keras_fc6, fc6, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def backbone_case():
    """(reference net, its params with the backbone of another net, input, reference logits)."""
    net = ref.reference_net("fcn8s", base_width=B, fc_width=F, seed=3)
    target = convert.from_torch_state_dict(net.state_dict(), "fcn8s")
    other = convert.from_torch_state_dict(
        ref.reference_net("fcn8s", base_width=B, fc_width=F, seed=4).state_dict(), "fcn8s"
    )
    start = {k: (other[k] if k in BACKBONE_LAYERS else target[k]) for k in target}
    x = _image(65, 33, seed=3)
    expected = torch_logits(net, x)
    assert_differs(flax_logits(start, "fcn8s", x), expected)
    return net, start, x, expected


def load_backbone(params, source, layout):
    """convert.load_backbone on the variables of a model without BatchNorm."""
    return convert.load_backbone({"params": params, "batch_stats": {}}, source, layout)["params"]


def _torchvision_file(net, tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(ref.to_torchvision(net), path)
    return str(path)


def _caffe_flat_fc6_file(net, tmp_path):
    sd = ref.backbone_state(net)
    sd["fc6.weight"] = sd["fc6.weight"].reshape(F, -1)  # (F, C*49), (C, H, W) order.
    sd["fc8.weight"] = torch.zeros(1000, F)  # A classifier beside the backbone is ignored.
    sd["fc8.bias"] = torch.zeros(1000)
    path = tmp_path / "vgg16_caffe.pth"
    torch.save(sd, path)
    return path


def _keras_file(net, tmp_path, *, model_weights=False, fc6_order="HWC"):
    path = tmp_path / "vgg16_weights.h5"
    ref.write_keras_h5(path, ref.keras_weights(net, fc6_order), model_weights=model_weights)
    return str(path)


SOURCES = {
    "torchvision_path": ("torchvision", _torchvision_file),
    "torchvision_dict": ("torchvision", lambda net, _: ref.to_torchvision(net)),
    "caffe_dict": ("caffe", lambda net, _: ref.backbone_state(net)),
    "caffe_flat_fc6_path": ("caffe", _caffe_flat_fc6_file),
    # pytorch-fcn's vgg16_from_caffe.pth: Caffe weights (BGR inputs) in torchvision's names.
    "caffe_torchvision_names": ("caffe", _torchvision_file),
    "keras": ("keras", _keras_file),
    "keras_model_weights": ("keras", lambda n, p: _keras_file(n, p, model_weights=True)),
}


@pytest.mark.parametrize("source", SOURCES)
def test_load_backbone_matches_reference(source, backbone_case, tmp_path):
    net, start, x, expected = backbone_case
    layout, make = SOURCES[source]
    before = jax.tree.map(np.array, start)
    loaded = load_backbone(start, make(net, tmp_path), layout)
    _assert_trees_equal(start, before)  # The input tree is left alone.
    assert set(loaded) == set(start)
    for name in set(start) - set(BACKBONE_LAYERS):  # Heads pass through.
        _assert_trees_equal(loaded[name], start[name])
    assert_match(flax_logits(loaded, "fcn8s", x), expected)


def _transposed_fc6_torchvision(net, _):
    sd = ref.to_torchvision(net)
    w = ref.backbone_state(net)["fc6.weight"]  # (F, C, 7, 7), flattened (H, W, C): wrong.
    sd["classifier.0.weight"] = w.permute(0, 2, 3, 1).reshape(F, -1)
    return sd


WRONG_FC6 = {
    "torchvision_hwc": ("torchvision", _transposed_fc6_torchvision),
    "keras_chw": ("keras", lambda n, p: _keras_file(n, p, fc6_order="CHW")),
}


@pytest.mark.parametrize("source", WRONG_FC6)
def test_wrong_fc6_flatten_order_is_caught(source, backbone_case, tmp_path):
    """The parity check above is sensitive to fc6's flatten order."""
    net, start, x, expected = backbone_case
    layout, make = WRONG_FC6[source]
    loaded = load_backbone(start, make(net, tmp_path), layout)
    assert_differs(flax_logits(loaded, "fcn8s", x), expected)


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.fixture(scope="module")
def small_state():
    return ref.reference_net("fcn8s", base_width=B, fc_width=F, seed=6).state_dict()


def _numbers(shape):
    """A regex for a shape however it is printed: (16, 8, 5, 5), [16, 8, 5, 5], ..."""
    return r"\D+".join(str(d) for d in shape)


def _names_shape(message, torch_shape):
    """The message gives ``torch_shape`` in the PyTorch or the Flax (kH, kW, in, out) layout."""
    flax_shape = tuple(torch_shape[i] for i in (2, 3, 1, 0))
    return any(re.search(_numbers(s), message) for s in (torch_shape, flax_shape))


@pytest.mark.parametrize("layout", convert.LAYOUTS)
def test_wrong_file_type(layout, backbone_case, tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(ConversionError):
        load_backbone(backbone_case[1], str(path), layout)
    assert issubclass(ConversionError, ValueError)


def test_missing_keys_are_listed(small_state):
    sd = dict(small_state)
    del sd["conv3_2.weight"], sd["fc7.bias"]
    with pytest.raises(ConversionError) as e:
        convert.from_torch_state_dict(sd, "fcn8s")
    assert "conv3_2.weight" in str(e.value) and "fc7.bias" in str(e.value)


def test_missing_backbone_key_is_listed(backbone_case):
    net, start, _, _ = backbone_case
    sd = ref.to_torchvision(net)
    del sd["features.10.weight"]
    with pytest.raises(ConversionError, match=re.escape("features.10.weight")):
        load_backbone(start, sd, "torchvision")


def test_unexpected_key_is_named(small_state):
    sd = dict(small_state, **{"score_extra.weight": torch.zeros(21, 8, 1, 1)})
    with pytest.raises(ConversionError, match=re.escape("score_extra.weight")):
        convert.from_torch_state_dict(sd, "fcn8s")


def test_shape_mismatch_names_layer_and_shapes(small_state):
    sd = dict(small_state)
    assert tuple(sd["conv2_1.weight"].shape) == (2 * B, B, 3, 3)
    sd["conv2_1.weight"] = torch.zeros(2 * B, B, 5, 5)
    with pytest.raises(ConversionError) as e:
        convert.from_torch_state_dict(sd, "fcn8s")
    message = str(e.value)
    assert "conv2_1" in message
    assert _names_shape(message, (2 * B, B, 5, 5)), message
    assert _names_shape(message, (2 * B, B, 3, 3)), message


def test_backbone_shape_mismatch_names_layer_and_shapes(backbone_case):
    net = ref.reference_net("fcn8s", base_width=B // 2, fc_width=F, seed=7)
    start = backbone_case[1]
    with pytest.raises(ConversionError) as e:
        load_backbone(start, ref.to_torchvision(net), "torchvision")
    message = str(e.value)
    assert "conv1_1" in message
    assert _names_shape(message, (B // 2, 3, 3, 3)), message
    assert _names_shape(message, (B, 3, 3, 3)), message


def test_num_classes_mismatch(small_state):
    with pytest.raises(ConversionError) as e:
        convert.from_torch_state_dict(small_state, "fcn8s", num_classes=5)
    message = str(e.value)
    assert "class" in message and re.search(r"\b21\b", message) and re.search(r"\b5\b", message)


# ---------------------------------------------------------------------------------------------
# BatchNorm networks: torchvision's vgg16_bn, the MindSpore FCN-8s tutorial.


def test_torchvision_vgg16_bn_backbone_matches_reference(tmp_path):
    """A vgg16_bn's convolutions and BatchNorms (random statistics) load into FCN-8s."""
    net = ref.reference_net("fcn8s", batch_norm=True, base_width=B, fc_width=F, seed=7)
    model = models.FCN(variant="fcn8s", backbone="vgg16_bn", base_width=B, fc_width=F)
    state = {k: v for k, v in net.state_dict().items() if "_bn." not in k}
    heads = convert.from_torch_state_dict(state, "fcn8s")  # Heads; its plain backbone is replaced.
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), convert.abstract_variables(model))
    head_layers = [n for n in models.HEAD_LAYERS if n in heads]
    start = convert.merge_into(zeros, {"params": heads}, head_layers)[0]
    path = tmp_path / "vgg16_bn.pth"
    torch.save(ref.to_torchvision(net), path)
    variables = convert.load_backbone(start, str(path), "torchvision")
    assert set(variables["batch_stats"]) == {f"{n}_bn" for n in ref.CONV_NAMES}
    x = _image(65, 33, seed=7)
    out = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    assert_match(np.asarray(out), torch_logits(net, x))
    with pytest.raises(ConversionError, match=r"conv1_1_bn.*missing from .* the model"):
        load_backbone(heads, str(path), "torchvision")  # A plain VGG-16 FCN has no BatchNorms.


def _mindspore_file(net, tmp_path, **extra):
    path = tmp_path / "fcn8s.ckpt"
    write_checkpoint(path, {**ref.to_mindspore(net), **extra})
    return path


@pytest.mark.parametrize("size", [(64, 96), (96, 64)])
def test_mindspore_tutorial_checkpoint_matches_the_restated_network(size, tmp_path):
    net = ref.mindspore_tutorial_net(num_classes=21, base_width=B, fc_width=F, seed=8)
    # What MindSpore's ModelCheckpoint saves beside the network is skipped.
    extra = {
        "moments.conv1.0.weight": np.zeros((B, 3, 3, 3), np.float32),
        "global_step": np.zeros((1,), np.float32),
        "learning_rate": np.full((1,), 0.015, np.float32),
    }
    model, variables = convert.from_mindspore_checkpoint(_mindspore_file(net, tmp_path, **extra))
    assert (model.backbone, model.fc_batch_norm, model.geometry) == ("vgg16_bn", True, "same")
    assert "bias" not in variables["params"]["conv1_1"]  # The tutorial's convolutions have none.
    x = _image(*size, seed=8)
    out = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    assert_match(np.asarray(out), torch_logits(net, x))


def test_mindspore_checkpoint_errors_name_what_is_wrong(tmp_path):
    net = ref.mindspore_tutorial_net(num_classes=21, base_width=B, fc_width=F, seed=9)
    tensors = ref.to_mindspore(net)
    with pytest.raises(ConversionError, match="score_fr has 21 classes but num_classes=5"):
        convert.from_mindspore_checkpoint(_mindspore_file(net, tmp_path), num_classes=5)
    missing = {k: v for k, v in tensors.items() if not k.startswith("conv3.4.")}
    write_checkpoint(tmp_path / "missing.ckpt", missing)
    with pytest.raises(ConversionError, match=r"missing keys \['conv3.4.beta', 'conv3.4.gamma'"):
        convert.from_mindspore_checkpoint(tmp_path / "missing.ckpt")
    write_checkpoint(
        tmp_path / "extra.ckpt", {**tensors, "aux_head.weight": tensors["score_fr.weight"]}
    )
    with pytest.raises(ConversionError, match=r"unexpected keys \['aux_head.weight'\]"):
        convert.from_mindspore_checkpoint(tmp_path / "extra.ckpt")
    wrong = dict(tensors, **{"conv2.0.weight": np.zeros((2 * B, B + 1, 3, 3), np.float32)})
    write_checkpoint(tmp_path / "shape.ckpt", wrong)
    with pytest.raises(ConversionError, match=r"layer conv2_1 kernel"):
        convert.from_mindspore_checkpoint(tmp_path / "shape.ckpt")
    data = (tmp_path / "fcn8s.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=r"cut.ckpt is not a MindSpore checkpoint"):
        convert.from_mindspore_checkpoint(tmp_path / "cut.ckpt")


def test_cli_converts_a_torchvision_vgg16_bn_backbone(tmp_path):
    from tests.conftest import convert_cli

    net = ref.reference_net("fcn8s", batch_norm=True, base_width=B, fc_width=F, seed=10)
    torch.save(ref.to_torchvision(net), tmp_path / "vgg16_bn.pth")
    result = convert_cli(
        "--layout=torchvision", f"--input={tmp_path / 'vgg16_bn.pth'}", f"--output={tmp_path / 'w'}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    variables, meta = convert.load_weights(str(tmp_path / "w"))
    assert (meta["normalization"], meta["backbone"], meta["fc_batch_norm"]) == (
        "torch",
        "vgg16_bn",
        False,
    )
    assert meta["geometry"] is None and sorted(variables["batch_stats"]) == sorted(
        f"{n}_bn" for n in ref.CONV_NAMES
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["conv2_1_bn"]["var"], net.conv2_1_bn.running_var.numpy()
    )
