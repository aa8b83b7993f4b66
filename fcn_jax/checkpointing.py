"""Orbax checkpoints: ``<workdir>/checkpoints/<step>/{state,config}``.

The train state is the item ``state`` (parameters under ``params``); the
resolved config sits beside it as JSON, so a checkpoint says what it is. We keep
the latest ``keep`` checkpoints and the best by eval mean IoU through a combined
preservation policy (``best_fn`` with ``max_to_keep`` can delete the newest).
Each save is written to a temporary directory and renamed when complete, so a
crash never leaves a half-written checkpoint that resume would pick up.
Saving is asynchronous: call ``wait_until_finished()`` before the process exits.

When to save is orbax's save-decision policy: every N steps or every M minutes,
whichever comes first. A checkpoint that cannot be restored (truncated or missing
files, unreadable metadata) is moved to ``<workdir>/checkpoints_damaged/`` when
training resumes, never deleted, and the next newest is used.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax.training.dynamic_scale import DynamicScale
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as cm

from fcn_jax import optim, steps

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
_EARLIER_MODEL_DEFAULTS = {"backbone": "vgg16", "fc_batch_norm": False, "aux_loss_weight": 0.0}
# Checkpoints whose config has this field hold batch_stats in their train state.
_MODEL_FIELD_OF_BATCH_STATS = "backbone"


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another model (or optimizer) than the config describes."""


