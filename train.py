"""Trains an FCN: ``python train.py --config=configs/fcn8s.py --workdir=DIR``.

Resumes from the latest checkpoint in DIR. Override any config field with
``--config.<field>=<value>``. On several hosts, every host runs the same
command (on TPU VMs and detected clusters nothing more is needed; elsewhere add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``).
"""

from absl import app, flags

from fcn_jax import cli

FLAGS = flags.FLAGS
cli.define_flags("Directory for checkpoints and TensorBoard logs.")


def main(argv):
    with cli.clear_errors():
        cli.setup(argv)
        from fcn_jax import training  # After jax.distributed.initialize.

        training.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
