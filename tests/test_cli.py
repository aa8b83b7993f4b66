"""train.py / eval.py as users run them, and two processes as two hosts."""

import asyncio
import gc
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest
import tensorstore as ts

from fcn_jax import checkpointing, cli, sharding, steps
from tests.conftest import REPO
from tests.test_init_from import save_tiny_weights, tiny_params

# The demo config, shrunk to a few tiny steps.
TINY = [
    "--config=configs/demo.py",
    "--config.model.base_width=4",
    "--config.model.fc_width=16",
    "--config.dataset.image_size=(32,32)",
    "--config.dataset.eval_batch_size=32",
    "--config.batch_size=8",
    "--config.num_train_steps=4",
    "--config.log_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.checkpoint_every_steps=2",
    "--config.optimizer.warmup_steps=0",
]


def env_with_devices(n):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={n} --xla_backend_optimization_level=0"
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(script, *args, devices=1, timeout=600):
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        env=env_with_devices(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_trains_and_evaluates_through_the_cli(tmp_path):
    # A repeated tuple field: the last one counts, as for every other flag.
    mesh = ["--config.mesh.shape=(2,2)", "--config.mesh.shape", "(1,1)"]  # absl's 2 forms.
    result = run("train.py", *TINY, *mesh, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    for needle in ("train/loss=", "train/images_per_sec=", "train/eta_minutes=", "eval/mean_iou="):
        assert needle in log
    assert "mesh {'data': 1, 'model': 1}" in log
    assert "tracked_metric" not in log  # orbax's warning at every save made before its eval.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]

    result = run("eval.py", *TINY, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean_iou" in result.stdout
    # The per-class table names the synthetic classes.
    assert re.search(r"^  triangle +(\d\.\d{4}|n/a)", result.stdout, re.M), result.stdout
    out = tmp_path / "eval" / "validation_4.json"  # Only step 4 was evaluated: the best.
    report = json.loads(out.read_text())
    assert report["step"] == 4
    assert report["split"] == "validation"
    assert report["class_names"] == ["background", "circle", "square", "triangle"]
    assert np.asarray(report["confusion_matrix"]).shape == (4, 4)
    for plot in ("validation_4_confusion.png", "validation_4_iou.png"):
        assert (tmp_path / "eval" / plot).stat().st_size > 1000


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--config.model.varaint=fcn8s",
            "unknown config field 'varaint' (did you mean \"variant\"?)",
        ),
        ("--config.model.variant=fcn9s", "model.variant='fcn9s' is not one of"),
        pytest.param(
            "--config.model.geometry=valid",
            "model.geometry='valid' is not one of",
            marks=pytest.mark.slow,  # config_lib's checks: tests/test_config.py.
        ),
        pytest.param(
            "--config.dataset.image_size=(16,16)", "at least 32 pixels", marks=pytest.mark.slow
        ),
    ],
)
def test_bad_config_fails_before_anything_runs(tmp_path, flag, message):
    result = run("train.py", *TINY, f"--workdir={tmp_path}", flag)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restored_params(workdir, config):
    """The latest parameters, restored onto one device whatever mesh saved them."""
    programs = steps.compile_steps(config, sharding.make_mesh((1, 1)))
    manager = checkpointing.make_manager(str(workdir), read_only=True)
    try:
        step = manager.latest_step()
        restored = checkpointing.restore_variables(manager, step, programs.abstract_variables)
        return jax.device_get(restored["params"])
    finally:
        manager.close()


