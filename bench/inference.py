"""Speed of inference with test-time augmentation: images/s and the cost of each setting.

    python bench/inference.py                         # FCN-8s `same`, batch 1, 512x512 canvas
    python bench/inference.py --geometry=caffe --dtype=bfloat16 --batch=8   # on a GPU
    python bench/inference.py --backbone=resnet50   # fcn_resnet50 (its aux head unused)
    python bench/inference.py --runtimes          # deployment runtimes, batch 1 and 8

Times the real jitted ``predict_step`` of fcn_jax.steps (the eval step minus
the confusion matrix) on a padded eval canvas for: one view, flip, and flip with
the six scales 0.5 ... 1.75. FLOPs are XLA's cost analysis of the single view's HLO,
times the settings' total view area (the analysis counts a ``lax.map`` body once);
the peak is the matmul peak of bench/peak.py. One JSON line per setting.

``--runtimes`` instead times one model, the full-width FCN-8s (``caffe``) with the
random weights of tests/torch_reference.py's network converted by fcn_jax.convert,
in each runtime: Flax under jit, the exported SavedModel and ONNX model (``--formats``),
and PyTorch eager on the reference network itself; each takes uint8 images and
returns the classes and scores. One JSON line per runtime and batch size, with each
runtime's agreement with Flax on that batch (classes equal, score difference over the
largest score).
"""

import json
import pathlib
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peak as peak_lib  # noqa: E402
from configs import default  # noqa: E402
from fcn_jax import convert, deployed, export, normalization, sharding, steps  # noqa: E402

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
flags.DEFINE_bool("runtimes", False, "Compare the deployment runtimes instead.")
flags.DEFINE_list("batches", ["1", "8"], "Batch sizes for --runtimes.")
flags.DEFINE_list("formats", ["saved_model", "onnx"], "Exported formats timed by --runtimes.")
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


def _median_seconds(fn, images) -> tuple[float, tuple]:
    """(median seconds of the timed runs, the outputs of the warm-up run)."""
    outputs = fn(images)  # Warm-up (and compilation).
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), tuple(np.asarray(o) for o in outputs)


def torch_runner(net):
    """PyTorch eager on the reference network, with the same normalisation and outputs."""
    import torch

    mean = torch.tensor(normalization.CAFFE_MEAN_BGR, dtype=torch.float32)

    def run(images):
        with torch.inference_mode():
            x = torch.from_numpy(images).float().flip(-1) - mean  # RGB -> BGR, minus the mean.
            scores = net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return scores.argmax(-1).to(torch.uint8).numpy(), scores.numpy()

    return run


def runtime_runners(folder: pathlib.Path):
    """{name: uint8 images -> (classes, scores) as numpy}, the same weights in every one."""
    from tests import torch_reference

    net = torch_reference.reference_net("fcn8s", base_width=64, fc_width=4096, seed=0)
    params = convert.from_torch_state_dict(net.state_dict(), "fcn8s")
    config = default.get_config()
    config.model.geometry, config.dataset.normalization = "caffe", "caffe"
    config.dataset.name = "voc_sbd"  # Its 21 class names, for the metadata.
    config.dataset.eval_pad_size = (FLAGS.size, FLAGS.size)  # The canvas: the images' size.
    variables = {"params": params, "batch_stats": {}}
    exporter = export.Exporter(config, variables, "bench: torch_reference fcn8s, seed 0")
    written = export.export(exporter, FLAGS.formats, folder / "export")
    flax = jax.jit(exporter.bound())
    runners = {"flax_jit": lambda x: jax.block_until_ready(flax(x))}
    if "saved_model" in written:
        import tensorflow as tf

        serve = tf.saved_model.load(written["saved_model"]).signatures[export.SIGNATURE]
        runners["saved_model"] = lambda x: tuple(
            serve(images=x)[k].numpy() for k in export.OUTPUT_NAMES
        )
    if "onnx" in written:
        import onnxruntime

        providers = deployed.onnx_providers(onnxruntime.get_available_providers())
        session = onnxruntime.InferenceSession(written["onnx"], providers=providers)
        name = f"onnxruntime {session.get_providers()[0]}"
        runners[name] = lambda x: session.run(None, {export.INPUT_NAME: x})
    runners["torch_eager"] = torch_runner(net)
    return runners


def bench_runtimes() -> None:
    with tempfile.TemporaryDirectory() as folder:
        runners = runtime_runners(pathlib.Path(folder))
        for batch in map(int, FLAGS.batches):
            images = np.random.default_rng(0).integers(
                0, 256, (batch, FLAGS.size, FLAGS.size, 3), np.uint8
            )
            reference = None
            for name, run in runners.items():
                run_s, (classes, scores) = _median_seconds(run, images)
                if reference is None:  # Flax, the first runner.
                    reference = classes, scores
                record = {
                    "runtime": name,
                    "batch": batch,
                    "size": FLAGS.size,
                    "latency_ms_per_image": round(1000 * run_s / batch, 1),
                    "images_per_sec": round(batch / run_s, 3),
                    "classes_equal_to_flax": float(np.mean(classes == reference[0])),
                    "score_diff_vs_flax": float(
                        np.abs(scores - reference[1]).max() / np.abs(reference[1]).max()
                    ),
                }
                print(json.dumps(record), flush=True)


def main(argv):
    del argv
    if FLAGS.runtimes:
        bench_runtimes()
        return
    peak = peak_lib.matmul_peak(jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32)
    single = bench_setting("single view", peak, None)
    print(json.dumps(single), flush=True)
    single_view_flops = single["gflop_per_image"] * 1e9 * FLAGS.batch
    for name in FLAGS.settings:
        if name != "single view":
            print(json.dumps(bench_setting(name, peak, single_view_flops)), flush=True)


if __name__ == "__main__":
    app.run(main)
