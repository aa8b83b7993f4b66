"""Speed of inference with test-time augmentation: images/s and the cost of each setting.

    python bench/inference.py                         # FCN-8s `same`, batch 1, 512x512 canvas
    python bench/inference.py --geometry=caffe --dtype=bfloat16 --batch=8   # on a GPU
    python bench/inference.py --backbone=resnet50   # fcn_resnet50 (its aux head unused)

Times the real jitted ``predict_step`` of fcn_jax.steps (the eval step minus
the confusion matrix) on a padded eval canvas for: one view, flip, and flip with
the six scales 0.5 ... 1.75. FLOPs are XLA's cost analysis of the single view's HLO,
times the settings' total view area (the analysis counts a ``lax.map`` body once);
the peak is the matmul peak of bench/peak.py. One JSON line per setting.
"""

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peak as peak_lib  # noqa: E402
from configs import default  # noqa: E402
from fcn_jax import sharding, steps  # noqa: E402

SETTINGS = {
    "single view": dict(flip=False, scales=(1.0,)),
    "flip": dict(flip=True, scales=(1.0,)),
    "flip x 6 scales": dict(flip=True, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)),
}
flags.DEFINE_string("geometry", "same", "caffe | same (VGG backbones)")
flags.DEFINE_string("backbone", "vgg16", "vgg16 | vgg16_bn | resnet50 | resnet101")
flags.DEFINE_integer("batch", 1, "Global batch size.")
flags.DEFINE_integer("size", 512, "Square eval canvas (dataset.eval_pad_size).")
flags.DEFINE_string("dtype", "float32", "float32 | bfloat16 compute.")
flags.DEFINE_list("settings", list(SETTINGS), "Settings to measure.")
flags.DEFINE_integer("repeats", 3, "Timed runs after one warm-up run.")
FLAGS = flags.FLAGS


def bench_setting(name: str, peak: float, single_view_flops: float | None) -> dict:
    config = default.get_config()
    config.model.geometry = FLAGS.geometry
    config.model.backbone = FLAGS.backbone
    config.model.dtype = FLAGS.dtype
    config.dataset.normalization = "caffe"
    config.dataset.eval_pad_size = (FLAGS.size, FLAGS.size)
    config.inference.flip = SETTINGS[name]["flip"]
    config.inference.scales = SETTINGS[name]["scales"]
    mesh = sharding.make_mesh(config.mesh.shape)
    programs = steps.compile_steps(config, mesh)
    variables = steps.variables(programs.init(jax.random.key(0)))
    images = np.random.default_rng(0).integers(
        0, 256, (FLAGS.batch, FLAGS.size, FLAGS.size, 3), np.uint8
    )
    batch = sharding.global_batch({"image": images}, mesh)["image"]
    t = time.perf_counter()
    lowered = programs.predict_step.lower(variables, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    setting = SETTINGS[name]
    views_area = (2 if setting["flip"] else 1) * sum(s * s for s in setting["scales"])
    if single_view_flops is None:  # Only the single view's FLOPs are counted right.
        single_view_flops = peak_lib.flops(lowered)
    flops = single_view_flops * views_area
    jax.block_until_ready(compiled(variables, batch))  # Warm-up.
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(variables, batch))
        times.append(time.perf_counter() - t)
    run_s = float(np.median(times))
    return {
        "setting": name,
        "backbone": FLAGS.backbone,
        "geometry": FLAGS.geometry if FLAGS.backbone.startswith("vgg") else None,
        "batch": FLAGS.batch,
        "size": FLAGS.size,
        "dtype": FLAGS.dtype,
        "device": jax.devices()[0].device_kind,
        "compile_s": round(compile_s, 1),
        "batch_s": round(run_s, 3),
        "images_per_sec": round(FLAGS.batch / run_s, 3),
        "views_area": views_area,
        "gflop_per_image": round(flops / FLAGS.batch / 1e9, 1),
        "fraction_of_peak": round(flops / run_s / peak, 3),
    }


def main(argv):
    del argv
    peak = peak_lib.matmul_peak(jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32)
    single = bench_setting("single view", peak, None)
    print(json.dumps(single), flush=True)
    single_view_flops = single["gflop_per_image"] * 1e9 * FLAGS.batch
    for name in FLAGS.settings:
        if name != "single view":
            print(json.dumps(bench_setting(name, peak, single_view_flops)), flush=True)


if __name__ == "__main__":
    app.run(main)
