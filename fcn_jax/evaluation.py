"""Evaluation over a whole split, from checkpoints, with a JSON report.

Metrics come from one int64 confusion matrix accumulated over every batch of the
split; per-batch mIoUs are never averaged (that inflates the score).
"""

from __future__ import annotations

import json
import os
import tempfile

import jax
import numpy as np
from absl import logging

from fcn_jax import checkpointing, input_pipeline, metrics, sharding


def evaluate(programs, params, config) -> tuple[dict, np.ndarray]:
    """(segmentation_metrics, confusion matrix) of ``params`` on dataset.eval_split."""
    batches, num_batches = input_pipeline.eval_iterator(config)
    pending = []  # Device results; fetched at the end so the device never waits on the host.
    for local in batches:
        input_pipeline.check_labels(local["label"], config.model.num_classes)
        pending.append(programs.eval_step(params, sharding.global_batch(local, programs.mesh)))
    if len(pending) != num_batches:
        raise RuntimeError(f"eval split gave {len(pending)} batches, expected {num_batches}")
    cm = sum(np.asarray(jax.device_get(c), np.int64) for c in pending)
    return metrics.segmentation_metrics(cm), cm


def scalar_metrics(eval_metrics: dict) -> dict[str, float]:
    return {k: v for k, v in eval_metrics.items() if np.ndim(v) == 0}


def _jsonable(value):
    """NaN (a class absent from the split) becomes null: strict JSON has no NaN."""
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json_atomically(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def format_report(eval_metrics: dict, step: int, split: str) -> str:
    lines = [f"Evaluation of step {step} on {split}:"]
    for name, value in scalar_metrics(eval_metrics).items():
        lines.append(f"  {name:20s} {value:.4f}")
    return "\n".join(lines)


def evaluate_checkpoint(config, workdir: str, which: str = "best", output_json: str | None = None):
    """Restores ``which`` (best | latest | STEP) onto the current mesh and evaluates it."""
    from fcn_jax import training  # training imports this module.

    training.validate_config(config)
    mesh = sharding.make_mesh(config.mesh.shape)
    manager = checkpointing.make_manager(workdir, read_only=True)
    try:
        step = checkpointing.resolve_step(manager, which)
        checkpointing.check_compatible(manager, step, config)
        training.resolve_normalization(config, manager, step)
        programs = training.compile_steps(config, mesh)
        params = checkpointing.restore_params(manager, step, programs.abstract_state.params)
    finally:
        manager.close()
    eval_metrics, cm = evaluate(programs, params, config)
    split = config.dataset.eval_split
    print(format_report(eval_metrics, step, split), flush=True)
    if output_json and jax.process_index() == 0:
        payload = {k: _jsonable(v) for k, v in eval_metrics.items()}
        payload.update(confusion_matrix=cm.tolist(), step=step, split=split)
        write_json_atomically(output_json, payload)
        logging.info("Wrote %s", output_json)
    return eval_metrics, cm, step
