"""FCN on dilated ResNet-50/101 (fcn_jax.resnet): torchvision's fcn_resnet50/101.

Parity with a PyTorch restatement of torchvision's definitions
(tests/torch_reference.py) at narrow widths, and with torchvision's own models at
full width where torchvision imports; converters, training on 1 and 8 devices.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="torch is absent: the ResNet parity tests need pip install -r requirements-convert.txt",
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch_reference as ref  # noqa: E402

from fcn_jax import convert, models, optim, resnet, steps  # noqa: E402
from fcn_jax.convert import ConversionError  # noqa: E402
from fcn_jax.normalization import normalize  # noqa: E402
from tests.test_mindspore import relative_errors  # noqa: E402
from tests.test_models import TORCHVISION_FCN_RESNET_COUNTS, abstract_init  # noqa: E402

B = 8  # Narrow base width: conv1 8 channels, layer4 256.
TORCHVISION = ref.import_torchvision()
needs_torchvision = pytest.mark.skipif(
    TORCHVISION is None,
    reason="torchvision is absent: pip install --no-deps torchvision==0.28.0 (the parity "
    "with torchvision's own models; the restatement's parity runs without it)",
)


def _image(h, w, n=1, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def torch_outputs(net, x_nchw) -> dict:
    with torch.no_grad():
        return {
            k: v.numpy().transpose(0, 2, 3, 1) for k, v in net(torch.from_numpy(x_nchw)).items()
        }


def flax_outputs(model, variables, x_nchw) -> dict:
    out = model.apply(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), train=False)
    return {k: np.asarray(v) for k, v in out.items()}


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|."""
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def assert_heads_match(actual: dict, expected: dict, tolerance=1e-4) -> None:
    assert set(actual) == set(expected)
    errors = {k: relative_error(actual[k], expected[k]) for k in expected}
    assert max(errors.values()) < tolerance, errors


@pytest.mark.parametrize("backbone, aux_head", list(TORCHVISION_FCN_RESNET_COUNTS))
def test_full_width_parameter_counts_and_names_are_torchvisions(backbone, aux_head):
    variables = abstract_init(resnet.ResNetFCN(backbone=backbone, aux_head=aux_head))
    assert (
        models.param_count(variables["params"]) == TORCHVISION_FCN_RESNET_COUNTS[backbone, aux_head]
    )
    names = resnet.torchvision_names(backbone, aux_head)
    assert set(variables["params"]) == set(names)
    assert set(variables["batch_stats"]) == {n for n in names if n.endswith("_bn")}
    params = variables["params"]
    assert params["classifier_conv"]["kernel"].shape == (3, 3, 2048, 512)
    assert params["classifier_score"]["kernel"].shape == (1, 1, 512, 21)
    assert params["layer4_2_conv3"]["kernel"].shape == (1, 1, 512, 2048)
    if aux_head:
        assert params["aux_classifier_conv"]["kernel"].shape == (3, 3, 1024, 256)
    assert resnet.backbone_of(params) == backbone


