"""Test set-up: 8 simulated CPU devices, so sharding tests run on one host.

XLA reads XLA_FLAGS when the backend starts, so this runs before any test
imports jax. Single-device tests build their own one-device mesh.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# Optimisation level 0 compiles the tiny test models ~5x faster; their run time is negligible.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
# One persistent compilation cache for the whole run, pytest workers and the CLI tests'
# subprocesses included: many tests compile the same programs again (a resumed run, another
# process of the same config), and XLA compiles slowly on CPU. The first process to import
# this file (pytest itself) makes it; the others inherit it through the environment.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_MADE_HERE = tempfile.mkdtemp(
        prefix="fcn_jax_tests_xla_cache_"
    )
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
# No test downloads weights: the run has its own weights cache, and an empty mirror serves
# every file, so a test that asked for a catalogue name by mistake fails at once, offline.
# The weights tests set both themselves.
if "FCN_JAX_TESTS_WEIGHTS" not in os.environ:  # Made once, by pytest itself.
    os.environ["FCN_JAX_TESTS_WEIGHTS"] = _WEIGHTS_MADE_HERE = tempfile.mkdtemp(
        prefix="fcn_jax_tests_weights_"
    )
    os.environ["FCN_JAX_CACHE"] = os.path.join(_WEIGHTS_MADE_HERE, "cache")
    os.environ["FCN_JAX_WEIGHTS_MIRROR"] = os.path.join(_WEIGHTS_MADE_HERE, "empty_mirror")
    os.mkdir(os.environ["FCN_JAX_WEIGHTS_MIRROR"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `configs` is imported as a package by config files.

import pytest  # noqa: E402


def pytest_unconfigure(config):
    for made in ("_CACHE_MADE_HERE", "_WEIGHTS_MADE_HERE"):
        if made in globals():
            shutil.rmtree(globals()[made], ignore_errors=True)


def make_tiny_config(**overrides):
    """The demo config shrunk so that a train step compiles and runs in about a second;
    ``section__field=value`` overrides."""
    from configs import demo

    config = demo.get_config()
    config.model.base_width = 4
    config.model.fc_width = 16
    config.dataset.image_size = (32, 32)
    config.dataset.eval_batch_size = 32
    config.batch_size = 8
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.optimizer.warmup_steps = 0
    config.mesh.shape = (1, 1)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture
def tiny_config():
    """make_tiny_config (module-scoped fixtures import it directly)."""
    return make_tiny_config


def save_ranked(manager, step, state, config, mean_iou):
    """A checkpoint as training leaves an evaluated step: saved, then ranked by its mean IoU."""
    from fcn_jax import checkpointing

    checkpointing.save(manager, step, state, config)
    checkpointing.attach_metrics(manager, step, {"mean_iou": mean_iou})


def convert_cli(*args):
    """``python -m fcn_jax.convert ARGS`` as a user runs it, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "fcn_jax.convert", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


SAMPLES = REPO.parent / "shared" / "voc_samples"


def require_samples():
    if not (SAMPLES / "voc").is_dir():
        pytest.skip(f"{SAMPLES} is absent: the real VOC samples exist only beside the CI checkout")


@pytest.fixture(scope="session")
def voc_folder(tmp_path_factory):
    """A VOC-layout root of the 80 real sample pairs, with the official lists filtered to them."""
    require_samples()
    root = tmp_path_factory.mktemp("voc_folder")
    present = {p.stem for p in (SAMPLES / "voc" / "SegmentationClass").glob("*.png")}
    for sub in ("JPEGImages", "SegmentationClass"):
        (root / sub).mkdir()
        for i in present:
            ext = ".jpg" if sub == "JPEGImages" else ".png"
            (root / sub / f"{i}{ext}").symlink_to(SAMPLES / "voc" / sub / f"{i}{ext}")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split in ("train", "val"):
        ids = (SAMPLES / "voc" / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        (lists / f"{split}.txt").write_text("\n".join(i for i in ids if i in present) + "\n")
    return root
