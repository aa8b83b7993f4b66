"""Evaluates a checkpoint: ``python eval.py --config=configs/fcn8s.py --workdir=DIR``.

Restores ``--checkpoint`` (best by eval mean IoU, latest, or a step number) onto
the current devices, which may differ from those that trained it, evaluates
``dataset.eval_split`` and prints PA, MPA, mIoU and FWIoU.
"""

from absl import app, flags

from fcn_jax import cli

FLAGS = flags.FLAGS
cli.define_flags("Directory holding checkpoints/ from train.py.")
flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
flags.DEFINE_string("output_json", None, "Also write the metrics to this JSON file.")


def main(argv):
    with cli.clear_errors():
        cli.setup(argv)
        from fcn_jax import evaluation  # After jax.distributed.initialize.

        evaluation.evaluate_checkpoint(
            FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.output_json
        )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
