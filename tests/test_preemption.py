"""Preemption, damaged checkpoints and the other ways work could be lost, in one process.

A run stopped by SIGTERM/SIGINT, by a damaged checkpoint or by a changed optimizer
must resume to exactly (bitwise, on CPU) the parameters of an uninterrupted run.
The CLI's exit statuses, start-up and two processes are in tests/test_cli.py (a
notice in start-up ends the process itself, which a test cannot do in pytest's).
"""

import datetime
import glob
import logging
import os
import shutil
import signal
import time
import types

import jax
import numpy as np
import pytest
from orbax.checkpoint import checkpoint_managers as cm

from fcn_jax import (
    checkpointing,
    damage,
    evaluation,
    input_pipeline,
    optim,
    preemption,
)
from tests.conftest import save_ranked
from tests.test_training import logged_steps, saved_params, train

STEPS = 6  # Checkpoints every 2 steps (tiny_config), evaluation at the end only.


@pytest.fixture
def config(tiny_config):
    return lambda **kw: tiny_config(**{"num_train_steps": STEPS, "eval_every_steps": STEPS, **kw})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A run that nobody stopped, trained once: get(config) -> its workdir."""
    cache = {}

    def get(config):
        if "workdir" not in cache:
            cache["workdir"] = tmp_path_factory.mktemp("uninterrupted")
            train(config, cache["workdir"])
        return cache["workdir"]

    return get


def assert_bitwise_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def restore_all(manager, step):
    args = checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore())
    return manager.restore(step, args=args)


def signal_during_step(monkeypatch, signum: int, step: int):
    """Sends this process ``signum`` while the batch of ``step`` is being fetched."""
    real = input_pipeline.train_iterator

    def iterator(config, *, start_step=0):
        for i, batch in enumerate(real(config, start_step=start_step), start_step + 1):
            if i == step:
                os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(input_pipeline, "train_iterator", iterator)


@pytest.mark.parametrize(
    "signum, status, damaged",
    [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)],
    ids=["SIGTERM", "SIGINT-then-damaged"],
)
def test_a_signal_saves_the_step_reached_and_the_resumed_run_is_exact(
    config, uninterrupted, tmp_path, monkeypatch, signum, status, damaged
):
    with monkeypatch.context() as m:
        signal_during_step(m, signum, 3)
        with pytest.raises(preemption.Preempted, match="preempted at step 3; saved .*/3;") as e:
            train(config(), tmp_path)
    assert e.value.exit_code == status
    # Step 3 is between the checkpoints every 2 steps: saved for the signal alone.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
    assert signal.getsignal(signum) is not None  # Handlers restored after training.
    if damaged:  # The newest checkpoint, truncated: step 2 must take over.
        (data,) = glob.glob(str(tmp_path / "checkpoints" / "3" / "state" / "d" / "*"))
        os.truncate(data, size := os.path.getsize(data) // 3)
        with pytest.raises(
            damage.DamagedCheckpointError,
            match=r"^checkpoint 3 in .* cannot be restored \(.*not valid for value of size.*\); "
            r"these can: \[2\] \(pass --checkpoint=<step>\)$",
        ):
            evaluation.evaluate_checkpoint(config(), str(tmp_path), "3")
        assert os.path.isdir(tmp_path / "checkpoints" / "3")  # Eval moves nothing.
    train(config(), tmp_path)
    assert_bitwise_equal(
        saved_params(tmp_path, STEPS), saved_params(uninterrupted(config()), STEPS)
    )
    if damaged:
        moved = tmp_path / "checkpoints_damaged" / "3" / "state" / "d" / os.path.basename(data)
        assert moved.stat().st_size == size  # Set aside as it was, not deleted.


def test_evaluations_are_saved_first_and_a_missed_one_runs_on_resume(
    config, uninterrupted, tmp_path, monkeypatch
):
    """Evaluations at 4 and 6 (the last), checkpoints every 3 steps: every evaluated step is
    saved before its evaluation and ranked after it. The step-4 evaluation fails (a signal
    then ends the process, see tests/test_cli.py); the resumed run evaluates step 4 first.
    A signal during the last save ends the run once it is on disk, before the last
    evaluation, which the same command then runs."""
    settings = config(eval_every_steps=4, checkpoint_every_steps=3, keep_checkpoints=9)
    real_save = checkpointing.save

    def failing(*args, **kwargs):
        # Its save began before it (orbax writes into "4.orbax-checkpoint-tmp-...").
        assert "4" in [n.split(".")[0] for n in os.listdir(tmp_path / "checkpoints")]
        raise MemoryError("out of memory in the evaluation")

    with monkeypatch.context() as m:
        m.setattr(evaluation, "evaluate", failing)
        with pytest.raises(MemoryError):
            train(settings, tmp_path)
    manager = checkpointing.make_manager(str(tmp_path), read_only=True)
    assert manager.all_steps() == [3, 4] and manager.best_step() is None
    manager.close()

    def signal_at_the_last_save(manager, step, *args):
        path = real_save(manager, step, *args)
        if step == STEPS:
            os.kill(os.getpid(), signal.SIGTERM)
        return path

    with monkeypatch.context() as m:
        m.setattr(checkpointing, "save", signal_at_the_last_save)
        with pytest.raises(preemption.Preempted, match=f"preempted at step {STEPS}; saved"):
            train(settings, tmp_path)  # Evaluates step 4 first, trains 5 and 6, saves 6.
    manager = checkpointing.make_manager(str(tmp_path), read_only=True)
    assert manager.all_steps() == [3, 4, 6] and manager.best_step() == 4
    manager.close()
    final = train(settings, tmp_path)  # Trains nothing: evaluates step 6, the last.

    manager = checkpointing.make_manager(str(tmp_path), read_only=True)
    ranked = {s: manager.metrics(s) for s in manager.all_steps()}
    manager.close()
    assert sorted(ranked) == [3, 4, 6] and ranked[3] is None  # 3 was saved, not evaluated.
    assert ranked[4]["mean_iou"] > 0 and ranked[6]["mean_iou"] == final["mean_iou"]
    assert logged_steps(tmp_path, "eval/mean_iou") == [4, STEPS]  # Each evaluation once.
    assert_bitwise_equal(
        saved_params(tmp_path, STEPS), saved_params(uninterrupted(config()), STEPS)
    )


def test_best_says_so_when_no_checkpoint_was_evaluated(tiny_config, tmp_path, caplog):
    manager = checkpointing.make_manager(str(tmp_path))
    checkpointing.save(manager, 2, {"w": np.zeros((3,), np.float32)}, tiny_config())
    manager.wait_until_finished()
    with caplog.at_level(logging.WARNING):
        assert checkpointing.resolve_step(manager, "best") == 2
    manager.close()
    assert "has been evaluated, so none is best: using the latest, 2" in caplog.text


def test_best_never_points_at_a_checkpoint_set_aside(tiny_config, tmp_path):
    config = tiny_config()
    manager = checkpointing.make_manager(str(tmp_path))
    state = {"params": {"w": np.zeros((3,), np.float32)}}
    for step, miou in ((2, 0.1), (4, 0.9)):
        save_ranked(manager, step, state, config, miou)
    assert checkpointing.resolve_step(manager, "best") == 4
    os.remove(tmp_path / "checkpoints" / "4" / "state" / "manifest.ocdbt")

    assert damage.restore_newest(manager, lambda s: restore_all(manager, s))[0] == 2
    assert checkpointing.resolve_step(manager, "best") == 2
    manager.close()
    reopened = checkpointing.make_manager(str(tmp_path), read_only=True)
    assert checkpointing.resolve_step(reopened, "best") == 2
    reopened.close()


def test_when_no_checkpoint_restores_one_line_names_them(tiny_config, tmp_path):
    manager = checkpointing.make_manager(str(tmp_path))
    for step in (2, 4):
        checkpointing.save(manager, step, {"w": np.zeros((3,), np.float32)}, tiny_config())
    manager.wait_until_finished()
    for step in ("2", "4"):
        os.remove(tmp_path / "checkpoints" / step / "state" / "manifest.ocdbt")
    with pytest.raises(
        damage.DamagedCheckpointError,
        match=r"no checkpoint in .* can be restored: 4 \(.*\); 2 \(.*\)\. They were moved to "
        r".*checkpoints_damaged",
    ):
        damage.restore_newest(manager, lambda step: restore_all(manager, step))
    manager.close()
    assert sorted(os.listdir(tmp_path / "checkpoints_damaged")) == ["2", "4"]


@pytest.mark.parametrize(
    "relative",
    [
        "metrics/metrics",
        "_CHECKPOINT_METADATA",
        "config/metadata",
        "state/_METADATA",
        "state/_sharding",
        "state/array_metadatas/process_0",
    ],
)
def test_every_json_file_of_a_checkpoint_is_checked(tiny_config, tmp_path, relative):
    manager = checkpointing.make_manager(str(tmp_path))
    for step in (2, 4):
        save_ranked(manager, step, {"w": jax.numpy.zeros((3,))}, tiny_config(), 0.5)
    manager.close()
    directory = str(tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "2" / relative).write_text("garbage{")
    found = damage.unreadable_json(directory)
    assert list(found) == [2] and f"2/{relative}: Expecting value" in found[2]
    # A file gone: damage to training, but not to eval.py beside a running training,
    # whose retention deletes checkpoints file by file.
    os.remove(tmp_path / "checkpoints" / "4" / relative)
    required = relative in ("_CHECKPOINT_METADATA", "config/metadata", "state/_METADATA")
    assert list(damage.unreadable_json(directory)) == ([2, 4] if required else [2])
    assert list(damage.unreadable_json(directory, missing_is_damage=False)) == [2]


def test_a_damaged_metrics_file_is_named_by_eval_and_set_aside_by_training(
    config, uninterrupted, tmp_path, caplog
):
    shutil.copytree(uninterrupted(config()), tmp_path, dirs_exist_ok=True)
    (tmp_path / "checkpoints" / "4" / "metrics").mkdir()
    (tmp_path / "checkpoints" / "4" / "metrics" / "metrics").write_text("garbage{")
    with caplog.at_level(logging.WARNING):
        _, restored = evaluation.evaluate_checkpoint(config(), str(tmp_path))
        assert restored.step == STEPS  # The best, which is readable.
        assert os.path.isdir(tmp_path / "checkpoints" / "4")  # eval.py moves nothing.
        train(config(), tmp_path)  # Finished: resumes at 6, trains nothing.
    assert "Checkpoint 4 cannot be read (" in caplog.text and "4/metrics/metrics" in caplog.text
    assert os.listdir(tmp_path / "checkpoints") == [str(STEPS)]
    assert os.listdir(tmp_path / "checkpoints_damaged") == ["4"]


def test_running_out_of_memory_or_a_checkpoint_deleted_meanwhile_is_not_damage(
    tiny_config, tmp_path
):
    manager = checkpointing.make_manager(str(tmp_path))
    for step in (2, 4):
        checkpointing.save(manager, step, {"w": np.zeros((3,), np.float32)}, tiny_config())
    manager.wait_until_finished()

    def out_of_memory(step):
        raise MemoryError("cannot allocate the optimizer state")

    with pytest.raises(MemoryError):
        damage.restore_newest(manager, out_of_memory)

    def deleted_by_retention(step):
        shutil.rmtree(tmp_path / "checkpoints" / str(step))
        raise FileNotFoundError(f"{tmp_path}/checkpoints/{step}/state/manifest.ocdbt")

    with pytest.raises(damage.CheckpointVanishedError, match="was deleted while it was being"):
        damage.restore_named(manager, 4, deleted_by_retention)
    manager.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    assert not (tmp_path / "checkpoints_damaged").exists()


def test_damage_is_decided_reading_a_few_arrays_at_a_time(tiny_config, tmp_path, monkeypatch):
    manager = checkpointing.make_manager(str(tmp_path))
    state = {f"w{i}": np.full((1000,), i, np.float32) for i in range(6)}  # 4 kB each.
    checkpointing.save(manager, 2, state, tiny_config())
    manager.close()
    read = []
    real = damage.ocp.PyTreeCheckpointer.restore

    def counting(self, directory, args):
        restored = real(self, directory, args=args)
        read.append(sum(x.nbytes for x in jax.tree.leaves(restored) if x is not ...))
        return restored

    monkeypatch.setattr(damage, "_READ_BYTES", 8100)
    monkeypatch.setattr(damage.ocp.PyTreeCheckpointer, "restore", counting)
    assert damage.unreadable(str(tmp_path / "checkpoints"), 2) is None
    assert sorted(read) == [8000, 8000, 8000]  # Every array, never more than two at once.


def test_checkpoints_every_few_minutes_besides_every_few_steps(config, tmp_path):
    train(
        config(checkpoint_every_steps=100, checkpoint_every_minutes=1e-9, keep_checkpoints=9),
        tmp_path,
    )
    saved = sorted(map(int, os.listdir(tmp_path / "checkpoints")))
    # Step 1 by the minutes (orbax's continuous policy never saves while a save is still
    # being written, which is why not every step is there), the last one always.
    assert saved[0] == 1 and saved[-1] == STEPS

    policy = checkpointing.EveryMinutes(
        minimum_interval_secs=600, started=datetime.datetime(2026, 1, 1, 12, 0)
    )
    context = cm.DecisionContext(
        is_saving_in_progress=False,
        reached_preemption=False,
        multiprocessing_options=checkpointing.ocp.options.MultiprocessingOptions(),
    )

    def due(minutes, previous=()):
        info = types.SimpleNamespace  # What orbax passes: a step and its time.
        now = info(step=7, time=datetime.datetime(2026, 1, 1, 12, minutes), metrics=None)
        saved = [
            info(step=5, time=datetime.datetime(2026, 1, 1, 11, m), metrics=None) for m in previous
        ]
        return policy.should_save(now, saved, context=context)

    # Counted from the end of start-up, also after a checkpoint older than that.
    assert not due(9) and due(10)
    assert not due(9, previous=[50]) and due(10, previous=[50])


def test_a_bad_eval_split_fails_before_training(config, tmp_path):
    with pytest.raises(ValueError, match=r"dataset.eval_split='val': synthetic eval splits are"):
        train(config(dataset__eval_split="val"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_failing_evaluation_has_saved_its_step_first(config, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError("eval ran out of memory")

    monkeypatch.setattr(evaluation, "evaluate", out_of_memory)
    with pytest.raises(MemoryError):
        train(config(checkpoint_every_steps=100, eval_every_steps=3), tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == ["3"]


def adam_counts(workdir, step):
    manager = checkpointing.make_manager(str(workdir), read_only=True)
    try:
        state = restore_all(manager, step)["state"]
    finally:
        manager.close()
    return sorted(int(c) for c in jax.tree.leaves(state["opt_state"]) if np.ndim(c) == 0)


def test_changing_the_optimizer_on_resume(config, tmp_path, caplog):
    train(config(num_train_steps=2), tmp_path)
    # Values that keep the optimizer state's structure carry over; a changed schedule is
    # logged with the learning rate before and after.
    resumed = {"num_train_steps": 4, "optimizer__learning_rate": 1e-4}
    with caplog.at_level(logging.WARNING):
        train(config(**resumed), tmp_path)
    before = optim.make_schedule(config().optimizer, 2)(2)  # Cosine: 0 at its end.
    after = optim.make_schedule(config(optimizer__learning_rate=1e-4).optimizer, 4)(2)
    assert (
        f"(optimizer.learning_rate: 0.001 -> 0.0001; num_train_steps: 2 -> 4): at step 2 the "
        f"learning rate was {float(before):.6g} and is now {float(after):.6g}" in caplog.text
    )
    assert float(before) == 0 and float(after) > 0
    assert adam_counts(tmp_path, 4) == [4, 4]
    with pytest.raises(
        checkpointing.CheckpointMismatchError,
        match=r"holds the state of another optimizer \(optimizer.grad_clip_norm: 0.0 -> 1.0\)"
        r".*add --config.reset_optimizer=true",
    ):
        train(config(**resumed, optimizer__grad_clip_norm=1.0), tmp_path)
    with pytest.raises(
        checkpointing.CheckpointMismatchError, match=r"warmup_steps=0: .*never apply"
    ):
        train(config(**resumed, optimizer__warmup_steps=10), tmp_path)

    # reset_optimizer makes a new state also where the structure stays: Adam's moments and
    # their count start afresh at step 4, the learning-rate schedule going on from there.
    before = saved_params(tmp_path, 4)
    reset = config(num_train_steps=5, optimizer__learning_rate=5e-4, reset_optimizer=True)
    train(reset, tmp_path)
    assert adam_counts(tmp_path, 5) == [1, 5]
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before, saved_params(tmp_path, 5))
    assert max(jax.tree.leaves(moved)) > 0
    # The same command, run again after a preemption, continues that state.
    reset.num_train_steps = STEPS
    train(reset, tmp_path)
    assert adam_counts(tmp_path, STEPS) == [2, STEPS]


def test_init_at_starts_the_schedule_at_the_step(tiny_config):
    config = tiny_config(
        optimizer__name="sgd", optimizer__schedule="poly", optimizer__weight_decay=0.0
    )
    tx, schedule = optim.make_optimizer(config.optimizer, 10, False)
    params = grads = {"w": {"kernel": np.ones((2,), np.float32)}}
    fresh, later = tx.init(params), optim.init_at(tx, params, 7)
    np.testing.assert_allclose(tx.update(grads, fresh, params)[0]["w"]["kernel"], -schedule(0))
    np.testing.assert_allclose(tx.update(grads, later, params)[0]["w"]["kernel"], -schedule(7))
    assert schedule(7) < schedule(0) / 2


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_second_signal_says_what_is_happening(caplog):
    with caplog.at_level(logging.WARNING), preemption.Listener() as listener:
        listener.connected()
        listener.running()
        assert not listener.poll()
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: listener.signum is not None)
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: "again" in caplog.text)
        assert listener.poll() and listener.exit_signal == signal.SIGINT
    assert "Interrupt received: stopping" in caplog.text
    assert "Interrupt again: stopping after the step in flight" in caplog.text


@pytest.fixture
def exits(monkeypatch):
    """os._exit of fcn_jax.preemption, recorded: the status it was given, and SystemExit in
    its place (which a thread ends with in silence)."""
    statuses = []

    def exit_(status):
        statuses.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(preemption.os, "_exit", exit_)
    return statuses


def test_the_entry_points_listener_ends_the_process_itself(exits):
    """train.py's listener exits there and then, after the run or its Preempted: the
    interpreter's shutdown would wait for abandoned device work, handlers gone."""
    with pytest.raises(SystemExit), preemption.Listener(exit_process=True):
        raise preemption.Preempted(signal.SIGTERM, 3, "/w/checkpoints/3")
    with pytest.raises(SystemExit), preemption.Listener(exit_process=True):
        pass
    with pytest.raises(ValueError), preemption.Listener(exit_process=True):
        raise ValueError("bad input: cli.clear_errors prints it")
    assert exits == [143, 0]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # exits.
