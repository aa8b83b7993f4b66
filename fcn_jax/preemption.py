"""Stopping training cleanly on SIGTERM or SIGINT, every process at the same step.

Schedulers preempt with SIGTERM, then SIGKILL after a grace period; people press
Ctrl-C. Training polls ``Listener.reached(step)`` after each step; when it says so,
the loop saves that step and raises ``Preempted``, and the entry point exits with
128 + the signal (143, 130), so schedulers see an interrupted job.

A lone process catches both signals itself. Under ``jax.distributed``, JAX's
preemption notifier owns SIGTERM and tells the coordination service, and every
process learns at the same step from ``multihost_utils.reached_preemption_sync_point``
(a signal to one host stops them all); SIGINT is passed on as SIGTERM so that
the same agreement covers it. Signals that arrive while the checkpoint is written
are noted and ignored: orbax renames a checkpoint into place only when complete.
"""

from __future__ import annotations

import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after saving the step it had reached."""

    def __init__(self, signum: int, step: int, path: str):
        self.exit_code = 128 + signum
        super().__init__(f"preempted at step {step}; saved {path}; run the same command to resume")


class Listener:
    """Notes SIGTERM/SIGINT while training runs (a context manager); restores the
    previous handlers on exit."""

    def __init__(self):
        self.signum: int | None = None  # The signal this process received, if any.
        self._distributed = jax.process_count() > 1
        self._previous = {}

    def __enter__(self) -> Listener:
        # JAX's notifier keeps SIGTERM when several processes run; we take SIGINT.
        for signum in (signal.SIGINT,) if self._distributed else SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum is not None:
            logging.warning("%s again: still saving; kill -9 to stop now", signal.strsignal(signum))
            return
        self.signum = signum
        logging.warning("%s: saving after the current step", signal.strsignal(signum))
        if self._distributed:  # Let JAX's notifier tell the other processes.
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Whether to stop after ``step``; all processes call it at every step."""
        if not self._distributed:
            return self.signum is not None
        return multihost_utils.reached_preemption_sync_point(step)

    @property
    def exit_signal(self) -> int:
        """The signal to report: this process's own, else the agreed SIGTERM."""
        return self.signum or signal.SIGTERM
