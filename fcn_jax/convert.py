"""Import pretrained weights: the published FCN nets and ImageNet VGG-16 backbones.

``from_torch_state_dict`` reads a whole FCN in the PyTorch layout of the widely
shared ports of the Caffe models (pytorch-fcn); ``load_backbone`` copies a
VGG-16 (conv1_1 ... fc7) from torchvision, a Caffe port in that PyTorch layout,
or a Keras ``.h5`` into an FCN parameter tree.

Layouts: PyTorch convolutions are (out, in, kH, kW), Flax's (kH, kW, in, out);
PyTorch/Caffe transposed convolutions are (in, out, kH, kW) with scatter
semantics, which ``models.Upsample`` shares, so they need a transpose and no
spatial flip. VGG's fc6 as a Linear layer is flattened from (C, 7, 7) in
torchvision and from (7, 7, C) in Keras.
"""

from __future__ import annotations

import jax
import numpy as np

from fcn_jax import files, models

LAYOUTS = ("torchvision", "caffe", "keras")
_CONVS = tuple(n for names, _ in models.VGG16_STAGES for n in names)
# torchvision's vgg16().features indices of the 13 convolutions.
_TORCHVISION_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
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
    for name in _UPSAMPLES[variant]:  # (in, out, kH, kW) -> (kH, kW, in, out), no flip.
        params[name] = {"kernel": state[f"{name}.weight"].transpose(2, 3, 0, 1)}
    _check_shapes(params, model_for(params, variant, num_classes, at_once))
    return params


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


def _check_shapes(params, model: models.FCN) -> None:
    images = jax.ShapeDtypeStruct((1, models.MIN_INPUT_SIZE, models.MIN_INPUT_SIZE, 3), np.float32)
    expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)[
        "params"
    ]
    for name, layer in expected.items():
        if name not in params:
            raise ConversionError(f"layer {name} is missing")
        for key, spec in layer.items():
            got = np.shape(params[name][key])
            if got != spec.shape:
                raise ConversionError(
                    f"layer {name} {key}: the weights have shape {got}, "
                    f"the model needs {spec.shape}"
                )


def _torchvision_backbone(state: dict) -> dict[str, dict[str, np.ndarray]]:
    expected = {f"features.{i}.{p}" for i in _TORCHVISION_FEATURES for p in ("weight", "bias")}
    expected |= {f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    _expect_keys(state, expected, "torchvision VGG-16", ignore=("classifier.6.",))
    params = {
        n: {"kernel": _conv(state[f"features.{i}.weight"]), "bias": state[f"features.{i}.bias"]}
        for n, i in zip(_CONVS, _TORCHVISION_FEATURES)
    }
    params["fc6"] = {
        "kernel": _fc6_from_flat(state["classifier.0.weight"].T, "chw"),
        "bias": state["classifier.0.bias"],
    }
    params["fc7"] = {
        "kernel": state["classifier.3.weight"].T[None, None],
        "bias": state["classifier.3.bias"],
    }
    return params


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


def load_backbone(params, source, layout: str):
    """A copy of ``params`` with conv1_1 ... fc7 taken from a VGG-16 in ``layout``.

    torchvision weights expect the ``torch`` normalisation; caffe and keras
    weights the ``caffe`` one (BGR, 0-255, minus the mean). Caffe weights come in
    Caffe's layer names (``conv1_1.weight`` ...) or in torchvision's
    (``features.0.weight`` ..., as pytorch-fcn's ``vgg16_from_caffe.pth``): the
    layout, not the key names, says which normalisation they expect.
    """
    if layout == "torchvision":
        backbone = _torchvision_backbone(_read_torch(source))
    elif layout == "caffe":
        state = _read_torch(source)
        if "features.0.weight" in state:  # e.g. pytorch-fcn's vgg16_from_caffe.pth.
            backbone = _torchvision_backbone(state)
        else:
            expected = {f"{n}.{p}" for n in (*_CONVS, "fc6", "fc7") for p in ("weight", "bias")}
            _expect_keys(state, expected, "Caffe VGG-16", ignore=("fc8.", "score", "upscore"))
            backbone = _torch_backbone(state)
    elif layout == "keras":
        if isinstance(source, dict):
            raise ConversionError("the keras layout reads a .h5 file path")
        backbone = _keras_backbone(source)
    else:
        raise ConversionError(f"layout {layout!r} is not one of {LAYOUTS}")
    return merge_into(params, backbone, tuple(backbone), source=f"the {layout} VGG-16")[0]


# Which input normalisation each source's weights expect.
NORMALIZATION = {"fcn": "caffe", "torchvision": "torch", "caffe": "caffe", "keras": "caffe"}
_META = "fcn_jax_weights.json"


def save_weights(
    path: str,
    params,
    *,
    variant: str,
    num_classes: int,
    normalization: str,
    geometry: str | None = None,
    at_once: bool | None = None,
) -> None:
    """Writes params (orbax) and what they are (JSON) for ``--config.init_from=path``.

    ``geometry`` and ``at_once`` describe the head the score layers were trained
    with; None (a backbone alone) fits any head. Weights with score layers must
    give both: run in another geometry, or with skips 100x and 10,000x off, they
    would give wrong results without an error.
    """
    import os

    import orbax.checkpoint as ocp

    if set(params) - set(models.BACKBONE_LAYERS) and (geometry is None or at_once is None):
        raise ConversionError(
            "weights with score layers must record the geometry and at_once they were trained with"
        )
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise ConversionError(f"{path} exists; choose a new --output")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(path, "params"), params)  # Atomic: tmp dir, then rename.
    checkpointer.wait_until_finished()
    meta = {
        "variant": variant,
        "num_classes": num_classes,
        "normalization": normalization,
        "geometry": geometry,
        "at_once": at_once,
        "layers": sorted(params),
    }
    files.write_json(os.path.join(path, _META), meta)


