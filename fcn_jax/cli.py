"""What the entry points (train.py, eval.py) share: flags, multi-host start-up, errors."""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(
    workdir_help: str, workdir_required: bool = True, config_required: bool = True
) -> None:
    """--config, --workdir and the multi-host flags, shared by the entry points."""
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    required = ["config"] if config_required else []
    flags.mark_flags_as_required(required + ["workdir"] if workdir_required else required)
    flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0, for several hosts (multi-host)."
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in the run.")
    flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1.")


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
    """Joins a multi-process run: explicit when given an address, else detected.

    On TPU VMs, SLURM, Open MPI and the other clusters JAX knows, the arguments
    come from the environment; on a lone machine it stays a single process. CPU
    collectives between processes go through gloo.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise ValueError(
            "--coordinator_address, --num_processes and --process_id go together; got "
            f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
        )
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # fcn_jax.preemption agrees where to stop itself (JAX's service owns SIGTERM, loses a
    # notice before a resumed run's first step, and does not say which signal came).
    jax.config.update("jax_enable_preemption_service", False)
    if coordinator_address is not None:
        logging.info(
            "Process %d: joining %d processes through %s",
            process_id,
            num_processes,
            coordinator_address,
        )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        try:
            jax.distributed.initialize()
        except ValueError as e:  # No cluster detected: one process.
            if "coordinator_address" not in str(e):
                raise
    logging.info(
        "Process %d of %d; %d local of %d devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )


class _QuietOrbax(std_logging.Filter):
    """Orbax logs each save step at INFO; keep its warnings and errors only, but those
    that say nothing wrong: one at every save (they are all unranked when made: fcn_jax
    attaches the evaluation that ranks a checkpoint after the save, see
    checkpointing.attach_metrics), and those of eval.py's read-only manager."""

    def filter(self, record):
        if "/orbax/" not in record.pathname:
            return True
        text = record.getMessage()
        return record.levelno >= std_logging.WARNING and not any(m in text for m in _EXPECTED)


_EXPECTED = (
    "Requested `tracked_metric`; did not provide metrics.",
    "Given directory is read only",
    "CheckpointManagerOptions.read_only=True, setting",
)


# When a checkpoint read fails, orbax closes its event loop while tensorstore still
# completes the other reads: each reports 'Event loop is closed' or an unretrieved
# task's error. The failure itself is reported once; these are debug noise.
def _quiet_unraisable(unraisable) -> None:
    error, where = unraisable.exc_value, unraisable.object
    code = getattr(where, "cr_code", None)  # A coroutine never awaited: whose is it?
    orbax = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
    closed = isinstance(error, RuntimeError) and "Event loop is closed" in str(error)
    if closed or orbax or "tensorstore_spec" in str(error):
        logging.debug("Abandoned checkpoint read: %s (%s)", error, where)
        return
    sys.__unraisablehook__(unraisable)


class _QuietAbandonedReads(std_logging.Filter):
    """asyncio's 'Task/Future exception was never retrieved' for an abandoned read: a task
    names orbax's coroutine, a bare future only the tensorstore error it holds."""

    def filter(self, record):
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        if "exception was never retrieved" in text and ("/orbax/" in text or "tensorstore" in text):
            logging.debug("Abandoned checkpoint read: %s", text)
            return False
        return True


def quiet_abandoned_reads() -> None:
    """Sends the abandoned reads of a failed checkpoint restore to debug logging."""
    sys.unraisablehook = _quiet_unraisable
    std_logging.getLogger("asyncio").addFilter(_QuietAbandonedReads())


def setup(argv) -> None:
    """Keeps TensorFlow (tf.data only) off the accelerators; starts multi-host JAX."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    logging.get_absl_handler().addFilter(_QuietOrbax())
    quiet_abandoned_reads()

    tf.config.set_visible_devices([], "GPU")
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def parse_flags(argv):
    """absl's parser, with a one-line error for an unknown or mistyped config field, and
    the last of a repeated ``--config.<field>=`` winning, tuples included."""
    try:
        return FLAGS(_last_overrides_win(argv))
    except (AttributeError, KeyError) as e:  # ml_collections: no such config field.
        text = str(e)
        name = re.search(r"(\w+)\\?'", text)
        hint = re.search(r'Did you mean "(\w+)"', text)
        sys.exit(
            f"error: unknown config field {name.group(1) if name else text!r}"
            + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
            + "; see configs/default.py for every field."
        )
    except flags.Error as e:
        sys.exit(f"error: {str(e).rstrip('.')}. Pass --help for the flags.")


def _last_overrides_win(argv: list[str]) -> list[str]:
    """ml_collections joins the values of a repeated tuple field
    (``--config.mesh.shape=(1,1) --config.mesh.shape=(-1,1)`` would be (1, 1, -1, 1));
    as for every other flag, the last one counts."""

    # An override is one argument (--config.x=v) or two (--config.x v), with one dash or
    # two: absl's forms.
    def field(arg: str) -> str | None:
        return arg.lstrip("-").split("=", 1)[0] if re.match(r"--?config\.", arg) else None

    overrides, i = [], 0
    while i < len(argv):
        arg = argv[i]
        paired = field(arg) is not None and "=" not in arg and i + 1 < len(argv)
        paired = paired and not re.match(r"--?[A-Za-z_]", argv[i + 1])  # Not a flag.
        overrides.append(argv[i : i + 1 + paired])
        i += 1 + paired

    last = {field(o[0]): i for i, o in enumerate(overrides) if field(o[0])}
    return [
        a
        for i, o in enumerate(overrides)
        if field(o[0]) is None or last[field(o[0])] == i
        for a in o
    ]


@contextlib.contextmanager
def clear_errors():
    """Every way a run ends, as one line and an exit status, never a traceback: bad input,
    a damaged checkpoint, divergence, the accelerator's errors (out of memory) exit 1
    with ``error: ...`` (the stack goes to debug logging); a preempted run exits with
    128 + the signal, having logged where it saved."""
    try:
        yield
    except KeyboardInterrupt:  # eval.py, export.py: no preemption.Listener there.
        logging.debug("%s", traceback.format_exc())
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        logging.debug("%s", traceback.format_exc())
        sys.exit(f"error: {e}")
    except Exception as e:
        preempted = _loaded("fcn_jax.preemption", "Preempted")
        if preempted and isinstance(e, preempted):
            sys.exit(e.exit_code)
        message = _runtime_error(e)
        if message is None:
            raise
        logging.debug("%s", traceback.format_exc())
        sys.exit(f"error: {message}")


def _loaded(module: str, name: str):
    """``module.name`` if the module is loaded, else None: an error type of a module never
    imported cannot have been raised, and predict.py --model runs without JAX or TF."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded else None


def _runtime_error(e: Exception) -> str | None:
    """The line to print for bad data met inside tf.data (e.g. a label file) or the
    accelerator's errors (out of memory, a device fault); None for any other error."""
    op_error = _loaded("tensorflow", "errors")
    if op_error and isinstance(e, op_error.OpError):
        return e.message
    jax_errors = _loaded("jax", "errors")
    if jax_errors and isinstance(e, jax_errors.JaxRuntimeError):
        return str(e).splitlines()[0]
    return None
