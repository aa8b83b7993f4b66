"""Import pretrained weights: the published FCN nets and ImageNet VGG-16 backbones.

``from_torch_state_dict`` reads a whole FCN in the PyTorch layout of the widely
shared ports of the Caffe models (pytorch-fcn); ``from_mindspore_checkpoint`` the
network of the MindSpore FCN-8s tutorial (VGG-16 with BatchNorm);
``from_torchvision_segmentation`` torchvision's fcn_resnet50/101; ``load_backbone``
copies a VGG-16 (conv1_1 ... fc7) from torchvision (``vgg16`` or ``vgg16_bn``), a
Caffe port in that PyTorch layout, or a Keras ``.h5``, or a torchvision ImageNet
``resnet50``/``resnet101``, into FCN variables.

Weights travel as Flax variables, ``{"params": ..., "batch_stats": ...}``: a
BatchNorm after ``layer`` is ``<layer>_bn``, its scale and offset in ``params``
and its running mean and variance in ``batch_stats``.

Layouts: PyTorch convolutions are (out, in, kH, kW), Flax's (kH, kW, in, out);
PyTorch/Caffe transposed convolutions are (in, out, kH, kW) with scatter
semantics, which ``models.Upsample`` shares, so they need a transpose and no
spatial flip. VGG's fc6 as a Linear layer is flattened from (C, 7, 7) in
torchvision and from (7, 7, C) in Keras.
"""

from __future__ import annotations

import jax
import numpy as np

from fcn_jax import files, models, resnet

LAYOUTS = ("torchvision", "caffe", "keras", "mindspore")
_CONVS = tuple(n for names, _ in models.VGG16_STAGES for n in names)
# torchvision's vgg16().features indices of the 13 convolutions.
_TORCHVISION_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# vgg16_bn().features: each convolution is followed by its BatchNorm at the next index.
_TORCHVISION_BN_FEATURES = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
_KERAS_CONVS = tuple(
    f"block{s}_conv{i}"
    for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for i in range(1, n + 1)
)
_HEADS = {
    "fcn32s": ("score_fr",),
    "fcn16s": ("score_fr", "score_pool4"),
    "fcn8s": ("score_fr", "score_pool4", "score_pool3"),
}
_UPSAMPLES = {
    "fcn32s": ("upscore",),
    "fcn16s": ("upscore2", "upscore16"),
    "fcn8s": ("upscore2", "upscore_pool4", "upscore8"),
}


class ConversionError(ValueError):
    """Weights that do not fit the requested model; nothing is written."""


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # A torch tensor, without importing torch.
        value = value.detach().cpu().numpy()
    return np.asarray(value, np.float32)


def _unwrap(state_dict) -> dict[str, np.ndarray]:
    if isinstance(state_dict, dict) and "model_state_dict" in state_dict:
        state_dict = state_dict["model_state_dict"]
    if not isinstance(state_dict, dict):
        raise ConversionError(f"expected a state dict, got {type(state_dict).__name__}")
    return {k.removeprefix("module."): _numpy(v) for k, v in state_dict.items()}


def _conv(weight: np.ndarray) -> np.ndarray:
    """PyTorch (out, in, kH, kW) -> Flax (kH, kW, in, out)."""
    return weight.transpose(2, 3, 1, 0)


def _fc6_from_flat(weight: np.ndarray, order: str) -> np.ndarray:
    """A (in, out) matrix over flattened 7x7 patches -> a (7, 7, C, out) kernel."""
    features, out = weight.shape
    if features % 49:
        raise ConversionError(f"fc6 has {features} inputs, not a multiple of 7*7")
    c = features // 49
    if order == "chw":  # torchvision / PyTorch flatten
        return weight.reshape(c, 7, 7, out).transpose(1, 2, 0, 3)
    return weight.reshape(7, 7, c, out)  # Keras (channels last) flatten


def _read_torch(source) -> dict[str, np.ndarray]:
    if isinstance(source, dict):
        return _unwrap(source)
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"reading {source} needs PyTorch: pip install -r requirements-convert.txt"
        ) from e
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many kinds for a bad file.
        raise ConversionError(f"{source} is not a PyTorch state dict file: {e}") from e
    return _unwrap(loaded)