class DamagedCheckpointError(ValueError):
    """No checkpoint that was asked for can be restored."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def damaged_dir(workdir_checkpoints: str) -> str:
    """Where damaged checkpoints are set aside: ``<workdir>/checkpoints_damaged``."""
    return os.path.join(
        os.path.dirname(os.path.normpath(workdir_checkpoints)), "checkpoints_damaged"
    )


@dataclasses.dataclass
class EveryMinutes:
    """Orbax save-decision policy: save once ``minutes`` have passed since the newest
    checkpoint, or since this process started training if that is later (a resumed run
    does not save at once). Process 0 decides for all, so every host saves the same step.
    """

    minutes: float
    started: datetime.datetime = dataclasses.field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )

    def should_save(self, step, previous_steps, *, context) -> bool:
        del context
        since = max([self.started, *(p.time for p in list(previous_steps)[-1:])])
        due = step.time - since >= datetime.timedelta(minutes=self.minutes)
        if jax.process_count() > 1:
            due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
        return due


def has_checkpoints(workdir: str | None) -> bool:
    """Whether ``workdir`` holds a checkpoint (an unset workdir holds none)."""
    if not workdir or not os.path.isdir(checkpoint_dir(workdir)):
        return False
    manager = make_manager(workdir, read_only=True)
    try:
        return bool(manager.all_steps())
    finally:
        manager.close()


def make_manager(
    workdir: str,
    keep: int = 2,
    *,
    every_steps: int = 0,
    every_minutes: float = 0.0,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """Keeps the latest ``keep`` and the best; ``should_save(step)`` is due every
    ``every_steps`` steps or ``every_minutes`` minutes (0: never by that rule)."""
    saves = []
    if every_steps > 0:
        saves.append(cm.FixedIntervalPolicy(every_steps))
    if every_minutes > 0:
        saves.append(EveryMinutes(every_minutes))  # Last: it is the only one that talks.
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
        save_decision_policy=cm.AnySavePolicy(saves),
        enable_async_checkpointing=True,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_names=(STATE, CONFIG)
    )


def save(manager, step: int, state, config, eval_metrics: dict | None = None) -> str:
    """Starts an asynchronous save (the caller decided it is due); ``eval_metrics``
    (with mean_iou) ranks the best. Returns the checkpoint's path."""
    metrics = None if eval_metrics is None else {BEST_METRIC: float(eval_metrics[BEST_METRIC])}
    manager.save(
        step,
        args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config.to_dict())}
        ),
        metrics=metrics,
        force=True,
    )
    return os.path.join(str(manager.directory), str(step))


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
    aux = saved["aux_loss_weight"] > 0, config.model.aux_loss_weight > 0
    if aux[0] != aux[1]:  # Its value may change; whether there is an auxiliary head not.
        diffs.append(
            f"model.aux_loss_weight: checkpoint has {saved['aux_loss_weight']!r} "
            f"({'an' if aux[0] else 'no'} auxiliary head), config has "
            f"{config.model.aux_loss_weight!r}"
        )
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
    without BatchNorm) restore as a state with none. The loss scale is restored when
    both the checkpoint and ``abstract_state`` hold a dynamic one; otherwise the state
    comes back with ``loss_scale=None``, for the caller to start a scale afresh.
    """
    saved = saved_config(manager, step)
    target, absent = dict(vars(abstract_state)), {}
    if _MODEL_FIELD_OF_BATCH_STATS not in saved["model"]:
        del target["batch_stats"]
        absent["batch_stats"] = {}
    # What the checkpoint holds as its loss scale: nothing (written before there was
    # one), None, or a dynamic scale, which is read even where it is not wanted.
    kind = saved.get("loss_scale", {}).get("kind")
    keep = kind == "dynamic" and target["loss_scale"] is not None
    if kind is None:
        del target["loss_scale"]
    elif kind != "dynamic":
        target["loss_scale"] = None
    elif not keep:
        scalar = abstract_state.step
        scale = jax.ShapeDtypeStruct((), np.float32, sharding=scalar.sharding)
        target["loss_scale"] = DynamicScale(fin_steps=scalar, scale=scale)
    args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})
    restored = manager.restore(step, args=args)[STATE]
    if not keep:
        restored["loss_scale"] = None
    return type(abstract_state)(**absent, **restored)


def restore_variables(manager, step: int, abstract_variables: dict) -> dict:
    """Restores the model's variables, {"params", "batch_stats"}, without the optimizer
    state, onto the shardings in ``abstract_variables``."""
    return _restore_parts(manager, step, abstract_variables)


def restore_without_optimizer(manager, step: int, abstract_state):
    """(step, variables) of a checkpoint, leaving its optimizer state on disk."""
    # A reader of its own: a manager keeps one handler per item, and the training
    # manager's saves need the standard one, not the partial restore's.
    reader = make_manager(os.path.dirname(str(manager.directory)), read_only=True)
    try:
        parts = _restore_parts(
            reader, step, {"step": abstract_state.step, **steps.variables(abstract_state)}
        )
    finally:
        reader.close()
    return parts.pop("step"), parts


def _restore_parts(manager, step: int, abstract: dict) -> dict:
    # Orbax keeps no empty nodes (a model without BatchNorm has batch_stats {}).
    target = {k: v for k, v in abstract.items() if v != {}}
    restore = ocp.args.PyTreeRestore(
        target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    args = ocp.args.Composite(**{STATE: restore})
    restored = manager.restore(step, args=args)[STATE]
    return {k: restored.get(k, v) for k, v in abstract.items()}


# Optimizer settings whose change on resume is compared with the checkpoint's.
def _optimizer_settings(config: dict) -> dict:
    return {
        **{f"optimizer.{k}": v for k, v in config["optimizer"].items()},
        "model.freeze_upsampling": config["model"]["freeze_upsampling"],
    }


def _optimizer_state_structure(config: dict, abstract_params):
    opt = ml_collections.ConfigDict(config["optimizer"])
    tx, _ = optim.make_optimizer(
        opt, config["num_train_steps"], config["model"]["freeze_upsampling"]
    )
    return jax.tree.structure(jax.eval_shape(tx.init, abstract_params))


def optimizer_carries_over(manager, step: int, config, abstract_params) -> bool:
    """Whether the checkpoint's optimizer state fits ``config.optimizer``.

    Changed values that keep the state's structure (learning rate, schedule, decay)
    carry over. A changed structure (grad_clip_norm, weight_decay on or off, another
    optimizer, ...) needs ``config.reset_optimizer``, and returns False then; without
    it, and for a changed warmup (whose steps the run has passed), this raises naming
    the fields.
    """
    now = config.to_dict()
    saved = saved_config(manager, step)
    # Fields added since the checkpoint was written meant what today's defaults mean.
    saved = {
        **saved,
        "optimizer": {**now["optimizer"], **saved["optimizer"]},
        "model": {**now["model"], **saved["model"]},
    }
    old, new = _optimizer_settings(saved), _optimizer_settings(now)
    changed = {k: (old[k], v) for k, v in new.items() if old[k] != v}
    what = "; ".join(
        f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in changed.items()
    )
    where = f"checkpoint {step} in {manager.directory}"
    if "optimizer.warmup_steps" in changed:
        raise CheckpointMismatchError(
            f"{where} was trained with optimizer.warmup_steps={old['optimizer.warmup_steps']}: "
            "warmup shapes the first steps of a run, which this one has passed, so a new "
            "value would never apply. Keep it and lower optimizer.learning_rate or set "
            "optimizer.grad_clip_norm instead, or start a new --workdir with "
            f"--config.init_from={os.path.dirname(str(manager.directory))}."
        )
    if not changed:
        return True
    if _optimizer_state_structure(saved, abstract_params) == _optimizer_state_structure(
        now, abstract_params
    ):
        logging.info("%s: optimizer changed (%s); its state carries over", where, what)
        return True
    if not config.reset_optimizer:
        raise CheckpointMismatchError(
            f"{where} holds the state of another optimizer ({what}), which does not carry "
            "over. To continue from its parameters with a new optimizer state, add "
            "--config.reset_optimizer=true."
        )
    logging.warning("%s: new optimizer state (%s), as config.reset_optimizer asks", where, what)
    return False


def _reason(error: BaseException) -> str:
    """The useful end of an orbax/tensorstore error, on one line."""
    text = str(error).split(" [tensorstore_spec")[0].replace("\n", " ").strip()
    text = text or type(error).__name__
    return text if len(text) <= 240 else "..." + text[-240:]


def _unreadable(manager, step: int) -> str | None:
    """Why the files of checkpoint ``step`` cannot be read back as written (None: they
    can). Tells a damaged checkpoint from one that does not fit what restores it."""
    path = os.path.join(str(manager.directory), str(step))
    try:
        with open(os.path.join(path, CONFIG, "metadata")) as f:
            json.load(f)
        checkpointer = ocp.PyTreeCheckpointer()
        metadata = checkpointer.metadata(os.path.join(path, STATE)).item_metadata
        if metadata is None:
            return f"the metadata of {os.path.join(path, STATE)} cannot be read"
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree)
        checkpointer.restore(
            os.path.join(path, STATE), args=ocp.args.PyTreeRestore(restore_args=as_numpy)
        )
    except Exception as e:  # noqa: BLE001 - any failure to read the files is damage.
        return _reason(e)
    return None


def _everywhere(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (each may read other shards of a file)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def set_aside(manager, step: int) -> str:
    """Moves checkpoint ``step`` to ``<workdir>/checkpoints_damaged/`` (never deletes)."""
    source = os.path.join(str(manager.directory), str(step))
    target = os.path.join(damaged_dir(str(manager.directory)), str(step))
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        suffix = 0
        while os.path.exists(target + (f".{suffix}" if suffix else "")):
            suffix += 1
        target += f".{suffix}" if suffix else ""
        shutil.move(source, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"fcn_jax: set aside checkpoint {step}")
    manager.reload()
    return target


def _attempt(manager, step: int, restore: Callable[[int], object]):
    """(restore(step), None), or (None, why its files cannot be read) where they cannot;
    any other failure (the checkpoint does not fit, a bug) is raised as it is."""
    result, error = None, None
    try:
        result = restore(step)
    except CheckpointMismatchError:
        raise
    except Exception as e:  # noqa: BLE001 - told apart from damage just below.
        error = e
    if _everywhere(error is None):
        return result, None
    damaged = error is not None and _unreadable(manager, step) is not None
    if not _everywhere(not damaged):
        return None, _reason(error) if damaged else "another process could not read it"
    if error is not None:  # The files read back: not damage.
        raise error
    raise RuntimeError(f"another process could not restore checkpoint {step}; see its log")


def restore_newest(manager, restore: Callable[[int], object]):
    """(step, restore(step)) of the newest checkpoint that restores; (None, None) if none.

    A damaged checkpoint (files that cannot be read back) is set aside with a warning
    naming it and the reason, and the one before is tried. Raises
    DamagedCheckpointError, naming them, when checkpoints exist and none restores.
    """
    damaged = []
    while (step := manager.latest_step()) is not None:
        result, reason = _attempt(manager, step, restore)
        if reason is None:
            return step, result
        path = set_aside(manager, step)
        logging.warning(
            "Checkpoint %d cannot be restored (%s); moved it to %s, trying the one before",
            step,
            reason,
            path,
        )
        damaged.append(f"{step} ({reason})")
    if damaged:
        raise DamagedCheckpointError(
            f"no checkpoint in {manager.directory} can be restored: {'; '.join(damaged)}. "
            f"They were moved to {damaged_dir(str(manager.directory))}; start over with a "
            "new --workdir or put back copies from a backup"
        )
    return None, None


def restore_named(manager, step: int, restore: Callable[[int], object]):
    """restore(step), or one line naming the damaged checkpoint and those that can be read."""
    result, reason = _attempt(manager, step, restore)
    if reason is None:
        return result
    readable = [s for s in manager.all_steps() if s != step and _unreadable(manager, s) is None]
    raise DamagedCheckpointError(
        f"checkpoint {step} in {manager.directory} cannot be restored ({reason}); "
        + (
            f"these can: {readable} (pass --checkpoint=<step>)"
            if readable
            else "no other checkpoint there can"
        )
    )