def test_a_signal_while_joining_waits_to_tell_the_others_and_one_after_the_end_exits(exits, caplog):
    with caplog.at_level(logging.WARNING), preemption.Listener() as listener:
        os.kill(os.getpid(), signal.SIGTERM)  # Before jax.distributed is joined ...
        wait_until(lambda: "while joining" in caplog.text)
        assert exits == []  # ... nothing ends before the others can be told.
        with pytest.raises(SystemExit):
            listener.connected()
    assert exits == [143] and "preempted during start-up, before this run trained" in caplog.text

    with preemption.Listener() as listener:  # A second signal while joining: at once.
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: caplog.text.count("while joining") == 2)
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: len(exits) == 2)
    assert exits[1] == 130

    with preemption.Listener() as listener:  # After the last poll, until the process exits.
        listener.connected()
        listener.running()
        assert not listener.poll()
        listener.finished()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: len(exits) == 3)
    assert exits[2] == 143 and "preempted after training ended: every step is saved" in caplog.text


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # exits.
def test_a_signal_as_a_finished_run_leaves_is_its_exit_status(exits, monkeypatch, caplog):
    """The main thread is leaving (after the run, the exit taken) when the signal comes:
    the process says so and exits 128 + the signal, as every other process told does."""
    flush, sent = preemption.logging.flush, []

    def flush_then_signal():
        flush()
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))

    with caplog.at_level(logging.WARNING):
        with pytest.raises(SystemExit), preemption.Listener(exit_process=True) as listener:
            listener.connected()
            monkeypatch.setattr(preemption.logging, "flush", flush_then_signal)
    assert exits[0] == 143 and set(exits) == {143}
    assert "preempted after training ended: every step is saved" in caplog.text