def _expect_keys(state: dict, expected: set[str], what: str, ignore=()) -> None:
    missing = sorted(expected - set(state))
    unexpected = sorted(k for k in set(state) - expected if not k.startswith(tuple(ignore)))
    if missing:
        raise ConversionError(f"{what}: missing keys {missing}")
    if unexpected:
        raise ConversionError(f"{what}: unexpected keys {unexpected}")


def _torch_backbone(state: dict) -> dict[str, dict[str, np.ndarray]]:
    """conv1_1 ... fc7 from the pytorch-fcn / Caffe-port layout."""
    params = {
        n: {"kernel": _conv(state[f"{n}.weight"]), "bias": state[f"{n}.bias"]} for n in _CONVS
    }
    fc6 = state["fc6.weight"]
    fc6 = _conv(fc6) if fc6.ndim == 4 else _fc6_from_flat(fc6.T, "chw")
    fc7 = state["fc7.weight"]
    fc7 = _conv(fc7) if fc7.ndim == 4 else fc7.T[None, None]
    params["fc6"] = {"kernel": fc6, "bias": state["fc6.bias"]}
    params["fc7"] = {"kernel": fc7, "bias": state["fc7.bias"]}
    return params


def from_torch_state_dict(state_dict, variant: str, num_classes: int = 21, at_once: bool = False):
    """A whole FCN from the PyTorch layout of the published models -> Flax ``params``."""
    if variant not in _HEADS:
        raise ConversionError(f"variant {variant!r} is not one of {tuple(_HEADS)}")
    state = _read_torch(state_dict)
    expected = {
        f"{n}.{p}" for n in (*_CONVS, "fc6", "fc7", *_HEADS[variant]) for p in ("weight", "bias")
    }
    expected |= {f"{n}.weight" for n in _UPSAMPLES[variant]}
    present = {k.split(".")[0] for k in state}
    for other, heads in _UPSAMPLES.items():  # A checkpoint of another variant says so.
        if other != variant and set(heads) <= present and not set(_UPSAMPLES[variant]) <= present:
            raise ConversionError(
                f"these weights are an {other} (layers {sorted(heads)}), not an {variant}"
            )
    _expect_keys(state, expected, f"{variant} state dict")
    found = state["score_fr.weight"].shape[0]
    if found != num_classes:
        raise ConversionError(
            f"score_fr has {found} classes but num_classes={num_classes}; convert with "
            f"num_classes={found}, or load only the backbone with load_backbone(...)"
        )
    params = _torch_backbone(state)
    for name in _HEADS[variant]:
        params[name] = {"kernel": _conv(state[f"{name}.weight"]), "bias": state[f"{name}.bias"]}
    for name in _UPSAMPLES[variant]:
        params[name] = {"kernel": _transposed(state[f"{name}.weight"])}
    _check_shapes({"params": params}, model_for(params, variant, num_classes, at_once))
    return params


def _transposed(weight: np.ndarray) -> np.ndarray:
    """PyTorch/MindSpore transposed convolution (in, out, kH, kW) -> (kH, kW, in, out), no flip."""
    return weight.transpose(2, 3, 0, 1)


def model_for(params, variant: str, num_classes: int, at_once: bool = False) -> models.FCN:
    """The caffe-geometry FCN whose shapes ``params`` has (widths read from conv1_1, fc6)."""
    return models.FCN(
        variant=variant,
        num_classes=num_classes,
        geometry="caffe",
        at_once=at_once,
        base_width=int(np.shape(params["conv1_1"]["kernel"])[-1]),
        fc_width=int(np.shape(params["fc6"]["kernel"])[-1]),
    )


