"""Where a model starts or what it runs: ``config.init_from`` and the input normalisation.

``init_from`` names converted weights (``python -m fcn_jax.convert``) or another
run's workdir, whose best checkpoint starts the paper's staged training (FCN-16s
from a trained FCN-32s, FCN-8s from FCN-16s) or is evaluated as a whole model.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import SingleDeviceSharding

from fcn_jax import checkpointing, convert, sharding, steps


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


def load(path: str, variables: bool = True):
    """(variables or None, meta) from converted weights, or a training workdir's best checkpoint.

    Variables are ``{"params": ..., "batch_stats": ...}`` as numpy. A workdir gives
    the paper's staged training: FCN-16s from a trained FCN-32s, FCN-8s from FCN-16s.
    """
    if not os.path.isdir(checkpointing.checkpoint_dir(path)):
        return convert.load_weights(path) if variables else (None, convert.load_meta(path))
    manager = checkpointing.make_manager(path, read_only=True)
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
    weights, meta = load(config.init_from)
    merged, taken = convert.merge_into(steps.variables(state), weights, config.init_layers)
    convert.check_fits(meta, config.model, taken, config.init_from)
    logging.info("Initialised %s from %s (%s)", list(taken), config.init_from, meta)
    placed = sharding.put(merged, programs.variables_shardings)
    return state.replace(params=placed["params"], batch_stats=placed["batch_stats"])
