"""Orbax checkpoints: ``<workdir>/checkpoints/<step>/{state,config}``.

The train state is the item ``state`` (parameters under ``params``); the
resolved config sits beside it as JSON, so a checkpoint says what it is. We keep
the latest ``keep`` checkpoints and the best by eval mean IoU through a combined
preservation policy (``best_fn`` with ``max_to_keep`` can delete the newest).
Each save is written to a temporary directory and renamed when complete, so a
crash never leaves a half-written checkpoint that resume would pick up.
Saving is asynchronous: call ``wait_until_finished()`` before the process exits.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

STATE, CONFIG = "state", "config"
BEST_METRIC = "mean_iou"
# Fields that fix the parameters' shapes or meaning: a checkpoint with others cannot be resumed.
MODEL_FIELDS = (
    "variant",
    "num_classes",
    "geometry",
    "at_once",
    "backbone",
    "fc_batch_norm",
    "base_width",
    "fc_width",
)


# Model fields added since checkpoints were first written, as those checkpoints meant them.
_EARLIER_MODEL_DEFAULTS = {"backbone": "vgg16", "fc_batch_norm": False}
# Checkpoints whose config has this field hold batch_stats in their train state.
_MODEL_FIELD_OF_BATCH_STATS = "backbone"


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another model than the config describes."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def has_checkpoints(workdir: str | None) -> bool:
    """Whether ``workdir`` holds a checkpoint (an unset workdir holds none)."""
    if not workdir or not os.path.isdir(checkpoint_dir(workdir)):
        return False
    manager = make_manager(workdir, read_only=True)
    try:
        return bool(manager.all_steps())
    finally:
        manager.close()


def make_manager(workdir: str, keep: int = 2, *, read_only: bool = False) -> ocp.CheckpointManager:
    policy = cm.AnyPreservationPolicy(
        [
            cm.LatestN(n=keep),
            cm.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC],
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        # best_fn alone makes orbax write the metrics to disk, so "best" survives restarts.
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=True,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_names=(STATE, CONFIG)
    )


def save(manager, step: int, state, config, eval_metrics: dict | None = None) -> None:
    """Starts an asynchronous save; ``eval_metrics`` (with mean_iou) ranks the best."""
    metrics = None if eval_metrics is None else {BEST_METRIC: float(eval_metrics[BEST_METRIC])}
    manager.save(
        step,
        args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config.to_dict())}
        ),
        metrics=metrics,
    )


def saved_config(manager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[
        CONFIG
    ]


def check_compatible(manager, step: int, config) -> None:
    """Raises if the checkpoint at ``step`` holds another model than ``config``."""
    saved = {**_EARLIER_MODEL_DEFAULTS, **saved_config(manager, step)["model"]}
    diffs = [
        f"model.{k}: checkpoint has {saved.get(k)!r}, config has {config.model[k]!r}"
        for k in MODEL_FIELDS
        if saved.get(k) != config.model[k]
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {step} in {manager.directory} belongs to another model ("
            + "; ".join(diffs)
            + "). Use a new --workdir for this config, or set these fields to match."
        )


def resolve_step(manager, which: str) -> int:
    """'best' (highest eval mean IoU, else latest), 'latest', or a step number."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}; train first")
    if which == "latest":
        return max(steps)
    if which == "best":
        best = manager.best_step()  # None when no checkpoint has eval metrics.
        return max(steps) if best is None else best
    if not str(which).isdigit():
        raise ValueError(f"--checkpoint={which!r}: use best, latest or a step number")
    if int(which) not in steps:
        raise FileNotFoundError(f"no checkpoint {which} in {manager.directory}; have {steps}")
    return int(which)


def restore_state(manager, step: int, abstract_state):
    """Restores the whole train state onto the shardings in ``abstract_state``.

    Checkpoints written before the train state held ``batch_stats`` (all of them
    without BatchNorm) restore as a state with none.
    """
    if _MODEL_FIELD_OF_BATCH_STATS in saved_config(manager, step)["model"]:
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})
        return manager.restore(step, args=args)[STATE]
    fields = {k: v for k, v in vars(abstract_state).items() if k != "batch_stats"}
    args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(fields)})
    return type(abstract_state)(batch_stats={}, **manager.restore(step, args=args)[STATE])


def restore_variables(manager, step: int, abstract_variables: dict) -> dict:
    """Restores the model's variables, {"params", "batch_stats"}, without the optimizer
    state, onto the shardings in ``abstract_variables``."""
    target = {k: v for k, v in abstract_variables.items() if v}  # Orbax keeps no empty nodes.
    restore = ocp.args.PyTreeRestore(
        target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    args = ocp.args.Composite(**{STATE: restore})
    restored = manager.restore(step, args=args)[STATE]
    return {k: restored.get(k, v) for k, v in abstract_variables.items()}