def abstract_variables(model: models.FCN) -> dict:
    """The model's variables as ShapeDtypeStructs (``batch_stats`` is {} without BatchNorm)."""
    images = jax.ShapeDtypeStruct((1, models.MIN_INPUT_SIZE, models.MIN_INPUT_SIZE, 3), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def _check_shapes(variables, model: models.FCN) -> None:
    for collection, layers in abstract_variables(model).items():
        for name, layer in layers.items():
            if name not in variables.get(collection, {}):
                raise ConversionError(f"layer {name} is missing")
            for key, spec in layer.items():
                if key not in variables[collection][name]:
                    raise ConversionError(f"layer {name} lacks its {key}")
                got = np.shape(variables[collection][name][key])
                if got != spec.shape:
                    raise ConversionError(
                        f"layer {name} {key}: the weights have shape {got}, "
                        f"the model needs {spec.shape}"
                    )


def _torchvision_backbone(state: dict) -> dict:
    """Variables of conv1_1 ... fc7 from torchvision's vgg16, or vgg16_bn (BatchNorms)."""
    bn = "features.1.running_mean" in state
    indices = _TORCHVISION_BN_FEATURES if bn else _TORCHVISION_FEATURES
    expected = {f"features.{i}.{p}" for i in indices for p in ("weight", "bias")}
    if bn:
        expected |= {f"features.{i + 1}.{p}" for i in indices for p in _TORCH_BN_KEYS}
    expected |= {f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    ignore = ("classifier.6.", *(f"features.{i + 1}.num_batches_tracked" for i in indices))
    _expect_keys(state, expected, f"torchvision VGG-16{'-BN' if bn else ''}", ignore=ignore)
    params, batch_stats = {}, {}
    for name, i in zip(_CONVS, indices):
        params[name] = {
            "kernel": _conv(state[f"features.{i}.weight"]),
            "bias": state[f"features.{i}.bias"],
        }
        if bn:
            norm = _torch_batch_norm(state, f"features.{i + 1}")
            params[models.batch_norm_name(name)], batch_stats[models.batch_norm_name(name)] = norm
    params["fc6"] = {
        "kernel": _fc6_from_flat(state["classifier.0.weight"].T, "chw"),
        "bias": state["classifier.0.bias"],
    }
    params["fc7"] = {
        "kernel": state["classifier.3.weight"].T[None, None],
        "bias": state["classifier.3.bias"],
    }
    return {"params": params, "batch_stats": batch_stats}


_TORCH_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _torch_batch_norm(state: dict, prefix: str) -> tuple[dict, dict]:
    """(params, batch_stats) of a PyTorch BatchNorm2d."""
    return (
        {"scale": state[f"{prefix}.weight"], "bias": state[f"{prefix}.bias"]},
        {"mean": state[f"{prefix}.running_mean"], "var": state[f"{prefix}.running_var"]},
    )


def _keras_backbone(path) -> dict[str, dict[str, np.ndarray]]:
    try:
        import h5py
    except ImportError as e:
        raise ConversionError(f"reading {path} needs h5py: pip install h5py") from e
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConversionError(f"{path} is not an HDF5 (.h5) Keras weights file: {e}") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        names = (*_KERAS_CONVS, "fc1", "fc2")
        missing = [n for n in names if n not in root]
        if missing:
            raise ConversionError(f"{path}: missing Keras VGG16 layers {missing}")

        def weights(name):
            group = root[name]
            keys = [
                k.decode() if isinstance(k, bytes) else k
                for k in group.attrs.get("weight_names", [])
            ]
            if not keys:  # No index: kernel before bias by name.
                keys = sorted(group.keys(), key=lambda k: ("bias" in k, k))
            arrays = [np.asarray(group[k], np.float32) for k in keys]
            return arrays[0], arrays[1]

        params = {}
        for ours, theirs in zip(_CONVS, _KERAS_CONVS):
            kernel, bias = weights(theirs)
            params[ours] = {"kernel": kernel, "bias": bias}  # Keras is already (kH, kW, in, out).
        kernel, bias = weights("fc1")
        params["fc6"] = {"kernel": _fc6_from_flat(kernel, "hwc"), "bias": bias}
        kernel, bias = weights("fc2")
        params["fc7"] = {"kernel": kernel[None, None], "bias": bias}
    return params


def read_backbone(source, layout: str) -> dict:
    """Variables of conv1_1 ... fc7 (with their BatchNorms for a vgg16_bn) of a VGG-16 in
    ``layout``; see ``load_backbone``."""
    if layout == "torchvision":
        state = _read_torch(source)
        if "layer1.0.conv1.weight" in state:
            return _torchvision_resnet_backbone(state)
        return _torchvision_backbone(state)
    if layout == "caffe":
        state = _read_torch(source)
        if "features.0.weight" in state:  # e.g. pytorch-fcn's vgg16_from_caffe.pth.
            return _torchvision_backbone(state)
        expected = {f"{n}.{p}" for n in (*_CONVS, "fc6", "fc7") for p in ("weight", "bias")}
        _expect_keys(state, expected, "Caffe VGG-16", ignore=("fc8.", "score", "upscore"))
        return {"params": _torch_backbone(state), "batch_stats": {}}
    if layout == "keras":
        if isinstance(source, dict):
            raise ConversionError("the keras layout reads a .h5 file path")
        return {"params": _keras_backbone(source), "batch_stats": {}}
    if layout == "mindspore":
        variables, _ = _mindspore_variables(source, heads=False)
        return variables
    raise ConversionError(f"layout {layout!r} is not one of {LAYOUTS}")


def load_backbone(variables, source, layout: str):
    """A copy of ``variables`` with conv1_1 ... fc7 taken from a VGG-16 in ``layout``.

    torchvision weights expect the ``torch`` normalisation; caffe and keras
    weights the ``caffe`` one (BGR, 0-255, minus the mean). Caffe weights come in
    Caffe's layer names (``conv1_1.weight`` ...) or in torchvision's
    (``features.0.weight`` ..., as pytorch-fcn's ``vgg16_from_caffe.pth``): the
    layout, not the key names, says which normalisation they expect; mindspore
    weights the ``mindspore`` one. The backbone must be the model's: a vgg16_bn's
    BatchNorms (torchvision's ``vgg16_bn``, the MindSpore tutorial's VGG-16) come
    along with their convolutions.
    """
    backbone = read_backbone(source, layout)
    return merge_into(variables, backbone, tuple(backbone["params"]), f"the {layout} backbone")[0]


def _width(params, layer: str) -> int:
    """Output channels of ``layer``'s kernel."""
    return int(np.shape(params[layer]["kernel"])[-1])


def _resnet_depth(state: dict, prefix: str, what: str) -> str:
    """resnet50 or resnet101, from the number of layer3 blocks (6 or 23) in ``state``."""
    blocks = {k[len(prefix) :].split(".")[1] for k in state if k.startswith(f"{prefix}layer3.")}
    for backbone, counts in resnet.BLOCKS.items():
        if len(blocks) == counts[2]:
            return backbone
    counts = {b: c[2] for b, c in resnet.BLOCKS.items()}
    raise ConversionError(
        f"{what}: {len(blocks)} {prefix}layer3 blocks, not those of a ResNet {counts}"
    )


def _resnet_variables(state: dict, names: dict[str, str], what: str, ignore=()) -> dict:
    """Variables of the ResNet FCN layers ``names`` (ours -> torchvision's module) from a
    torchvision state dict; every other key is refused unless ``ignore``d."""
    bn_suffix = models.batch_norm_name("")
    norms = {n: m for n, m in names.items() if n.endswith(bn_suffix)}
    expected = {f"{m}.{p}" for m in norms.values() for p in _TORCH_BN_KEYS}
    expected |= {f"{m}.weight" for n, m in names.items() if n not in norms}
    expected |= {f"{m}.bias" for n, m in names.items() if n.endswith("_score")}
    ignore = (*ignore, *(f"{m}.num_batches_tracked" for m in norms.values()))
    _expect_keys(state, expected, what, ignore=ignore)
    params, batch_stats = {}, {}
    for name, module in names.items():
        if name in norms:
            params[name], batch_stats[name] = _torch_batch_norm(state, module)
        else:
            params[name] = {"kernel": _conv(state[f"{module}.weight"])}
            if f"{module}.bias" in expected:
                params[name]["bias"] = state[f"{module}.bias"]
    return {"params": params, "batch_stats": batch_stats}


def _torchvision_resnet_backbone(state: dict) -> dict:
    """Variables of the dilated ResNet from torchvision's ImageNet resnet50/101 (fc ignored)."""
    what = "torchvision ImageNet ResNet"
    backbone = _resnet_depth(state, "", what)
    names = {
        ours: theirs.removeprefix("backbone.")
        for ours, theirs in resnet.torchvision_names(backbone, aux_head=False).items()
        if theirs.startswith("backbone.")
    }
    return _resnet_variables(state, names, f"{what} ({backbone})", ignore=("fc.",))


def from_torchvision_segmentation(state_dict, num_classes: int | None = None):
    """(model, variables) of torchvision's fcn_resnet50/101 from its state dict (or file).

    The depth comes from the number of layer3 blocks, the auxiliary head from the
    ``aux_classifier.*`` keys, the classes from the classifier. ``model.apply(variables,
    images_nhwc, train=False)`` gives torchvision's eval outputs, ``{"out", "aux"}`` (only
    "out" without an auxiliary head), for inputs in the ``torch`` normalisation.
    """
    state = _read_torch(state_dict)
    what = "torchvision FCN-ResNet state dict"
    backbone = _resnet_depth(state, "backbone.", what)
    aux_head = any(k.startswith("aux_classifier.") for k in state)
    names = resnet.torchvision_names(backbone, aux_head)
    variables = _resnet_variables(state, names, f"{what} (fcn_{backbone})")
    params = variables["params"]
    found = _width(params, "classifier_score")
    if num_classes is not None and found != num_classes:
        raise ConversionError(
            f"classifier.4 has {found} classes but num_classes={num_classes}; convert with "
            f"num_classes={found}, or take only the backbone (--config.init_layers)"
        )
    model = resnet.ResNetFCN(
        backbone=backbone,
        num_classes=found,
        aux_head=aux_head,
        base_width=_width(params, "conv1"),
    )
    _check_shapes(variables, model)
    return model, variables


# Which input normalisation each source's weights expect.
NORMALIZATION = {
    "fcn": "caffe",
    "torchvision": "torch",
    "caffe": "caffe",
    "keras": "caffe",
    "mindspore": "mindspore",
}
_META = "fcn_jax_weights.json"
COLLECTIONS = ("params", "batch_stats")


def _mindspore_backbone_layers():
    """(our layer, MindSpore convolution prefix, its BatchNorm's prefix), conv1_1 ... fc7."""
    for stage, (names, _) in enumerate(models.VGG16_STAGES, start=1):
        for i, name in enumerate(names):  # Each stage is [conv, BatchNorm, ReLU] * n.
            yield name, f"conv{stage}.{3 * i}", f"conv{stage}.{3 * i + 1}"
    yield "fc6", "conv6.0", "conv6.1"
    yield "fc7", "conv7.0", "conv7.1"


_MINDSPORE_SCORES = ("score_fr", "score_pool4", "score_pool3")
_MINDSPORE_UPSAMPLES = ("upscore2", "upscore_pool4", "upscore8")
_MINDSPORE_BN = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
# What MindSpore's ModelCheckpoint saves beside the network: optimizer state, counters.
_MINDSPORE_TRAINING_STATE = (
    "moments.",
    "accum.",
    "global_step",
    "learning_rate",
    "momentum",
    "scale_sense",
    "current_iterator_step",
    "last_overflow_iterator_step",
    "epoch_num",
    "step_num",
    "beta1_power",
    "beta2_power",
)


def _read_mindspore(source) -> dict[str, np.ndarray]:
    """{name: float32 array} of the network in a ``.ckpt`` path (or such a dict already read)."""
    from fcn_jax import mindspore_format

    if isinstance(source, dict):
        return source
    try:
        tensors = mindspore_format.read(source)
    except OSError as e:
        raise ConversionError(f"cannot read {source}: {e}") from e
    except mindspore_format.FormatError as e:
        raise ConversionError(f"{source} is not a MindSpore checkpoint (.ckpt): {e}") from e
    return {
        k: np.asarray(v, np.float32)
        for k, v in tensors.items()
        if not k.startswith(_MINDSPORE_TRAINING_STATE)
    }


def _mindspore_variables(source, heads: bool) -> dict:
    """Variables of the MindSpore FCN-8s tutorial's network (or, without ``heads``, of its
    VGG-16 backbone: fc6/fc7 when the file has them) from a ``.ckpt``."""
    tensors = _read_mindspore(source)
    layers = list(_mindspore_backbone_layers())
    if not heads and not any(k.startswith(("conv6.", "conv7.")) for k in tensors):
        layers = layers[:-2]  # A VGG-16 of convolutions only.
    expected = set()
    for _, conv, bn in layers:
        expected |= {f"{conv}.weight", *(f"{bn}.{k}" for k in _MINDSPORE_BN)}
    head_names = (*_MINDSPORE_SCORES, *_MINDSPORE_UPSAMPLES)
    if heads:
        expected |= {f"{n}.weight" for n in head_names}
    ignore = () if heads else tuple(f"{n}." for n in head_names)
    _expect_keys(tensors, expected, f"MindSpore FCN-8s checkpoint {source}", ignore=ignore)
    params, batch_stats = {}, {}
    for layer, conv, bn in layers:
        params[layer] = {"kernel": _conv(tensors[f"{conv}.weight"])}
        norm = models.batch_norm_name(layer)
        values = {ours: tensors[f"{bn}.{theirs}"] for theirs, ours in _MINDSPORE_BN.items()}
        params[norm] = {k: values[k] for k in ("scale", "bias")}
        batch_stats[norm] = {k: values[k] for k in ("mean", "var")}
    if heads:
        for name in _MINDSPORE_SCORES:
            params[name] = {"kernel": _conv(tensors[f"{name}.weight"])}
        for name in _MINDSPORE_UPSAMPLES:
            params[name] = {"kernel": _transposed(tensors[f"{name}.weight"])}
    return {"params": params, "batch_stats": batch_stats}


def mindspore_model(variables, num_classes: int = 21) -> models.FCN:
    """The MindSpore tutorial's FCN-8s, of the widths ``variables`` have: VGG-16 with a
    BatchNorm after every convolution, fc6 and fc7 included, no biases, no dropout,
    "same" padding (the `same` geometry)."""
    params = variables["params"]
    return models.FCN(
        variant="fcn8s",
        num_classes=num_classes,
        geometry="same",
        backbone="vgg16_bn",
        fc_batch_norm=True,
        dropout_rate=0.0,
        base_width=int(np.shape(params["conv1_1"]["kernel"])[-1]),
        fc_width=int(np.shape(params["fc6"]["kernel"])[-1]),
    )


def from_mindspore_checkpoint(path, num_classes: int = 21):
    """(model, variables) of the MindSpore FCN-8s tutorial's network from its ``.ckpt``
    (a path, or the {name: array} dict of one).

    ``model.apply(variables, images_nhwc, train=False)`` gives the tutorial network's
    logits for inputs normalised as it does (``normalization.normalize(x,
    "mindspore")``), on images whose sides are multiples of 32, the sizes the
    tutorial's own network accepts (fcn_jax takes any size). MindSpore need not be
    installed: the file is read as the protobuf it is.
    """
    variables = _mindspore_variables(path, heads=True)
    found = variables["params"]["score_fr"]["kernel"].shape[-1]
    if found != num_classes:
        raise ConversionError(
            f"score_fr has {found} classes but num_classes={num_classes}; convert with "
            f"num_classes={found}, or load only the backbone (--config.init_layers)"
        )
    model = mindspore_model(variables, num_classes)
    _check_shapes(variables, model)
    return model, variables


def backbone_model(variables):
    """An FCN whose backbone has the shapes of ``variables`` (widths, BatchNorms, biases)."""
    params = variables["params"]
    depth = resnet.backbone_of(params)
    if depth:
        return resnet.ResNetFCN(backbone=depth, base_width=_width(params, "conv1"))
    return models.FCN(
        backbone="vgg16_bn" if models.batch_norm_name("conv1_1") in params else "vgg16",
        fc_batch_norm=models.batch_norm_name("fc6") in params,
        base_width=int(np.shape(params["conv1_1"]["kernel"])[-1]),
        fc_width=int(np.shape(params["fc6"]["kernel"])[-1]) if "fc6" in params else 4096,
    )


def save_weights(
    path: str,
    variables,
    *,
    variant: str,
    num_classes: int,
    normalization: str,
    geometry: str | None = None,
    at_once: bool | None = None,
) -> None:
    """Writes variables (orbax) and what they are (JSON) for ``--config.init_from=path``.

    ``variables`` are ``{"params": ..., "batch_stats": ...}`` (batch_stats optional).
    The backbone (``vgg16`` or ``vgg16_bn``, with or without BatchNorm on fc6/fc7)
    is read off the layers. ``geometry`` and ``at_once`` describe the head the
    score layers were trained with; None (a backbone alone) fits any head. Weights
    with score layers must give both: run in another geometry, or with skips 100x
    and 10,000x off, they would give wrong results without an error.
    """
    import os

    import orbax.checkpoint as ocp

    params = variables["params"]
    if set(params) & set(models.HEAD_LAYERS) and (geometry is None or at_once is None):
        raise ConversionError(
            "weights with score layers must record the geometry and at_once they were trained with"
        )
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise ConversionError(f"{path} exists; choose a new --output")
    checkpointer = ocp.StandardCheckpointer()
    for collection in COLLECTIONS:  # Atomic each: a tmp dir, then a rename.
        if variables.get(collection):
            checkpointer.save(os.path.join(path, collection), variables[collection])
            checkpointer.wait_until_finished()
    meta = {
        "variant": variant,
        "num_classes": num_classes,
        "normalization": normalization,
        "geometry": geometry,
        "at_once": at_once,
        "backbone": backbone_name(params),
        "fc_batch_norm": models.batch_norm_name("fc6") in params,
        "layers": sorted(params),
    }
    files.write_json(os.path.join(path, _META), meta)


def backbone_name(params) -> str:
    """config.model.backbone of weights, read off their layers."""
    if resnet.backbone_of(params):
        return resnet.backbone_of(params)
    return "vgg16_bn" if models.batch_norm_name("conv1_1") in params else "vgg16"


def load_meta(path: str) -> dict:
    """What a ``save_weights`` directory holds: variant, num_classes, normalization,
    geometry, at_once (None: a backbone, any head), backbone, fc_batch_norm, layers."""
    import json
    import os

    meta_file = os.path.join(os.path.abspath(path), _META)
    if not os.path.isfile(meta_file):
        raise FileNotFoundError(
            f"init_from={path!r} is not a converted weights directory (no {_META}); "
            "make one with `python -m fcn_jax.convert`"
        )
    with open(meta_file) as f:
        return json.load(f)


def check_fits(meta: dict, model_config, layers, path: str) -> None:
    """Refuses weights made for another network than the config's, naming the field.

    ``layers`` are the ones taken: backbone layers must come from the same backbone
    (BatchNorm or not, on fc6/fc7 or not); score layers from the same geometry and
    at-once setting. A backbone alone fits every head.
    """
    layers = set(layers)
    checks = []
    if layers - set(models.HEAD_LAYERS):
        checks += [
            ("backbone", meta.get("backbone", "vgg16")),
            ("fc_batch_norm", meta.get("fc_batch_norm", False)),
        ]
    if layers & set(models.HEAD_LAYERS):
        checks.append(("geometry", meta.get("geometry")))
    if layers & {"score_pool4", "score_pool3"}:  # at_once scales what these layers score.
        checks.append(("at_once", meta.get("at_once")))
    for field, recorded in checks:
        if recorded is not None and recorded != model_config[field]:
            raise ConversionError(
                f"init_from={path!r} holds {meta.get('variant')} weights of model.{field}="
                f"{recorded!r}, but the config has model.{field}={model_config[field]!r}: add "
                f"--config.model.{field}={recorded}, or take other layers (--config.init_layers)"
            )


def load_weights(path: str):
    """(variables as numpy, meta dict) from a ``save_weights`` directory."""
    import os

    import orbax.checkpoint as ocp

    meta = load_meta(path)
    checkpointer, variables = ocp.StandardCheckpointer(), {"params": {}, "batch_stats": {}}
    for collection in COLLECTIONS:
        folder = os.path.join(os.path.abspath(path), collection)
        if os.path.isdir(folder):
            variables[collection] = jax.tree.map(np.asarray, checkpointer.restore(folder))
    return variables, meta


def merge_into(variables, weights, layers=(), source: str = "init_from"):
    """A copy of ``variables`` with the layers of ``weights`` (all the model has, or ``layers``).

    Both are ``{"params": ..., "batch_stats": ...}``; a layer brings its BatchNorm
    (``<layer>_bn``: parameters and statistics) when both sides have one. Shapes and
    keys must match; a requested layer that either side lacks is an error. The taken
    leaves become float32 numpy arrays; the others stay what they were (jax arrays
    are not fetched: on several hosts they need not be addressable here).
    Returns (new variables, names of the layers taken).
    """
    model, given = variables["params"], weights["params"]
    wanted = tuple(layers) or tuple(n for n in given if n in model)
    problems = [n for n in wanted if n not in given or n not in model]
    if problems:
        raise ConversionError(
            f"init layers {problems} are missing from the weights (which have "
            f"{sorted(given)}) or from the model (which has {sorted(model)})"
        )
    norms = [models.batch_norm_name(n) for n in wanted]
    wanted += tuple(n for n in norms if n in given and n in model and n not in wanted)
    out = {c: {k: dict(v) for k, v in variables.get(c, {}).items()} for c in COLLECTIONS}
    for collection in COLLECTIONS:
        for name in (n for n in wanted if n in weights.get(collection, {})):
            layer, target = weights[collection][name], out[collection].get(name, {})
            if set(layer) != set(target):
                raise ConversionError(
                    f"layer {name}: {source} has {sorted(layer)}, the model {sorted(target)} "
                    "(another model.backbone or model.fc_batch_norm?)"
                )
            for key, value in layer.items():
                want = np.shape(target[key])
                if np.shape(value) != want:
                    raise ConversionError(
                        f"layer {name} {key}: {source} has shape {np.shape(value)}, the model "
                        f"needs {want} (another variant, num_classes or width?)"
                    )
                target[key] = np.asarray(value, np.float32)
    return out, wanted


def main(argv):
    from absl import flags

    flags_ = flags.FLAGS
    if len(argv) > 1:
        raise ConversionError(f"unexpected arguments {argv[1:]}")
    layout, variant, num_classes = flags_.layout, flags_.variant, flags_.num_classes
    head = {"geometry": None, "at_once": None}
    readers = {"mindspore": _read_mindspore, "torchvision": _read_torch}  # Read once.
    source = readers[layout](flags_.input) if layout in readers else flags_.input
    if layout == "fcn":  # The published FCNs are caffe-geometry nets.
        params = from_torch_state_dict(flags_.input, variant, num_classes, flags_.at_once)
        variables, head = {"params": params}, {"geometry": "caffe", "at_once": flags_.at_once}
    elif layout == "mindspore" and "score_fr.weight" in source:  # A whole FCN-8s.
        _, variables = from_mindspore_checkpoint(source, num_classes)
        variant, head = "fcn8s", {"geometry": "same", "at_once": False}
    elif layout == "torchvision" and "backbone.conv1.weight" in source:  # fcn_resnet50/101.
        _, variables = from_torchvision_segmentation(source, num_classes)
    else:
        backbone = read_backbone(source, layout)
        model = backbone_model(backbone)
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(model))
        merge_into(zeros, backbone, source=f"the {layout} backbone")  # Checks every shape.
        variables = backbone
    if resnet.backbone_of(variables["params"]):  # ResNet FCNs are torchvision's models.
        variant = f"fcn_{resnet.backbone_of(variables['params'])}"
    save_weights(
        flags_.output,
        variables,
        variant=variant,
        num_classes=num_classes,
        normalization=NORMALIZATION[layout],
        **head,
    )
    print(
        f"Wrote {sorted(variables['params'])} to {flags_.output} ({NORMALIZATION[layout]} inputs)"
    )


if __name__ == "__main__":
    import sys

    from absl import app, flags

    flags.DEFINE_string(
        "input", None, "Weights file (.pth/.pt state dict, Keras .h5 or MindSpore .ckpt)."
    )  # torchvision: vgg16, vgg16_bn, resnet50/101 (backbones) or fcn_resnet50/101 (whole).
    flags.DEFINE_enum("layout", "fcn", ("fcn", *LAYOUTS), "fcn = a whole pytorch-fcn model.")
    flags.DEFINE_enum("variant", "fcn8s", models.VARIANTS, "FCN variant.")
    flags.DEFINE_integer("num_classes", 21, "Classes of the model.")
    flags.DEFINE_bool("at_once", False, "FCN-8s at-once.")
    flags.DEFINE_string("output", None, "New directory for --config.init_from.")
    flags.mark_flags_as_required(["input", "output"])

    def run(argv):
        try:
            main(argv)
        except (ConversionError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")

    app.run(run)