@pytest.mark.parametrize("size, out", [((5, 6), (33, 47)), ((1, 1), (7, 9)), ((4, 4), (32, 32))])
def test_jax_bilinear_resize_is_torch_interpolate_without_align_corners(size, out):
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=out, mode="bilinear", align_corners=False
    )
    actual = jax.image.resize(x.transpose(0, 2, 3, 1), (2, *out, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(
        np.asarray(actual), expected.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "backbone, aux_loss, size",
    [("resnet50", True, (33, 47)), ("resnet50", False, (64, 17)), ("resnet101", True, (47, 33))],
)
def test_converted_restatement_matches_it_in_eval_mode(backbone, aux_loss, size):
    net = ref.fcn_resnet(backbone, aux_loss=aux_loss, base_width=B)
    model, variables = convert.from_torchvision_segmentation(net.state_dict())
    assert (model.backbone, model.aux_head, model.base_width, model.num_classes) == (
        backbone,
        aux_loss,
        B,
        21,
    )
    x = _image(*size, n=2)
    expected = torch_outputs(net, x)
    assert_heads_match(flax_outputs(model, variables, x), expected)
    # The statistics matter: the converter's running means and variances are used.
    shifted = {
        **variables,
        "batch_stats": jax.tree.map(lambda s: s + 0.5, variables["batch_stats"]),
    }
    assert relative_error(flax_outputs(model, shifted, x)["out"], expected["out"]) > 1e-2


@needs_torchvision
@pytest.mark.parametrize("backbone", resnet.BACKBONES)
def test_restatement_is_torchvisions_model(backbone):
    builder = getattr(TORCHVISION.models.segmentation, f"fcn_{backbone}")
    theirs = builder(weights=None, weights_backbone=None, aux_loss=True).eval()
    ours = ref.fcn_resnet(backbone, aux_loss=True, base_width=64)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(ours.state_dict())
    x = _image(33, 47)
    assert_heads_match(torch_outputs(ours, x), torch_outputs(theirs, x), tolerance=1e-6)
    assert (
        sum(p.numel() for p in theirs.parameters()) == TORCHVISION_FCN_RESNET_COUNTS[backbone, True]
    )


@needs_torchvision
def test_converted_torchvision_fcn_resnet50_matches_it():
    net = TORCHVISION.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, aux_loss=True
    )
    ref._randomise(net, torch.Generator().manual_seed(0))  # Random statistics in every BN.
    net.eval()
    model, variables = convert.from_torchvision_segmentation(net.state_dict())
    x = _image(33, 47)
    assert_heads_match(flax_outputs(model, variables, x), torch_outputs(net, x))


def test_train_mode_and_three_sgd_steps_match_torch(tiny_config):
    """fcn_resnet50 trained as torchvision's reference trains it: BatchNorm by the batch
    statistics, running ones updated with the unbiased variance (momentum 0.1), loss
    out + 0.5 aux over the non-void pixels, SGD with momentum and weight decay on every
    parameter.

    The forward pass in float32. The steps in float64 on both sides: a float32 gradient
    of a ReLU network is discontinuous wherever rounding moves a pre-activation across 0
    (torch's float32 gradients of this net differ from its float64 ones by up to 14% for
    most seeds), so only exact arithmetic compares the steps' semantics to 1e-4.
    """
    lr, momentum, weight_decay, aux_weight = 0.02, 0.9, 1e-4, 0.5
    net = ref.fcn_resnet("resnet50", aux_loss=True, base_width=B, seed=5)
    for module in net.modules():  # Dropout draws other masks in torch: none here.
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    model, start = convert.from_torchvision_segmentation(initial)
    model = model.clone(dropout_rate=0.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 64, 3), np.uint8)
    labels = rng.integers(0, 21, (2, 48, 64)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.3] = 255
    x = np.asarray(normalize(images, "torch")).transpose(0, 3, 1, 2)

    net.train()
    expected = torch_outputs(net, x)  # One forward pass, which updates the statistics.
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    outputs, updates = forward(start, x.transpose(0, 2, 3, 1))
    want = convert.from_torchvision_segmentation(net.state_dict())[1]["batch_stats"]
    errors = {
        **{k: relative_error(np.asarray(v), expected[k]) for k, v in outputs.items()},
        **relative_errors(updates["batch_stats"], want),
    }
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda e: -e[1])[:5]

    net = net.double()
    net.load_state_dict(initial)
    sgd = torch.optim.SGD(net.parameters(), lr, momentum=momentum, weight_decay=weight_decay)
    target = torch.from_numpy(labels.astype(np.int64))
    for _ in range(3):
        out = net(torch.from_numpy(x).double())
        loss = torch.nn.functional.cross_entropy(out["out"], target, ignore_index=255)
        loss = loss + aux_weight * torch.nn.functional.cross_entropy(
            out["aux"], target, ignore_index=255
        )
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    want = convert.from_torchvision_segmentation(net.state_dict())[1]
    config = tiny_config(
        model__backbone="resnet50",
        model__aux_loss_weight=aux_weight,
        dataset__normalization="torch",
        optimizer__name="sgd",
        optimizer__schedule="constant",
        optimizer__learning_rate=lr,
        optimizer__momentum=momentum,
        optimizer__weight_decay=weight_decay,
        optimizer__decay_all_parameters=True,
    )
    with jax.enable_x64(True):
        start = jax.tree.map(lambda a: np.asarray(a, np.float64), start)
        model = model.clone(dtype=jnp.float64)
        tx, _ = optim.make_optimizer(config.optimizer, config.num_train_steps, False)
        params = start["params"]
        state = steps.TrainState(0, params, start["batch_stats"], tx.init(params))
        train_step = jax.jit(steps.make_train_step(model, tx, config))
        for _ in range(3):
            state, _ = train_step(state, {"image": images, "label": labels}, jax.random.key(0))
        ours = jax.device_get(steps.variables(state))
    errors = relative_errors(ours, want)
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda e: -e[1])[:5]
    ours, theirs = (jax.tree.map(np.subtract, v, start) for v in (ours, want))
    update_errors = relative_errors(ours, theirs)  # Equal moves, not only small ones.
    assert max(update_errors.values()) < 1e-2, sorted(update_errors.items(), key=lambda e: -e[1])


# ---------------------------------------------------------------------------------------------
# Converters: torchvision's fcn_resnet50/101 and ImageNet resnet50/101 state dicts.


