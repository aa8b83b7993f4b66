"""train.py / eval.py as users run them, and two processes as two hosts."""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from fcn_jax import checkpointing, sharding, steps
from tests.conftest import REPO
from tests.test_init_from import save_tiny_weights, tiny_params

pytestmark = pytest.mark.slow

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
    result = run("train.py", *TINY, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    for needle in ("train/loss=", "train/images_per_sec=", "train/eta_minutes=", "eval/mean_iou="):
        assert needle in log
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

    # Resuming a finished run does nothing more and keeps the checkpoints.
    result = run("train.py", *TINY, f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--config.model.varaint=fcn8s",
            "unknown config field 'varaint' (did you mean \"variant\"?)",
        ),
        ("--config.model.variant=fcn9s", "model.variant='fcn9s' is not one of"),
        ("--config.model.geometry=valid", "model.geometry='valid' is not one of"),
        ("--config.dataset.image_size=(16,16)", "at least 32 pixels"),
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


def test_two_processes_train_like_one(tmp_path, tiny_config):
    """Two processes on 127.0.0.1 (gloo, 2 CPU devices each) == one process with 4.

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
    ]
    single = run("train.py", *args, f"--workdir={tmp_path / 'one'}", devices=4)
    assert single.returncode == 0, single.stderr[-3000:]

    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "train.py",
                *args,
                f"--workdir={tmp_path / 'two'}",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env_with_devices(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "Process 1 of 2; 2 local of 4 devices" in outputs[1]

    one = restored_params(tmp_path / "one", config)
    two = restored_params(tmp_path / "two", config)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), one, two)
    moved = jax.tree.leaves(jax.tree.map(lambda a: float(np.abs(a).max()), one))
    assert max(moved) > 0
