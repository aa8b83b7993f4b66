"""Segments your photos: ``python predict.py --config=CFG --workdir=DIR PHOTOS... --output=OUT``.

PHOTOS are files, folders (their images) or globs. For each ``<stem>.<ext>``,
OUT gets ``<stem>.png`` (palette PNG of class indices, the photo's displayed
size) and ``<stem>_overlay.jpg`` (the photo with the classes blended over it and
a legend). The model is the workdir's ``--checkpoint`` (best by default), or
``--config.init_from=WEIGHTS`` converted by ``python -m fcn_jax.convert``. Test-time
augmentation follows ``--config.inference.*``. Unreadable photos are reported and
skipped; the exit status is 1 if any photo failed. ``--model=EXPORT/model.onnx`` (or
``EXPORT/saved_model``), written by export.py, segments with ONNX Runtime or TensorFlow
instead of the JAX model, without --config: the export's metadata has the class names.
That path imports neither JAX nor the training code (nor TensorFlow, for ONNX).
"""

from absl import app, flags

from fcn_jax import cli

FLAGS = flags.FLAGS
cli.define_flags(
    "A training run's directory (its checkpoints/).", workdir_required=False, config_required=False
)
flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
flags.DEFINE_string("output", None, "Folder for the masks and overlays (created).")
flags.DEFINE_integer(
    "max_size", 1024, "Photos with a longer side are segmented at this size; 0: never resize."
)
flags.DEFINE_string("model", None, "An exported model.onnx or saved_model/ (export.py).")
flags.DEFINE_integer(
    "batch_size", 0, "Photos per batch; 0: dataset.eval_batch_size (1 with --model)."
)
flags.mark_flag_as_required("output")


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("name the photos to segment: files, folders or globs")
    if FLAGS.config is None and FLAGS.model is None:
        raise app.UsageError("--config is required (or --model, an exported model)")
    with cli.clear_errors():
        if FLAGS.model is None:  # The JAX model: TensorFlow off the GPUs, multi-host JAX.
            cli.setup(argv[:1])
        from fcn_jax import prediction  # After jax.distributed.initialize.

        summary = prediction.predict(
            FLAGS.config,
            FLAGS.workdir,
            FLAGS.checkpoint,
            argv[1:],
            FLAGS.output,
            max_size=FLAGS.max_size,
            batch_size=FLAGS.batch_size,
            progress=True,
            model=FLAGS.model,
        )
    total = len(summary.written) + len(summary.failed)
    print(f"Segmented {len(summary.written)} of {total} photos into {FLAGS.output}", flush=True)
    for message in summary.failed:
        print(f"  failed: {message}", flush=True)
    return summary.exit_code


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
