"""Exports a trained FCN: ``python export.py --config=CFG --workdir=DIR --output=OUT``.

The model is the workdir's ``--checkpoint`` (best by default), or
``--config.init_from=WEIGHTS`` converted by ``python -m fcn_jax.convert``, as for eval.py
and predict.py. OUT (a new folder) gets one artifact per ``--format`` (model.onnx,
saved_model/, model.stablehlo) and fcn_jax_export.json describing them: each takes uint8
RGB images [N, H, W, 3] of any size, pads them as evaluation does (the config's eval
canvas) and returns the class map and the scores. ``--tta`` bakes in the config's flip
augmentation. If any format fails, or OUT cannot be written, nothing is written and one
line says why.
"""

from absl import app, flags

from fcn_jax import cli

FLAGS = flags.FLAGS
cli.define_flags("A training run's directory (its checkpoints/).", workdir_required=False)
flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
flags.DEFINE_string("output", None, "New folder for the artifacts and their metadata.")
flags.DEFINE_list("format", ["onnx", "saved_model", "stablehlo"], "Formats to write.")
flags.DEFINE_bool("tta", False, "Bake in the config's flip test-time augmentation.")
flags.DEFINE_list("platforms", ["cpu"], "StableHLO/SavedModel targets: cpu, cuda, rocm, tpu.")
flags.mark_flag_as_required("output")


def main(argv):
    with cli.clear_errors():
        cli.setup(argv)
        from fcn_jax import export  # After jax.distributed.initialize.

        written = export.export_trained(
            FLAGS.config,
            FLAGS.workdir,
            FLAGS.checkpoint,
            FLAGS.format,
            FLAGS.output,
            tta=FLAGS.tta,
            platforms=FLAGS.platforms,
        )
    for name, path in written.items():
        print(f"{name}: {path}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