@pytest.fixture(scope="module")
def seg_net():
    return ref.fcn_resnet("resnet50", aux_loss=True, base_width=B, seed=3)


def test_a_saved_state_dict_without_aux_head_gives_out_only(seg_net, tmp_path):
    net = ref.fcn_resnet("resnet50", aux_loss=False, num_classes=5, base_width=B, seed=4)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "fcn.pth")
    model, variables = convert.from_torchvision_segmentation(str(tmp_path / "fcn.pth"))
    assert (model.aux_head, model.num_classes) == (False, 5)
    assert not any(n.startswith("aux_") for n in variables["params"])
    x = _image(40, 29)
    assert_heads_match(flax_outputs(model, variables, x), torch_outputs(net, x))


def _conversion_error(state) -> str:
    with pytest.raises(ConversionError) as e:
        convert.from_torchvision_segmentation(state)
    return str(e.value)


def test_bad_segmentation_state_dicts_are_refused_naming_what_is_wrong(seg_net):
    sd = seg_net.state_dict()
    missing = {k: v for k, v in sd.items() if k != "backbone.layer2.1.bn2.running_var"}
    assert "missing keys ['backbone.layer2.1.bn2.running_var']" in _conversion_error(missing)
    extra = {**sd, "classifier.5.weight": torch.zeros(1)}
    assert "unexpected keys ['classifier.5.weight']" in _conversion_error(extra)
    wrong = {**sd, "backbone.layer1.0.conv2.weight": torch.zeros(B, B, 5, 5)}
    message = _conversion_error(wrong)
    assert "layer1_0_conv2 kernel" in message and "(5, 5, 8, 8)" in message, message
    assert "(3, 3, 8, 8)" in message, message
    cut = {k: v for k, v in sd.items() if not k.startswith("backbone.layer3.5.")}
    assert "5 backbone.layer3 blocks, not those of a ResNet" in _conversion_error(cut)
    with pytest.raises(ConversionError, match=r"21 classes but num_classes=5"):
        convert.from_torchvision_segmentation(sd, num_classes=5)
    assert "layer3 blocks" in _conversion_error(ref.to_torchvision(ref.reference_net("fcn8s")))


def test_imagenet_resnet_loads_as_the_backbone(seg_net):
    whole = convert.from_torchvision_segmentation(seg_net.state_dict())[1]
    model = resnet.ResNetFCN(backbone="resnet50", aux_head=True, base_width=B)
    abstract = convert.abstract_variables(model)
    start = jax.tree.map(lambda a: np.full(a.shape, 0.5, a.dtype), abstract)
    loaded = convert.load_backbone(start, ref.imagenet_resnet_state(seg_net), "torchvision")
    for collection in convert.COLLECTIONS:
        for name, layer in loaded[collection].items():
            source = whole if "classifier" not in name else start
            jax.tree.map(np.testing.assert_array_equal, layer, source[collection][name])
    del_key = {
        k: v for k, v in ref.imagenet_resnet_state(seg_net).items() if k != "layer4.2.conv3.weight"
    }
    with pytest.raises(ConversionError, match=r"missing keys \['layer4.2.conv3.weight'\]"):
        convert.load_backbone(start, del_key, "torchvision")
    with pytest.raises(ConversionError, match=r"conv1 kernel: the torchvision backbone has shape"):
        narrower = ref.fcn_resnet("resnet50", base_width=B // 2)
        convert.load_backbone(start, ref.imagenet_resnet_state(narrower), "torchvision")


@pytest.mark.slow
def test_cli_converts_torchvision_fcn_resnet_and_imagenet_resnet(seg_net, tmp_path):
    from tests.conftest import convert_cli

    torch.save(seg_net.state_dict(), tmp_path / "fcn.pth")
    torch.save(ref.imagenet_resnet_state(seg_net), tmp_path / "resnet50.pth")
    for name in ("fcn", "resnet50"):
        result = convert_cli(
            "--layout=torchvision", f"--input={tmp_path / name}.pth", f"--output={tmp_path / name}"
        )
        assert result.returncode == 0, result.stderr[-2000:]
    whole = convert.from_torchvision_segmentation(seg_net.state_dict())[1]
    for name, heads in (("fcn", True), ("resnet50", False)):
        variables, meta = convert.load_weights(str(tmp_path / name))
        assert (meta["normalization"], meta["backbone"], meta["variant"]) == (
            "torch",
            "resnet50",
            "fcn_resnet50",
        )
        assert ("aux_classifier_score" in variables["params"]) == heads
        for collection in convert.COLLECTIONS:
            for layer, value in variables[collection].items():
                jax.tree.map(np.testing.assert_array_equal, value, whole[collection][layer])
