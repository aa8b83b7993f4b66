"""Throughput of the training input pipeline (decode, scale, pad, crop, flip).

    python bench/input_pipeline.py --config=configs/fcn8s.py \
        [--config.dataset.data_dir=DIR] --seconds=30

Iterates the real ``train_iterator`` of the config (512x512 crops for the VOC
configs) on the host CPU, with no model, and prints as its last line a JSON
object with ``images_per_sec`` and ``images_per_sec_per_core``. To measure
without the full data set, point a ``folder`` config at any VOC-layout root:
``--config.dataset.name=folder --config.dataset.data_dir=ROOT``.
"""

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fcn_jax import input_pipeline  # noqa: E402
from fcn_jax.config_lib import validate_config  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_float("seconds", 30.0, "How long to measure, after a warm-up.")
flags.DEFINE_float("warmup_seconds", 5.0, "Untimed start (caching, thread pools).")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = FLAGS.config
    validate_config(config)
    config.dataset.normalization = config.dataset.normalization or "caffe"  # Padding colour.
    batches = input_pipeline.train_iterator(config)
    start = time.perf_counter()
    while time.perf_counter() - start < FLAGS.warmup_seconds:
        next(batches)
    images, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < FLAGS.seconds:
        images += len(next(batches)["image"])
    cores = len(os.sched_getaffinity(0))
    result = {
        "dataset": config.dataset.name,
        "crop_size": list(config.dataset.crop_size),
        "batch_size": config.batch_size,
        "cores": cores,
        "seconds": round(elapsed, 1),
        "images": images,
        "images_per_sec": round(images / elapsed, 1),
        "images_per_sec_per_core": round(images / elapsed / cores, 1),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