def start(script, *args, log, devices=1):
    """A process writing its output to ``log``, for tests that signal it mid-run."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, script, *args],
            cwd=REPO,
            env=env_with_devices(devices),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(log, needle, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while needle not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


NOISE = ("Traceback", "Event loop is closed", "Future exception was never retrieved")


def test_sigterm_during_a_slow_evaluation_saves_and_exits_143_and_damage_is_one_line(tmp_path):
    """The evaluation of step 4 (TTA on 128x128 images): SIGTERM as it starts (while its
    programs compile) ends the process at once: step 4 was saved before it began."""
    args = [
        *TINY,
        "--config.dataset.image_size=(128,128)",
        "--config.inference.flip=True",
        "--config.inference.scales=(0.75,1.0,1.25)",
        "--config.num_train_steps=400",
        "--config.checkpoint_every_steps=1000",
        f"--workdir={tmp_path}",
    ]
    log = tmp_path / "train.log"
    proc = start("train.py", *args, log=log)
    wait_for(log, "Evaluating step 4 on validation", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
    text = log.read_text()
    assert re.search(
        r"preempted during the evaluation of step 4: step 4 is saved in \S+/checkpoints/4, and "
        "its evaluation runs first when the run resumes; run the same command to resume",
        text,
    ), text[-3000:]
    assert "eval/mean_iou" not in text  # Given up, not finished.
    assert os.listdir(tmp_path / "checkpoints") == ["4"]  # Not a checkpoint step: saved anyway.
    assert not any(n in text for n in NOISE), text[-3000:]

    (data,) = (tmp_path / "checkpoints" / "4" / "state" / "d").iterdir()
    os.truncate(data, data.stat().st_size // 2)
    result = run("eval.py", *TINY, f"--workdir={tmp_path}", "--checkpoint=4")
    assert result.returncode == 1
    assert re.search(
        r"^error: checkpoint 4 in \S+ cannot be restored \(.*\); no other checkpoint there can$",
        result.stderr,
        re.M,
    ), result.stderr[-3000:]
    assert not any(n in result.stderr for n in NOISE), result.stderr[-3000:]

    result = run("train.py", *args)  # Nothing restores: one line, the checkpoint set aside.
    assert result.returncode == 1
    assert re.search(r"^error: no checkpoint in \S+ can be restored: 4 \(", result.stderr, re.M)
    assert not any(n in result.stderr for n in NOISE), result.stderr[-3000:]
    assert os.listdir(tmp_path / "checkpoints_damaged") == ["4"]


STEPS = 12  # Long enough for a signal at the first logged step to land mid-run.


def test_abandoned_checkpoint_reads_are_quiet_and_other_lost_errors_are_not(tmp_path, monkeypatch):
    """A failed restore leaves tensorstore reads in bare futures nobody awaits; asyncio
    reports each when it is collected, as an error that names neither orbax nor fcn_jax."""
    logger = logging.getLogger("asyncio")
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    reported = []
    handler = logging.Handler()
    handler.emit = lambda record: reported.append(record.getMessage())
    logger.addHandler(handler)
    cli.quiet_abandoned_reads()
    with pytest.raises(ValueError, match="tensorstore_spec") as read_error:
        ts.open({"driver": "zarr", "kvstore": f"file://{tmp_path}/"}, open=True).result()
    loop = asyncio.new_event_loop()
    try:
        for error in (read_error.value, RuntimeError("a bug of ours")):
            loop.create_future().set_exception(error)  # Collected unretrieved at once.
            gc.collect()
    finally:
        loop.close()
        logger.removeHandler(handler)
    assert len(reported) == 1 and "a bug of ours" in reported[0], reported


def test_entry_points_say_nothing_twice_and_nothing_that_is_fine(capsys):
    """A repeated override is said once; Ctrl-C in eval.py is one line and 130; orbax's
    warnings about what fcn_jax meant (eval.py's read-only manager) are not shown, its
    others are; the reads of a failed restore that nobody awaits go to debug, other lost
    errors do not."""
    # The last of a repeated override wins, in each of absl's forms.
    argv = ["train.py", "-config.mesh.shape=(2,2)", "--config.mesh.shape", "(-1,1)", "-w", "d"]
    assert cli._last_overrides_win(argv) == ["train.py", "--config.mesh.shape", "(-1,1)", "-w", "d"]
    with pytest.raises(SystemExit) as e, cli.clear_errors():
        raise KeyboardInterrupt
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"

    def orbax_warning(message):
        path = f"{os.sep}orbax{os.sep}checkpoint{os.sep}checkpoint_manager.py"
        return logging.LogRecord("absl", logging.WARNING, path, 1, message, None, None)

    quiet = cli._QuietOrbax()
    assert not quiet.filter(orbax_warning("Given directory is read only=/w/checkpoints"))
    assert quiet.filter(orbax_warning("Something orbax has to say"))

    # A coroutine of orbax's that a failed restore left unawaited, and one of anyone else.
    orbax_read = types.SimpleNamespace(
        cr_code=types.SimpleNamespace(co_filename=f"{os.sep}orbax{os.sep}serialization.py")
    )
    reported = []
    real = sys.__unraisablehook__
    try:
        sys.__unraisablehook__ = reported.append
        for where in (orbax_read, None):
            cli._quiet_unraisable(
                types.SimpleNamespace(exc_value=RuntimeError("lost"), object=where)
            )
    finally:
        sys.__unraisablehook__ = real
    assert [u.object for u in reported] == [None]


def test_two_processes_preempted_and_resumed_train_like_one(tmp_path, tiny_config):
    """Two processes on 127.0.0.1 (gloo, 2 CPU devices each) == one process with 4,
    also when one of them gets SIGTERM halfway and the same command resumes the run.

    Both start from converted weights with fc6/fc7 split FSDP-style over the hosts, so
    the weights are placed onto shards that no single process holds entirely.
    """
    config = tiny_config()  # The same model as TINY.
    save_tiny_weights(tmp_path / "w", tiny_params("fcn8s", config.model.num_classes))
    args = [
        *TINY,
        "--config.dataset.eval_batch_size=16",
        "--config.mesh.param_sharding=fsdp",
        f"--config.init_from={tmp_path / 'w'}",
        f"--config.num_train_steps={STEPS}",
        "--config.checkpoint_every_steps=1000",
        "--config.eval_every_steps=1000",
    ]
    single = run("train.py", *args, f"--workdir={tmp_path / 'one'}", devices=4)
    assert single.returncode == 0, single.stderr[-3000:]

    def two_processes(log_name, ids=(0, 1), address=None):
        address = address or f"127.0.0.1:{free_port()}"
        flags = [*args, f"--workdir={tmp_path / 'two'}", f"--coordinator_address={address}"]
        return [
            start(
                "train.py",
                *flags,
                "--num_processes=2",
                f"--process_id={i}",
                log=tmp_path / f"{log_name}{i}.log",
                devices=2,
            )
            for i in ids
        ]

    # SIGTERM to process 1 alone: both agree on a step, save it and exit 143 ...
    procs = two_processes("preempted")
    wait_for(tmp_path / "preempted1.log", "train/loss=", procs[1])
    procs[1].send_signal(signal.SIGTERM)
    logs = [tmp_path / f"preempted{i}.log" for i in range(2)]
    for p, log in zip(procs, logs):
        assert p.wait(timeout=300) == 143, log.read_text()[-3000:]
    stopped = [re.findall(r"preempted at step (\d+); saved", log.read_text()) for log in logs]
    assert stopped[0] == stopped[1] and len(stopped[0]) == 1, stopped
    assert int(stopped[0][0]) < STEPS
    assert os.listdir(tmp_path / "two" / "checkpoints") == stopped[0]
    assert "Process 1 of 2; 2 local of 4 devices" in logs[1].read_text()
    # Ctrl-C to process 1 while it waits for process 0 to join: it waits to tell it, then
    # both end at once with its status, having trained nothing; the checkpoint stays.
    address = f"127.0.0.1:{free_port()}"
    (late,) = two_processes("starting", ids=(1,), address=address)
    wait_for(tmp_path / "starting1.log", "Process 1: joining 2 processes", late)
    late.send_signal(signal.SIGINT)
    wait_for(tmp_path / "starting1.log", "Interrupt received while joining", late)
    procs = [*two_processes("starting", ids=(0,), address=address), late]
    for i, p in enumerate(procs):
        text = (tmp_path / f"starting{i}.log").read_text
        assert p.wait(timeout=120) == 130, text()[-3000:]
        assert "preempted during start-up, before this run trained a step" in text()
        assert "train/loss=" not in text()
    assert os.listdir(tmp_path / "two" / "checkpoints") == stopped[0]
    # ... and the same command finishes the run.
    procs = two_processes("resumed")
    for i, p in enumerate(procs):
        assert p.wait(timeout=600) == 0, (tmp_path / f"resumed{i}.log").read_text()[-3000:]

    one = restored_params(tmp_path / "one", config)
    two = restored_params(tmp_path / "two", config)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), one, two)
    moved = jax.tree.leaves(jax.tree.map(lambda a: float(np.abs(a).max()), one))
    assert max(moved) > 0


def test_export_writes_every_artifact_or_nothing(tmp_path, tiny_config):
    """export.py from converted weights; a second export into the same folder is one line,
    exit 1, and leaves the first export as it was."""
    pytest.importorskip("onnx", reason="requirements-export.txt: the ONNX export")
    save_tiny_weights(tmp_path / "w", tiny_params("fcn8s", tiny_config().model.num_classes))
    args = [*TINY, f"--config.init_from={tmp_path / 'w'}", f"--output={tmp_path / 'out'}"]
    result = run("export.py", *args, "--format=onnx,stablehlo")
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["fcn_jax_export.json", "model.onnx", "model.stablehlo"]
    assert str(tmp_path / "w") in json.loads((tmp_path / "out" / written[0]).read_text())["source"]

    again = run("export.py", *args, "--format=saved_model")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "exists and is not an empty folder" in again.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path / "out")) == written
    assert sorted(os.listdir(tmp_path)) == ["out", "w"]  # No temporary folder left behind.