def load_meta(path: str) -> dict:
    """What a ``save_weights`` directory holds: variant, num_classes, normalization,
    geometry, at_once (None: a backbone, any head) and layers."""
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


def check_head(meta: dict, model_config, layers, path: str) -> None:
    """Refuses score layers trained for another geometry or at-once setting than the config's.

    ``layers`` are the ones taken from the weights; a backbone fits every head.
    """
    if not set(layers) - set(models.BACKBONE_LAYERS):
        return
    skips = {"score_pool4", "score_pool3"} & set(layers)
    checks = [("geometry", meta.get("geometry"))]
    if skips:  # at_once scales the features that the skip layers score.
        checks.append(("at_once", meta.get("at_once")))
    for field, recorded in checks:
        if recorded is not None and recorded != model_config[field]:
            raise ConversionError(
                f"init_from={path!r} holds {meta.get('variant')} score layers trained with "
                f"model.{field}={recorded!r}, but the config has model.{field}="
                f"{model_config[field]!r}: add --config.model.{field}={recorded}, or take only "
                "the backbone (--config.init_layers)"
            )


def load_weights(path: str):
    """(params as numpy, meta dict) from a ``save_weights`` directory."""
    import os

    import orbax.checkpoint as ocp

    meta = load_meta(path)
    params = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "params"))
    return jax.tree.map(np.asarray, params), meta


def merge_into(params, weights, layers=(), source: str = "init_from"):
    """A copy of ``params`` with the layers of ``weights`` (all the model has, or ``layers``).

    Shapes must match; a requested layer that either side lacks is an error. The
    taken leaves become float32 numpy arrays; the others stay what they were (jax
    arrays are not fetched: on several hosts they need not be addressable here).
    Returns (new params, names of the layers taken).
    """
    wanted = tuple(layers) or tuple(n for n in weights if n in params)
    problems = [n for n in wanted if n not in weights or n not in params]
    if problems:
        raise ConversionError(
            f"init layers {problems} are missing from the weights (which have "
            f"{sorted(weights)}) or from the model (which has {sorted(params)})"
        )
    out = {k: dict(v) for k, v in params.items()}
    for name in wanted:
        for key, value in weights[name].items():
            want = np.shape(out[name][key])
            if np.shape(value) != want:
                raise ConversionError(
                    f"layer {name} {key}: {source} has shape {np.shape(value)}, the model "
                    f"needs {want} (another variant, num_classes or width?)"
                )
            out[name][key] = np.asarray(value, np.float32)
    return out, wanted


def main(argv):
    from absl import flags

    flags_ = flags.FLAGS
    if len(argv) > 1:
        raise ConversionError(f"unexpected arguments {argv[1:]}")
    variant, num_classes = flags_.variant, flags_.num_classes
    model = models.FCN(variant=variant, num_classes=num_classes, at_once=flags_.at_once)
    if flags_.layout == "fcn":
        params = from_torch_state_dict(flags_.input, variant, num_classes, flags_.at_once)
    else:
        shapes = jax.eval_shape(
            lambda k: model.init(k, np.zeros((1, 32, 32, 3), np.float32), train=False),
            jax.random.key(0),
        )["params"]
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
        full = load_backbone(zeros, flags_.input, flags_.layout)
        params = {n: full[n] for n in models.BACKBONE_LAYERS}
    whole = flags_.layout == "fcn"  # The published FCNs are caffe-geometry nets.
    save_weights(
        flags_.output,
        params,
        variant=variant,
        num_classes=num_classes,
        normalization=NORMALIZATION[flags_.layout],
        geometry="caffe" if whole else None,
        at_once=flags_.at_once if whole else None,
    )
    print(f"Wrote {sorted(params)} to {flags_.output} ({NORMALIZATION[flags_.layout]} inputs)")


if __name__ == "__main__":
    import sys

    from absl import app, flags

    flags.DEFINE_string("input", None, "Weights file (.pth/.pt state dict, or Keras .h5).")
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
