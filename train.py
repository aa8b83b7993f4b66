"""Trains an FCN: ``python train.py --config=configs/fcn8s.py --workdir=DIR``.

Resumes from the latest checkpoint in DIR. Override any config field with
``--config.<field>=<value>``. On several hosts, every host runs the same
command (on TPU VMs and detected clusters nothing more is needed; elsewhere add
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``).
"""

from absl import app, flags

from fcn_jax import cli, preemption

FLAGS = flags.FLAGS
cli.define_flags("Directory for checkpoints and TensorBoard logs.")


def main(argv):
    # Listening from the start: a signal during the start-up to come (joining the other
    # processes, imports, restore, compilation) ends the run at once, every process alike,
    # and until the process has exited (see preemption.Listener's exit_process).
    with cli.clear_errors(), preemption.Listener(exit_process=True) as listener:
        cli.setup(argv)
        listener.connected()
        from fcn_jax import training  # After jax.distributed.initialize.

        training.train_and_evaluate(FLAGS.config, FLAGS.workdir, listener)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
