"""Speed of the full FCN train step: images/s and the fraction of matmul peak.

    python bench/train_step.py                     # FCN-8s, batch 2, 224x224, both geometries
    python bench/train_step.py --geometry=caffe --size=512 --dtype=bfloat16 --batch=8
    python bench/train_step.py --geometry=same --backbone=vgg16_bn --fc_batch_norm  # MindSpore's
    python bench/train_step.py --backbone=resnet50 --aux_loss_weight=0.4   # fcn_resnet50
    python bench/train_step.py --backbone=resnet50 --aux_loss_weight=0.4 --size=512 \
        --dtype=bfloat16 --batch=16                                     # its recipe, on a GPU

Runs the real jitted, donated ``train_step`` of fcn_jax.steps on random
uint8 images. FLOPs come from XLA's cost analysis of the step's HLO; the
peak is a float32 (or bfloat16) matmul measured on the same device, so the
fraction says how well the step uses what this machine can do. Prints one JSON
line per geometry; a benchmark, not a test.
"""

import json
import resource
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
from fcn_jax import resnet, sharding, steps  # noqa: E402

flags.DEFINE_string("variant", "fcn8s", "fcn32s | fcn16s | fcn8s")
flags.DEFINE_list("geometry", ["caffe", "same"], "Geometries to measure.")
flags.DEFINE_integer("batch", 2, "Global batch size.")
flags.DEFINE_integer("size", 224, "Square input size.")
flags.DEFINE_string("dtype", "float32", "float32 | bfloat16 compute.")
flags.DEFINE_string("fc6_impl", "matmul", "matmul | conv")
flags.DEFINE_string("backbone", "vgg16", "vgg16 | vgg16_bn | resnet50 | resnet101")
flags.DEFINE_float("aux_loss_weight", 0.0, "ResNet backbones: > 0 adds the auxiliary head.")
flags.DEFINE_bool("fc_batch_norm", False, "vgg16_bn: BatchNorm on fc6/fc7 too (MindSpore's net).")
flags.DEFINE_integer("steps", 5, "Timed steps after one warm-up step.")
FLAGS = flags.FLAGS


def bench_geometry(geometry: str, peak: float) -> dict:
    config = default.get_config()
    config.model.variant = FLAGS.variant
    config.model.geometry = geometry
    config.model.dtype = FLAGS.dtype
    config.model.fc6_impl = FLAGS.fc6_impl
    config.model.backbone = FLAGS.backbone
    config.model.fc_batch_norm = FLAGS.fc_batch_norm
    config.model.aux_loss_weight = FLAGS.aux_loss_weight
    config.dataset.normalization = "caffe"
    config.batch_size = FLAGS.batch
    config.mesh.shape = (-1, 1)
    mesh = sharding.make_mesh(config.mesh.shape)
    programs = steps.compile_steps(config, mesh)
    state = programs.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    local = {
        "image": rng.integers(0, 256, (FLAGS.batch, FLAGS.size, FLAGS.size, 3), np.uint8),
        "label": rng.integers(0, 21, (FLAGS.batch, FLAGS.size, FLAGS.size), np.uint8),
    }
    batch = sharding.global_batch(local, mesh)
    key = jax.random.key(1)
    t = time.perf_counter()
    lowered = programs.train_step.lower(state, batch, key)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    flops = peak_lib.flops(lowered)
    state, m = compiled(state, batch, key)  # Warm-up.
    jax.block_until_ready(m)
    times = []
    for _ in range(FLAGS.steps):
        t = time.perf_counter()
        state, m = compiled(state, batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    return {
        "variant": FLAGS.variant,
        "geometry": geometry,
        "batch": FLAGS.batch,
        "size": FLAGS.size,
        "dtype": FLAGS.dtype,
        "fc6_impl": FLAGS.fc6_impl,
        "backbone": FLAGS.backbone + ("+fc_bn" if FLAGS.fc_batch_norm else ""),
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "compile_s": round(compile_s, 1),
        "step_s": round(step_s, 3),
        "images_per_sec": round(FLAGS.batch / step_s, 3),
        "gflop_per_step": round(flops / 1e9, 1),
        "achieved_gflops": round(flops / step_s / 1e9, 1),
        "peak_gflops": round(peak / 1e9, 1),
        "fraction_of_peak": round(flops / step_s / peak, 3),
        "peak_host_memory_gb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2
        ),  # Linux reports KiB.
    }


def main(argv):
    del argv
    peak = peak_lib.matmul_peak(jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32)
    resnet_backbone = FLAGS.backbone in resnet.BACKBONES
    for geometry in FLAGS.geometry[:1] if resnet_backbone else FLAGS.geometry:
        result = bench_geometry(geometry, peak)
        if resnet_backbone:  # The geometry is the VGG FCN's.
            for key in ("geometry", "variant", "fc6_impl"):
                del result[key]
            result["aux_loss_weight"] = FLAGS.aux_loss_weight
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
