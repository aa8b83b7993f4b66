"""Orbax checkpoints: ``<workdir>/checkpoints/<step>/{state,config,metrics}``.

The train state is the item ``state`` (parameters under ``params``); the
resolved config sits beside it as JSON, so a checkpoint says what it is. We keep
the latest ``keep`` checkpoints and the best by eval mean IoU through a combined
preservation policy (``best_fn`` with ``max_to_keep`` can delete the newest).
Each save is written to a temporary directory and renamed when complete, so a
crash never leaves a half-written checkpoint that resume would pick up.
Saving is asynchronous: call ``wait_until_finished()`` before the process exits.

A step that is evaluated is saved before its evaluation starts (a preemption during
a long evaluation then loses nothing), and the evaluation's mean IoU is attached to
it afterwards (``attach_metrics``), which ranks it for ``best``.

When to save is orbax's save-decision policy: every N steps, every M minutes
(``ContinuousCheckpointingPolicy``), and the step where a preemption stops the run
(``PreemptionCheckpointingPolicy``, told by ``fcn_jax.preemption``).
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax.training.dynamic_scale import DynamicScale
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as cm
from orbax.checkpoint.checkpoint_manager import METRIC_ITEM_NAME, CheckpointInfo

from fcn_jax import files, optim, steps

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


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


@dataclasses.dataclass(kw_only=True)
class EveryMinutes(cm.ContinuousCheckpointingPolicy):
    """orbax's continuous checkpointing with at least ``minimum_interval_secs`` between
    saves, counted from the newest checkpoint or, when later, from the end of start-up
    (``started``, set by ``start_clock``): restore and compilation, however long, do not
    make a resumed run save at its first step. Process 0 decides for every process.
    """

    started: datetime.datetime | None = None

    def should_save(self, step, previous_steps, *, context) -> bool:
        started = self.started or step.time
        previous = list(previous_steps)
        if not previous or previous[-1].time < started:
            previous.append(CheckpointInfo(step=step.step, time=started, metrics=None))
        return super().should_save(step, previous, context=context)


class Manager(ocp.CheckpointManager):
    """orbax's CheckpointManager, told two things by fcn_jax.

    - **Preemption.** orbax asks ``reached_preemption(step)`` when it decides and makes a
      save; the answer is the run's ``preemption.Listener`` (one agreement of the
      processes per step, not one more per question), and its
      ``PreemptionCheckpointingPolicy`` saves the step where the processes stop.
    - **Unreadable metrics.** A damaged metrics file leaves its checkpoint unranked and
      is noted in ``unreadable_metrics`` instead of failing the manager's creation.
    """

    def __init__(self, directory, *, options, item_names, listener=None, every_minutes=None):
        self.listener, self.every_minutes = listener, every_minutes
        self.unreadable_metrics: dict[int, str] = {}
        super().__init__(directory, options=options, item_names=item_names)

    def reached_preemption(self, step: int) -> bool:
        del step  # The listener was asked once, at this step's poll.
        return self.listener is not None and self.listener.stopping

    def metrics(self, step: int):
        try:
            return super().metrics(step)
        except (ValueError, OSError) as e:  # JSONDecodeError is a ValueError.
            self.unreadable_metrics[step] = f"{metrics_path(self, step)}: {e}"
            return None


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
    listener=None,
) -> Manager:
    """Keeps the latest ``keep`` and the best; ``should_save(step)`` is due every
    ``every_steps`` steps or ``every_minutes`` minutes (0: never by that rule), and at the
    step where ``listener`` (a ``preemption.Listener``) stops the run."""
    minutes = EveryMinutes(minimum_interval_secs=every_minutes * 60) if every_minutes > 0 else None
    saves = [cm.PreemptionCheckpointingPolicy()]
    if every_steps > 0:
        saves.append(cm.FixedIntervalPolicy(every_steps))
    if minutes:
        saves.append(minutes)  # Last: the only one that talks to the other processes.
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
        best_fn=lambda m: m[BEST_METRIC],  # For best_step().
        best_mode="max",
        save_decision_policy=cm.AnySavePolicy(saves),
        enable_async_checkpointing=True,
        create=not read_only,
        read_only=read_only,
    )
    return Manager(
        checkpoint_dir(workdir),
        options=options,
        item_names=(STATE, CONFIG),
        listener=listener,
        every_minutes=minutes,
    )


def start_clock(manager) -> None:
    """Start-up is over: checkpoint_every_minutes counts from now."""
    if manager.every_minutes is not None:
        manager.every_minutes.started = datetime.datetime.now(datetime.timezone.utc)


def save(manager, step: int, state, config) -> str:
    """Starts an asynchronous save (the caller decided it is due), unranked until
    ``attach_metrics``. Returns the checkpoint's path."""
    manager.save(
        step,
        args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config.to_dict())}
        ),
        force=True,
    )
    return step_path(manager, step)


