"""Converted weights on disk, what they record, and taking them into a model.

A converted weights folder (``python -m fcn_jax.convert --output=DIR``, or the cache
of ``weights.cache``) holds ``weights.npz`` (``<collection>/<layer>/<name>``: the
``params`` and ``batch_stats`` arrays) and ``fcn_jax_weights.json``: the variant,
classes, the input normalisation the weights expect, the backbone, and, for whole FCNs,
the geometry and at-once setting their score layers were trained with. Any process
writes and reads them alone (orbax, which folders of before hold, writes numpy arrays
from process 0 only, so a weights cache on another host could not be written).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from fcn_jax import files, models, resnet
from fcn_jax.weights.layouts import ConversionError

META, ARRAYS = "fcn_jax_weights.json", "weights.npz"
COLLECTIONS = ("params", "batch_stats")


def backbone_name(params) -> str:
    """config.model.backbone of weights, read off their layers."""
    if resnet.backbone_of(params):
        return resnet.backbone_of(params)
    return "vgg16_bn" if models.batch_norm_name("conv1_1") in params else "vgg16"


def fc_batch_norm(params) -> bool | None:
    """config.model.fc_batch_norm of VGG weights: BatchNorm after fc6/fc7, the MindSpore
    tutorial's network, whose layers have no biases (also where a file lacks fc6/fc7);
    None for a ResNet."""
    if "conv1_1" not in params:
        return None
    return models.batch_norm_name("fc6") in params or "bias" not in params["conv1_1"]


def describe(params, **fields) -> dict:
    """What a folder records of weights with ``params``: ``fields`` (variant, num_classes,
    normalization, geometry, at_once) and what the layers say (backbone, fc_batch_norm)."""
    return {
        **fields,
        "backbone": backbone_name(params),
        "fc_batch_norm": fc_batch_norm(params),
        "layers": sorted(params),
    }


def save_weights(
    path: str,
    variables,
    *,
    variant: str | None,
    num_classes: int | None,
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
    and 10,000x off, they would give wrong results without an error. The metadata is
    written last: a folder without it is not converted weights.
    """
    params = variables["params"]
    if set(params) & set(models.HEAD_LAYERS) and (geometry is None or at_once is None):
        raise ConversionError(
            "weights with score layers must record the geometry and at_once they were trained with"
        )
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise ConversionError(f"{path} exists; choose a new --output")
    os.makedirs(path)
    arrays = {
        f"{collection}/{layer}/{name}": np.asarray(value)
        for collection in COLLECTIONS
        for layer, leaves in variables.get(collection, {}).items()
        for name, value in leaves.items()
    }
    with files.atomic_file(os.path.join(path, ARRAYS)) as f:
        np.savez(f, **arrays)
    meta = describe(
        params,
        variant=variant,
        num_classes=num_classes,
        normalization=normalization,
        geometry=geometry,
        at_once=at_once,
    )
    files.write_json(os.path.join(path, META), meta)


def load_meta(path: str) -> dict:
    """What a ``save_weights`` folder holds: variant, num_classes, normalization,
    geometry, at_once (None: a backbone, any head), backbone, fc_batch_norm, layers."""
    meta_file = os.path.join(os.path.abspath(path), META)
    if not os.path.isfile(meta_file):
        raise FileNotFoundError(
            f"init_from={path!r} is not a converted weights directory (no {META}); "
            "give a name from the weights catalogue (README: Pretrained weights), a weights "
            "file, or a folder made by `python -m fcn_jax.convert`"
        )
    with open(meta_file) as f:
        return json.load(f)


def load_weights(path: str):
    """(variables as numpy, meta dict) from a ``save_weights`` folder."""
    meta = load_meta(path)
    path, variables = os.path.abspath(path), {"params": {}, "batch_stats": {}}
    if os.path.isfile(os.path.join(path, ARRAYS)):
        with np.load(os.path.join(path, ARRAYS)) as arrays:
            for key in arrays.files:
                collection, layer, name = key.split("/")
                variables[collection].setdefault(layer, {})[name] = arrays[key]
        return variables, meta
    for collection in COLLECTIONS:  # A folder written before: an orbax checkpoint each.
        folder = os.path.join(path, collection)
        if os.path.isdir(folder):
            restored = ocp.StandardCheckpointer().restore(folder)
            variables[collection] = jax.tree.map(np.asarray, restored)
    return variables, meta


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
            what = f"{meta.get('variant')} weights" if meta.get("variant") else "weights"
            raise ConversionError(
                f"init_from={path!r} holds {what} of model.{field}="
                f"{recorded!r}, but the config has model.{field}={model_config[field]!r}: add "
                f"--config.model.{field}={recorded}, or take other layers (--config.init_layers)"
            )


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
