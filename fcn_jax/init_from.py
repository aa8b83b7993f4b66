"""Where a model starts or what it runs: ``config.init_from`` and the input normalisation.

``init_from`` is a name from the weights catalogue (``torchvision:vgg16``: downloaded,
checked, converted and cached on first use, ``fcn_jax.weights``), a weights file
(``.pth``, ``.ckpt``, ``.h5``: converted and cached the same way), a folder of converted
weights (``python -m fcn_jax.convert``), or another run's workdir, whose best
checkpoint starts the paper's staged training (FCN-16s from a trained FCN-32s, FCN-8s
from FCN-16s) or is evaluated as a whole model.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import SingleDeviceSharding

from fcn_jax import checkpointing, models, sharding, steps
from fcn_jax.weights import cache, catalogue, converted


def resolve_normalization(config, manager, step) -> None:
    """Fills dataset.normalization="" from the checkpoint, the init_from weights, or caffe."""
    if config.dataset.normalization:
        return
    if step is not None:
        value = checkpointing.saved_config(manager, step)["dataset"]["normalization"]
    elif config.init_from:
        value = load(config.init_from, variables=False)[1]["normalization"]
    else:
        value = "caffe"
    config.dataset.normalization = value
    logging.info("Input normalisation: %s", value)


def local(init_from: str) -> tuple[str, str]:
    """(local folder, what it is) of ``init_from``: a catalogue name or a weights file
    becomes its converted folder in the cache (fetched and converted once)."""
    if init_from in catalogue.CATALOGUE:
        return cache.weights_folder(init_from)
    if os.path.isfile(init_from):
        return cache.file_folder(init_from)
    catalogue.check_name(init_from)
    return init_from, init_from


def check_before_download(config, whole_model: bool) -> None:
    """Refuses a catalogue name whose weights cannot serve the config, before fetching them:
    another backbone, or a backbone alone where a ``whole_model`` is needed (evaluation).
    Score layers are checked again, with the layers actually taken, once loaded."""
    if config.init_from not in catalogue.CATALOGUE:
        return
    meta = catalogue.meta(config.init_from)
    if whole_model and meta["variant"] is None:
        raise ValueError(
            f"init_from={config.init_from!r} is {catalogue.get(config.init_from).what}: a "
            "backbone to train from, not a trained FCN; evaluate a trained --workdir or a whole "
            "FCN's weights (e.g. pytorch-fcn:fcn8s with configs/fcn8s.py:paper,caffe)"
        )
    layers = models.BACKBONE_LAYERS + models.HEAD_LAYERS if whole_model else config.init_layers
    converted.check_fits(meta, config.model, layers or models.BACKBONE_LAYERS, config.init_from)


def load(path: str, variables: bool = True):
    """(variables or None, meta) from ``init_from``: catalogue weights, a weights file,
    converted weights, or a training workdir's best checkpoint.

    Variables are ``{"params": ..., "batch_stats": ...}`` as numpy. The meta of a catalogue
    name needs no download. A workdir gives the paper's staged training: FCN-16s from a
    trained FCN-32s, FCN-8s from FCN-16s.
    """
    if not variables and path in catalogue.CATALOGUE:
        return None, catalogue.meta(path)
    folder, what = local(path)
    if not os.path.isdir(checkpointing.checkpoint_dir(folder)):
        if not variables:
            return None, converted.load_meta(folder)
        logging.info("Weights: %s (%s)", what, folder)
        return converted.load_weights(folder)
    manager = checkpointing.make_manager(folder, read_only=True)
    try:
        step = checkpointing.resolve_step(manager, "best")
        saved = ml_collections.ConfigDict(checkpointing.saved_config(manager, step))
        meta = {
            "variant": saved.model.variant,
            "num_classes": saved.model.num_classes,
            "normalization": saved.dataset.normalization,
            **{k: saved.model[k] for k in ("geometry", "at_once", "backbone", "fc_batch_norm")},
            "checkpoint": step,
        }
        if not variables:
            return None, meta
        logging.info("Weights: checkpoint %d of %s", step, folder)
        model, device = steps.build_model(saved), jax.local_devices()[0]
        init = steps.make_init_fn(model, optax.identity())
        shapes = steps.variables(jax.eval_shape(init, jax.random.key(0)))
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=SingleDeviceSharding(device)),
            shapes,
        )
        restored = checkpointing.restore_variables(manager, step, abstract)
        return jax.tree.map(np.asarray, restored), meta
    finally:
        manager.close()


def initialise(state: steps.TrainState, programs: steps.Programs, config) -> steps.TrainState:
    """The fresh state with the layers (and their BatchNorms) taken from config.init_from."""
    check_before_download(config, whole_model=False)
    weights, meta = load(config.init_from)
    merged, taken = converted.merge_into(steps.variables(state), weights, config.init_layers)
    converted.check_fits(meta, config.model, taken, config.init_from)
    logging.info("Initialised %s from %s (%s)", list(taken), config.init_from, meta)
    placed = sharding.put(merged, programs.variables_shardings)
    return state.replace(params=placed["params"], batch_stats=placed["batch_stats"])
