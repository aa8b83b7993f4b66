"""Trains an FCN: ``python train.py --config=configs/fcn8s.py --workdir=DIR``.

Resumes from the latest checkpoint in DIR. Override any config field with
``--config.<field>=<value>``. On several hosts, every host runs the same
command (on TPU VMs and detected clusters nothing more is needed; elsewhere add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``).
"""

from absl import app, flags
from ml_collections import config_flags

from fcn_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard logs.")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_distributed_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup()
    from fcn_jax import training  # After jax.distributed.initialize.

    with cli.clear_errors():
        training.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
