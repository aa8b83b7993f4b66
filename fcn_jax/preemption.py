"""Stopping training on SIGTERM or SIGINT at any moment, every process at the same point.

Schedulers preempt with SIGTERM and send SIGKILL after a grace period (about 30 s on
cloud VMs); people press Ctrl-C. The notice can land anywhere, and the run must end
within seconds with the newest step it reached on disk:

- **Nothing unsaved**: in start-up (restore, compilation, the missed evaluation of a
  resumed run: minutes on a pod), nothing has been trained since the newest checkpoint;
  during an evaluation, its step was saved before it began. Every process then exits at
  once with 128 + the signal (after the step's save, if still being written, is on
  disk), whatever its main thread is doing: a thread reads the signal through
  ``signal.set_wakeup_fd``, since the main thread may be in an XLA compilation that
  returns to Python only when it is done.
- **Training steps**: the main thread calls ``Listener.poll()`` after every step; it
  returns True at the same poll on every process, and the training loop saves the step
  reached and raises ``Preempted``. The entry point exits with 128 + the signal (143, 130).

Several processes agree as JAX's preemption sync manager does: on a notice each one
reports how many polls it has passed, waits at a barrier, and all stop at the poll
after the fastest one's (or exit at once if any of them has nothing unsaved: no later
step can have finished without it). JAX's own manager cannot be used for this: it counts
from step 0, which a resumed run never calls (a notice before the first step is lost),
it tells nothing before that step, and it owns SIGTERM without saying which signal
came. So the protocol runs here on the coordination service of ``jax.distributed`` (its
key-value store and barriers), and the notice carries the signal: every process exits
with the same status. ``cli.initialize_distributed`` switches JAX's own service off.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_KEYS = "fcn_jax/preemption"  # Coordination-service keys of this run's agreement.
_NOTICE = f"{_KEYS}/notice"  # The first signal any process received.
_AGREEMENT_TIMEOUT_MS = 20_000  # Well inside the grace period before SIGKILL.
_WATCH_INTERVAL_S = 0.25  # How often a process looks for another one's notice.
_SAVED = "saved"  # What a process with nothing unsaved reports.
_STARTUP = "during start-up, before this run trained a step"
_FINISHED = "after training ended: every step is saved"
_ANOTHER = (
    "with another process starting up or evaluating: no step after the newest checkpoint ended"
)


class Preempted(Exception):
    """Training stopped on a signal after saving the step it had reached."""

    def __init__(self, signum: int, step: int, path: str):
        self.exit_code = 128 + signum
        super().__init__(f"preempted at step {step}; saved {path}; run the same command to resume")


class Listener:
    """SIGTERM/SIGINT for the duration of a training run (a context manager).

    It starts in start-up, where a notice ends the process at once (once ``connected()``
    says the processes can tell each other); ``running()`` marks the first training
    step, after which notices stop the run at a ``poll()``, except within
    ``nothing_unsaved()`` (an evaluation of a saved step) and after ``finished()``.

    ``exit_process`` (the entry point's): leaving the context after the run or on
    ``Preempted`` ends the process there and then, every process together, still
    listening: interpreter shutdown would wait for abandoned device work and tf.data
    threads (15-60 s) with the handlers gone.
    """

    def __init__(self, exit_process: bool = False):
        self._exit_process = exit_process
        self._deferred: int | None = None  # A signal before connected(): told once joined.
        self._exit_lock = threading.Lock()  # One way out: the main thread's or a notice's.
        self.signum: int | None = None  # The agreed signal, once there is a notice.
        self.stopping = False  # poll() said stop: the loop is saving and leaving.
        self._unsaved = False  # Whether steps since the newest checkpoint would be lost.
        self._before_exit, self._why = None, _STARTUP
        self._polls = 0  # Polls passed; the same sequence on every process.
        self._stop_at: int | None = None
        self._poll_lock = threading.Lock()  # Held while the processes agree.
        self._pending = False  # A signal reached this process; its agreement may follow.
        self._received: int | None = None  # That signal, as the main thread saw it.
        self._agreed = threading.Event()
        self._notice_lock = threading.Lock()
        self._closing = threading.Event()
        self._connected = False  # jax.distributed is up: the other processes can be told.
        self._previous: dict = {}
        self._threads: list[threading.Thread] = []

    # -- the main thread's side -------------------------------------------------------
    def __enter__(self) -> Listener:
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        self._start(self._read_signals)
        self._start(self._watch_other_processes)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if self._exit_process and (exc is None or isinstance(exc, Preempted)):
                self._leave(0 if exc is None else exc.exit_code)
        finally:
            self._close()

    def _close(self) -> None:
        self._closing.set()
        with contextlib.suppress(BlockingIOError):  # Full: the reader is awake anyway.
            os.write(self._wake_write, b"\0")  # Wakes the signal reader: 0 is no signal.
        for thread in self._threads:
            thread.join(timeout=5)
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._wake_read)
        os.close(self._wake_write)

    def connected(self) -> None:
        """jax.distributed has started: from now on the processes tell each other. A signal
        before waits for this (a process leaving alone while the others join would leave
        them waiting minutes for it); a second one ends this process at once."""
        with self._notice_lock:
            self._connected = True
            deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._notice(deferred, here=True)

    def running(self) -> None:
        """Start-up is over (the first training step is on its way to the devices): from
        now on a notice stops the run at a poll."""
        with self._poll_lock:
            self._unsaved = True

    @contextlib.contextmanager
    def nothing_unsaved(self, wait, why: str):
        """Within this, the step reached is saved (``wait()`` returns once its save is on
        disk), so a notice ends the process at once, saying ``why``."""
        with self._poll_lock:
            self._unsaved, self._before_exit, self._why = False, wait, why
        try:
            yield
        finally:
            with self._poll_lock:
                self._unsaved, self._before_exit = True, None

    def finished(self) -> None:
        """Training ended and its last save is on disk: a notice from now on ends the
        process at once, as in start-up."""
        with self._poll_lock:
            self._unsaved, self._before_exit, self._why = False, None, _FINISHED

    def poll(self) -> bool:
        """Whether to stop now. Every process calls it at the same points: after each
        training step, and before an evaluation. Blocks while the processes agree, and
        after a signal to this process until they have: a signal before a poll stops
        the run at that poll."""
        if self._pending:
            self._agreed.wait()
        with self._poll_lock:
            self._polls += 1
            self.stopping = self.stopping or (
                self._stop_at is not None and self._polls >= self._stop_at
            )
        return self.stopping

    @property
    def exit_signal(self) -> int:
        return self.signum or signal.SIGTERM

    def _handle(self, signum, frame) -> None:
        """Python's handler, run by the main thread between two bytecodes: notes that the
        next poll must wait for the agreement, which the signal reader thread makes."""
        del frame
        self._pending = True
        self._received = self._received or signum

    # -- the threads' side -------------------------------------------------------------
    def _coordination(self):
        """The coordination service's client once connected and when several processes
        run, else None. Looks it up without starting JAX's backends."""
        if not self._connected:
            return None
        from jax._src import distributed  # What orbax's multihost utilities use, too.

        state = distributed.global_state
        return state.client if state.client is not None and state.num_processes > 1 else None

    def _start(self, target) -> None:
        thread = threading.Thread(target=target, name=f"fcn_jax {target.__name__}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_signals(self) -> None:
        while not self._closing.is_set():
            readable, _, _ = select.select([self._wake_read], [], [])
            for signum in os.read(self._wake_read, 64) if readable else b"":
                if signum in SIGNALS and not self._closing.is_set():
                    self._notice(signum, here=True)

    def _watch_other_processes(self) -> None:
        while not self._closing.wait(_WATCH_INTERVAL_S) and self.signum is None:
            client = self._coordination()
            if client is None:  # One process, or jax.distributed not started yet.
                continue
            import jax

            try:
                value = client.key_value_try_get(_NOTICE)
            except jax.errors.JaxRuntimeError:  # Not there (yet), or the service is gone.
                continue
            self._notice(int(value), here=False)

    def _notice(self, signum: int, here: bool) -> None:
        try:
            self._take_notice(signum, here)
        except Exception as e:  # noqa: BLE001 - a thread must not die with the agreement.
            logging.error("Stopping on %s failed: %s", signal.strsignal(signum), e)
            self._exit_now("without agreement", together=False)

    def _take_notice(self, signum: int, here: bool) -> None:
        with self._notice_lock:
            if not self._connected:
                if self._deferred is not None:  # The first signal's status, as everywhere.
                    self.signum = self._deferred
                    self._exit_now("while joining the other processes", together=False)
                self._deferred = signum
                logging.warning(
                    "%s received while joining the other processes: stopping once joined "
                    "(again to stop at once)",
                    signal.strsignal(signum),
                )
                return
            if self.signum is not None:
                if here:
                    logging.warning(
                        "%s again: %s; kill -9 to stop now",
                        signal.strsignal(signum),
                        "saving the step reached"
                        if self.stopping
                        else "stopping after the step in flight",
                    )
                return
            if here and self._coordination() is not None:
                signum = self._publish(signum)
            self.signum = signum
        where = "received" if here else "received by another process"
        logging.warning("%s %s: stopping", signal.strsignal(signum), where)
        self._agree()

    def _publish(self, signum: int) -> int:
        """Tells the other processes; the first notice of the run wins."""
        import jax

        client = self._coordination()
        try:
            client.key_value_set(_NOTICE, str(signum))
        except jax.errors.JaxRuntimeError:  # Another process published first.
            return int(client.blocking_key_value_get(_NOTICE, _AGREEMENT_TIMEOUT_MS))
        return signum

    def _agree(self) -> None:
        """Every process reports the polls it has passed ("saved" when it has nothing
        unsaved); all stop after the fastest one's next poll, or exit now if any process
        has nothing unsaved (no later step can have finished without it)."""
        with self._poll_lock:  # The main thread waits at its next poll until agreed.
            mine = str(self._polls) if self._unsaved else _SAVED
            reports, client = [mine], self._coordination()
            if client is not None:
                try:
                    client.key_value_set(f"{_KEYS}/at/{_process_id()}", mine)
                    client.wait_at_barrier(f"{_KEYS}/barrier", _AGREEMENT_TIMEOUT_MS)
                    reports = [v for _, v in client.key_value_dir_get(f"{_KEYS}/at/")]
                except Exception as e:  # noqa: BLE001 - a process that does not answer.
                    logging.error("The processes could not agree where to stop: %s", e)
                    self._exit_now("without agreement", together=False)
            if _SAVED in reports:
                if self._before_exit is not None:
                    self._before_exit()
                self._exit_now(self._why if mine == _SAVED else _ANOTHER)
            self._stop_at = max(map(int, reports)) + 1
        self._agreed.set()

    def _exit_now(self, why: str, together: bool = True) -> None:
        """Ends the process from this thread. Start-up writes nothing that this could cut
        in half: checkpoints set aside and metrics attached are renamed into place.
        ``together``: the processes leave jax.distributed together first, so that none
        finds the coordination service (in process 0) gone and aborts."""
        logging.warning("preempted %s; run the same command to resume", why)
        with self._exit_lock:
            self._end(128 + self.exit_signal, together)

    def _leave(self, code: int) -> None:
        """The main thread's way out, after the run or its Preempted. A notice meanwhile
        finds the exit taken, and the process leaves with 128 + its signal."""
        self.finished()  # Locks in the order the agreement takes them: poll, then exit.
        with self._exit_lock:
            self._end(code, together=True)

    def _end(self, code: int, together: bool) -> None:
        if together and self._coordination() is not None:
            import jax

            jax.distributed.shutdown()
        logging.flush()
        late = self.signum or self._received  # (The flushes ran any pending handler.)
        if code == 0 and late:  # A signal as a finished run leaves: its status all the same.
            logging.warning("preempted %s; run the same command to resume", _FINISHED)
            logging.flush()
            code = 128 + late
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _process_id() -> int:
    from jax._src import distributed

    return distributed.global_state.process_id
