"""Preemption, damaged checkpoints and the other ways work could be lost, in one process.

A run stopped by SIGTERM/SIGINT, by a damaged checkpoint or by a changed optimizer
must resume to exactly (bitwise, on CPU) the parameters of an uninterrupted run.
The CLI's exit statuses and two processes are in tests/test_cli.py.
"""

import datetime
import glob
import os
import signal
import types

import jax
import numpy as np
import pytest

from fcn_jax import checkpointing, evaluation, input_pipeline, optim, preemption
from tests.test_training import saved_params, train

STEPS = 6  # Checkpoints every 2 steps (tiny_config), evaluation at the end only.


@pytest.fixture
def config(tiny_config):
    return lambda **kw: tiny_config(**{"num_train_steps": STEPS, "eval_every_steps": STEPS, **kw})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The parameters of a run that nobody stopped, computed once."""
    cache = {}

    def get(config):
        if "params" not in cache:
            workdir = tmp_path_factory.mktemp("uninterrupted")
            train(config, workdir)
            cache["params"] = saved_params(workdir, STEPS)
        return cache["params"]

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
            checkpointing.DamagedCheckpointError,
            match=r"^checkpoint 3 in .* cannot be restored \(.*not valid for value of size.*\); "
            r"these can: \[2\] \(pass --checkpoint=<step>\)$",
        ):
            evaluation.evaluate_checkpoint(config(), str(tmp_path), "3")
        assert os.path.isdir(tmp_path / "checkpoints" / "3")  # Eval moves nothing.
    train(config(), tmp_path)
    assert_bitwise_equal(saved_params(tmp_path, STEPS), uninterrupted(config()))
    if damaged:
        moved = tmp_path / "checkpoints_damaged" / "3" / "state" / "d" / os.path.basename(data)
        assert moved.stat().st_size == size  # Set aside as it was, not deleted.


def test_best_never_points_at_a_checkpoint_set_aside(tiny_config, tmp_path):
    config = tiny_config()
    manager = checkpointing.make_manager(str(tmp_path))
    state = {"params": {"w": np.zeros((3,), np.float32)}}
    for step, miou in ((2, 0.1), (4, 0.9)):
        checkpointing.save(manager, step, state, config, {"mean_iou": miou})
    manager.wait_until_finished()
    assert checkpointing.resolve_step(manager, "best") == 4
    os.remove(tmp_path / "checkpoints" / "4" / "state" / "manifest.ocdbt")

    assert checkpointing.restore_newest(manager, lambda s: restore_all(manager, s))[0] == 2
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
        checkpointing.DamagedCheckpointError,
        match=r"no checkpoint in .* can be restored: 4 \(.*\); 2 \(.*\)\. They were moved to "
        r".*checkpoints_damaged",
    ):
        checkpointing.restore_newest(manager, lambda step: restore_all(manager, step))
    manager.close()
    assert sorted(os.listdir(tmp_path / "checkpoints_damaged")) == ["2", "4"]


def test_checkpoints_every_few_minutes_besides_every_few_steps(config, tmp_path):
    train(
        config(checkpoint_every_steps=100, checkpoint_every_minutes=1e-9, keep_checkpoints=9),
        tmp_path,
    )
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == list(range(1, STEPS + 1))

    policy = checkpointing.EveryMinutes(10, started=datetime.datetime(2026, 1, 1, 12, 0))

    def due(minutes, previous=()):
        info = types.SimpleNamespace  # What orbax passes: a step and its time.
        now = info(step=7, time=datetime.datetime(2026, 1, 1, 12, minutes), metrics=None)
        saved = [
            info(step=5, time=datetime.datetime(2026, 1, 1, 12, m), metrics=None) for m in previous
        ]
        return policy.should_save(now, saved, context=None)

    assert not due(9) and due(10)  # Since training started, when nothing was saved since.
    assert not due(14, previous=[5]) and due(15, previous=[5])
    assert not due(9, previous=[])  # A resumed run does not save on its first step.


def test_a_bad_eval_split_fails_before_training(config, tmp_path):
    with pytest.raises(ValueError, match=r"dataset.eval_split='val': synthetic eval splits are"):
        train(config(dataset__eval_split="val"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_failing_evaluation_saves_its_step_first(config, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError("eval ran out of memory")

    monkeypatch.setattr(evaluation, "evaluate", out_of_memory)
    with pytest.raises(MemoryError):
        train(config(checkpoint_every_steps=100, eval_every_steps=3), tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == ["3"]


def test_changing_the_optimizer_on_resume(config, tmp_path):
    train(config(num_train_steps=4), tmp_path)
    # Values that keep the optimizer state's structure carry over.
    train(config(num_train_steps=4, optimizer__learning_rate=1e-4), tmp_path)
    with pytest.raises(
        checkpointing.CheckpointMismatchError,
        match=r"holds the state of another optimizer \(optimizer.grad_clip_norm: checkpoint "
        r"has 0.0, config has 1.0\).*add --config.reset_optimizer=true",
    ):
        train(config(optimizer__grad_clip_norm=1.0), tmp_path)
    with pytest.raises(
        checkpointing.CheckpointMismatchError, match=r"warmup_steps=0: .*never apply"
    ):
        train(config(optimizer__warmup_steps=10), tmp_path)

    before = saved_params(tmp_path, 4)
    train(config(optimizer__grad_clip_norm=1.0, reset_optimizer=True), tmp_path)
    manager = checkpointing.make_manager(str(tmp_path), read_only=True)
    try:
        state = manager.restore(
            STEPS,
            args=checkpointing.ocp.args.Composite(state=checkpointing.ocp.args.StandardRestore()),
        )["state"]
    finally:
        manager.close()
    # The demo's Adam: its moments and their count started afresh at step 4 (2 steps
    # since), while the learning-rate schedule went on from step 4 (not from 0).
    counts = [int(c) for c in jax.tree.leaves(state["opt_state"]) if np.ndim(c) == 0]
    assert sorted(counts) == [STEPS - 4, STEPS]
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), before, jax.device_get(state["params"])
    )
    assert max(jax.tree.leaves(moved)) > 0


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
