"""TensorBoard event files of a resumed run: every step appears once.

A run killed after logging steps that no checkpoint holds (``kill -9``, a crash, power
loss) would show those steps twice once the resumed run logs them again. On resume,
the event files in the workdir are rewritten without the events after the checkpoint
(each file replaced atomically), whichever loader TensorBoard uses; a run that starts
afresh (its predecessor saved no checkpoint) drops them all.
"""

from __future__ import annotations

import glob
import os

from absl import logging
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer import record_writer

from fcn_jax import files


def discard_after(logdir: str, step: int | None) -> int:
    """Drops the events after ``step`` from the event files in ``logdir`` (None: a run
    starting afresh, all but the files' headers); returns how many."""
    dropped = 0
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        kept, later = [], 0
        for record in event_file_loader.RawEventFileLoader(path).Load():
            event = event_pb2.Event.FromString(record)
            if event.WhichOneof("what") != "file_version" and (step is None or event.step > step):
                later += 1
            else:
                kept.append(record)
        if later:
            with files.atomic_file(path) as f:
                writer = record_writer.RecordWriter(f)
                for record in kept:
                    writer.write(record)
            dropped += later
    if dropped:
        logging.info(
            "Dropped %d TensorBoard events after %s, logged by a run that stopped before "
            "saving them",
            dropped,
            "the start" if step is None else f"step {step}",
        )
    return dropped