def step_path(manager, step: int) -> str:
    return os.path.join(str(manager.directory), str(step))


def metrics_path(manager, step: int) -> str:
    """Where orbax reads the metrics that rank checkpoint ``step``."""
    return os.path.join(step_path(manager, step), METRIC_ITEM_NAME, METRIC_ITEM_NAME)


def attach_metrics(manager, step: int, eval_metrics: dict) -> None:
    """Ranks the saved checkpoint ``step`` by its evaluation (mean IoU), in the file orbax
    reads for ``best_step()`` and its BestN policy. Waits for the save to be on disk."""
    manager.wait_until_finished()
    if jax.process_index() == 0:
        files.write_json(
            metrics_path(manager, step), {BEST_METRIC: float(eval_metrics[BEST_METRIC])}
        )
    sync(f"fcn_jax: metrics of checkpoint {step}")
    manager.reload()


def is_ranked(manager, step: int) -> bool:
    return manager.metrics(step) is not None


def sync(name: str) -> None:
    """A barrier of every process (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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
    """'best' (highest eval mean IoU), 'latest', or a step number. 'best' falls back to
    the latest with a warning saying so when no checkpoint has been evaluated."""
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}; train first")
    if which == "latest":
        return max(steps)
    if which == "best":
        best = manager.best_step()  # None when no checkpoint has eval metrics.
        if best is None:
            logging.warning(
                "No checkpoint in %s has been evaluated, so none is best: using the latest, %d",
                manager.directory,
                max(steps),
            )
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


def _learning_rate(config: dict, step: int) -> float:
    schedule = optim.make_schedule(
        ml_collections.ConfigDict(config["optimizer"]), config["num_train_steps"]
    )
    return float(schedule(step))


def optimizer_carries_over(manager, step: int, config, abstract_params) -> bool:
    """Whether the checkpoint's optimizer state continues (False: a new one is made).

    ``config.reset_optimizer`` asks for a new optimizer state (moments afresh, the
    schedule at the step), once: a checkpoint written after such a reset, with the
    same optimizer settings, carries over, so the same command resumes it after a
    preemption. Without it, changed values that keep the state's structure (learning
    rate, schedule, decay) carry over, and a changed structure (grad_clip_norm,
    weight_decay on or off, another optimizer) is refused naming the fields. A changed
    warmup (whose steps the run has passed) is refused. A changed schedule or
    num_train_steps is logged at WARNING with the learning rate at the step before
    and after.
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
    where = f"checkpoint {step} in {manager.directory}"
    if "optimizer.warmup_steps" in changed:
        raise CheckpointMismatchError(
            f"{where} was trained with optimizer.warmup_steps={old['optimizer.warmup_steps']}: "
            "warmup shapes the first steps of a run, which this one has passed, so a new "
            "value would never apply. Keep it and lower optimizer.learning_rate or set "
            "optimizer.grad_clip_norm instead, or start a new --workdir with "
            f"--config.init_from={os.path.dirname(str(manager.directory))}."
        )
    if saved["num_train_steps"] != now["num_train_steps"]:
        changed["num_train_steps"] = (saved["num_train_steps"], now["num_train_steps"])
    what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
    before, after = _learning_rate(saved, step), _learning_rate(now, step)
    if before != after:
        logging.warning(
            "%s: the learning-rate schedule changed (%s): at step %d the learning rate was "
            "%.6g and is now %.6g",
            where,
            what,
            step,
            before,
            after,
        )
    if config.reset_optimizer:
        if saved.get("reset_optimizer") and not (changed.keys() - {"num_train_steps"}):
            logging.info(
                "%s: its optimizer state was made by reset_optimizer; continuing it", where
            )
            return True
        logging.warning(
            "%s: new optimizer state (%s), as config.reset_optimizer asks",
            where,
            what or "the same optimizer",
        )
        return False
    if not changed:
        return True
    if _optimizer_state_structure(saved, abstract_params) == _optimizer_state_structure(
        now, abstract_params
    ):
        logging.info("%s: optimizer changed (%s); its state carries over", where, what)
        return True
    raise CheckpointMismatchError(
        f"{where} holds the state of another optimizer ({what}), which does not carry "
        "over. To continue from its parameters with a new optimizer state, add "
        "--config.reset_optimizer=true."
    )
