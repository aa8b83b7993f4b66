"""Damaged checkpoints: told apart from every other failure, set aside, never deleted.

A checkpoint is damaged when its files cannot be read back as written: a truncated or
missing array file, a JSON file (orbax's step metadata, the config, the metrics, the
tree metadata) that does not parse. Training sets it aside in
``<workdir>/checkpoints_damaged/<step>`` with a warning naming it and why, and resumes
from the newest one that restores; ``eval.py`` names it and the ones that can be read,
and moves nothing.

What is not damage is never called so: running out of memory while restoring, a
checkpoint that reads but belongs to another model (``CheckpointMismatchError``), or one
that a running training's retention deleted while it was being read.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from fcn_jax import checkpointing
from fcn_jax.checkpointing import CONFIG, STATE

# The JSON files of a checkpoint, relative to its folder; a missing optional one is fine.
_JSON_FILES = {
    "_CHECKPOINT_METADATA": True,  # orbax's step metadata (item handlers, commit time).
    os.path.join(CONFIG, "metadata"): True,  # The resolved config.
    os.path.join(STATE, "_METADATA"): True,  # The train state's tree and array metadata.
    os.path.join(STATE, "_sharding"): False,  # The shardings it was saved with.
    os.path.join("metrics", "metrics"): False,  # The evaluation that ranks it, if any.
}
_JSON_PATTERNS = (os.path.join(STATE, "array_metadatas", "process_*"),)  # One per process.
_READ_BYTES = 256 << 20  # Arrays are read back in groups of about this size, not all at once.


class DamagedCheckpointError(ValueError):
    """No checkpoint that was asked for can be restored."""


class CheckpointVanishedError(FileNotFoundError):
    """A checkpoint was deleted (by a training run's retention) while it was being read."""


def damaged_dir(workdir_checkpoints: str) -> str:
    """Where damaged checkpoints are set aside: ``<workdir>/checkpoints_damaged``."""
    return os.path.join(
        os.path.dirname(os.path.normpath(workdir_checkpoints)), "checkpoints_damaged"
    )


def _reason(error: BaseException) -> str:
    """The useful end of an orbax/tensorstore error, on one line."""
    text = str(error).split(" [tensorstore_spec")[0].replace("\n", " ").strip()
    text = text or type(error).__name__
    return text if len(text) <= 240 else "..." + text[-240:]


def _not_damage(error: BaseException) -> bool:
    """Out of memory (host or device) says nothing about the files."""
    text = str(error)
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text


def unreadable_json(directory: str, missing_is_damage: bool = True) -> dict[int, str]:
    """{step: why} for the checkpoints in ``directory`` with a JSON file that does not
    parse (orbax reads some of them as soon as a manager is made). ``missing_is_damage``
    False: a file gone is not reported (a reader beside a training run, whose retention
    deletes checkpoints while they are looked at)."""
    found = {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        if name.isdigit():
            why = _json_damage(os.path.join(directory, name), missing_is_damage)
            if why:
                found[int(name)] = why
    return found


def _json_damage(step_dir: str, missing_is_damage: bool = True) -> str | None:
    """Why a JSON file of the checkpoint in ``step_dir`` cannot be read (None: they all can)."""
    paths = [(os.path.join(step_dir, p), required) for p, required in _JSON_FILES.items()]
    paths += [
        (p, True) for pattern in _JSON_PATTERNS for p in glob.glob(os.path.join(step_dir, pattern))
    ]
    for path, required in paths:
        if not (required and missing_is_damage) and not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                json.load(f)
        except FileNotFoundError:
            if missing_is_damage:
                return f"{path}: missing"
        except (OSError, ValueError) as e:
            return f"{path}: {_reason(e)}"
    return None


def unreadable(directory: str, step: int) -> str | None:
    """Why the files of checkpoint ``step`` cannot be read back as written (None: they
    can). Reads the arrays in groups of about 256 MB as numpy, never the whole state at
    once. Raises what is not damage (out of memory)."""
    path = os.path.join(directory, str(step))
    if not os.path.isdir(path):
        raise CheckpointVanishedError(_vanished(directory, step))
    why = _json_damage(path)
    if why:
        if not os.path.isdir(path):  # Files gone as retention deletes the folder.
            raise CheckpointVanishedError(_vanished(directory, step))
        return why
    try:
        checkpointer = ocp.PyTreeCheckpointer()
        metadata = checkpointer.metadata(os.path.join(path, STATE)).item_metadata
        if metadata is None:
            return f"the metadata of {os.path.join(path, STATE)} cannot be read"
        leaves, treedef = jax.tree.flatten(metadata.tree)
        numpy = ocp.RestoreArgs(restore_type=np.ndarray)
        for group in _groups(leaves):
            item = [x if i in group else ocp.PLACEHOLDER for i, x in enumerate(leaves)]
            args = [numpy if i in group else ocp.PLACEHOLDER for i in range(len(leaves))]
            item, args = jax.tree.unflatten(treedef, item), jax.tree.unflatten(treedef, args)
            checkpointer.restore(
                os.path.join(path, STATE), args=ocp.args.PyTreeRestore(item, restore_args=args)
            )
    except Exception as e:  # noqa: BLE001 - any failure to read the files is damage ...
        if _not_damage(e):  # ... but running out of memory.
            raise
        if not os.path.isdir(path):
            raise CheckpointVanishedError(_vanished(directory, step)) from e
        return _reason(e)
    return None


def _groups(leaves) -> list[set[int]]:
    groups, size = [set()], 0
    for i, leaf in enumerate(leaves):
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        if groups[-1] and size + nbytes > _READ_BYTES:
            groups.append(set())
            size = 0
        groups[-1].add(i)
        size += nbytes
    return groups


def _vanished(directory: str, step: int) -> str:
    return (
        f"checkpoint {step} in {directory} was deleted while it was being read (a training "
        "run there keeps only its latest and best checkpoints); run the same command again"
    )


def _everywhere(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (each may read other shards of a file)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _move_aside(directory: str, step: int) -> str:
    """Moves checkpoint ``step`` to ``<workdir>/checkpoints_damaged/`` (process 0)."""
    target = os.path.join(damaged_dir(directory), str(step))
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        suffix = 0
        while os.path.exists(target + (f".{suffix}" if suffix else "")):
            suffix += 1
        target += f".{suffix}" if suffix else ""
        shutil.move(os.path.join(directory, str(step)), target)
    return target


def set_aside(manager, step: int) -> str:
    """Moves checkpoint ``step`` aside (never deletes) and tells the manager."""
    target = _move_aside(str(manager.directory), step)
    checkpointing.sync(f"fcn_jax: set aside checkpoint {step}")
    manager.reload()
    return target


def set_aside_unreadable_json(workdir: str) -> None:
    """Before training makes its manager (which reads them): checkpoints whose JSON files
    do not parse are set aside with a warning naming the file. Every process calls it."""
    directory = checkpointing.checkpoint_dir(workdir)
    damaged = unreadable_json(directory) if jax.process_index() == 0 else {}
    for step, why in damaged.items():
        target = _move_aside(directory, step)
        logging.warning("Checkpoint %d cannot be read (%s); moved it to %s", step, why, target)
    checkpointing.sync("fcn_jax: checkpoints with unreadable metadata set aside")


def _attempt(manager, step: int, restore: Callable[[int], object]):
    """(restore(step), None), or (None, why its files cannot be read) where they cannot;
    any other failure (the checkpoint does not fit, out of memory, a bug) is raised as it
    is, and a checkpoint deleted meanwhile raises CheckpointVanishedError."""
    result, error = None, None
    try:
        result = restore(step)
    except checkpointing.CheckpointMismatchError:
        raise
    except Exception as e:  # noqa: BLE001 - told apart from damage just below.
        if _not_damage(e):
            raise
        error = e
    if _everywhere(error is None):
        return result, None
    directory, why = str(manager.directory), None
    if error is not None and unreadable(directory, step) is not None:
        # A JSON file that does not parse, by its name; else the reader's own words.
        why = _json_damage(os.path.join(directory, str(step))) or _reason(error)
    if not _everywhere(why is None):
        return None, why or "another process could not read it"
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
    directory = str(manager.directory)
    readable = [s for s in manager.all_steps() if s != step and _reads(directory, s)]
    raise DamagedCheckpointError(
        f"checkpoint {step} in {manager.directory} cannot be restored ({reason}); "
        + (
            f"these can: {readable} (pass --checkpoint=<step>)"
            if readable
            else "no other checkpoint there can"
        )
    )


def _reads(directory: str, step: int) -> bool:
    try:
        return unreadable(directory, step) is None
    except CheckpointVanishedError:
        return False
