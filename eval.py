"""Evaluates a trained model: ``python eval.py --config=configs/fcn8s.py --workdir=DIR``.

Restores ``--checkpoint`` (best by eval mean IoU, latest, or a step number) onto
the current devices, which may differ from those that trained it, or, with
``--config.init_from=WEIGHTS``, converted weights of a whole FCN. Evaluates
``dataset.eval_split`` with the config's test-time inference (``inference.*``),
prints PA, MPA, mIoU, FWIoU and a per-class table, and writes the report
(``<workdir>/eval/<split>_<step>.json`` with the confusion matrix, and
``..._confusion.png`` and ``..._iou.png`` beside it).
"""

from absl import app, flags

from fcn_jax import cli

FLAGS = flags.FLAGS
cli.define_flags("Directory holding checkpoints/ from train.py; reports go to its eval/.")
flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
flags.DEFINE_string("output_json", None, "Report path; default <workdir>/eval/<split>_<step>.json.")


def main(argv):
    with cli.clear_errors():
        cli.setup(argv)
        from fcn_jax import evaluation  # After jax.distributed.initialize.

        evaluation.evaluate_checkpoint(
            FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.output_json, progress=True
        )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
