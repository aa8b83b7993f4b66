"""tf.data input: each process's share of every global batch, as numpy dicts.

A batch is ``{"image": uint8[B, H, W, 3], "label": uint8[B, H, W]}`` with label
255 for void pixels; images stay uint8 until the device, where the train and
eval steps normalise them. ``B`` is this process's share of the global batch;
``sharding.global_batch`` assembles the global arrays.

Training data continues where it left off: the stream from ``start_step`` holds
exactly the examples that the first run would have seen from that step on.
Evaluation covers the whole split once, in batches padded with void examples so
that every process runs the same number of equally shaped steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf

from fcn_jax.datasets import synthetic

VOID = 255
DATASETS = ("synthetic",)


def _process_share(global_batch: int, what: str) -> int:
    count = jax.process_count()
    if global_batch % count:
        raise ValueError(f"{what}={global_batch} does not divide over {count} processes")
    return global_batch // count


def _check_dataset(config) -> None:
    if config.dataset.name not in DATASETS:
        raise ValueError(f"dataset.name={config.dataset.name!r} is not one of {DATASETS}")


def _finish(ds: tf.data.Dataset, batch: int, prefetch: int) -> Iterator[dict[str, np.ndarray]]:
    ds = ds.batch(batch, drop_remainder=True).prefetch(prefetch)
    return ds.as_numpy_iterator()


def train_iterator(config, *, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of global batches start_step, start_step + 1, ...

    Global batch s holds the examples s*B ... s*B + B-1 of the training stream,
    and process p takes its contiguous slice of it: so one process and several
    see the same global batches, and a resumed run sees what an unbroken one would.
    """
    _check_dataset(config)
    global_batch = config.batch_size
    local = _process_share(global_batch, "batch_size")
    offset = jax.process_index() * local

    def to_global(k):  # k-th local example -> index in the training stream.
        return (k // local) * global_batch + offset + k % local

    indices = tf.data.Dataset.range(start_step * local, np.iinfo(np.int64).max).map(to_global)
    ds = synthetic.as_tf_dataset(
        indices, split=config.dataset.train_split, image_size=tuple(config.dataset.image_size)
    )
    return _finish(ds, local, config.dataset.prefetch)


def eval_num_examples(config) -> int:
    _check_dataset(config)
    size = synthetic.SPLITS.get(config.dataset.eval_split)
    if size is None:
        raise ValueError(f"dataset.eval_split={config.dataset.eval_split!r} has no fixed size")
    return size


def eval_iterator(config) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """(this process's batches of the eval split, number of batches).

    Processes take contiguous shares of the split; every process runs the same
    number of batches, the missing ones made of void examples (label 255, which
    the confusion matrix ignores).
    """
    total = eval_num_examples(config)
    local = _process_share(config.dataset.eval_batch_size, "dataset.eval_batch_size")
    count, index = jax.process_count(), jax.process_index()
    start, stop = total * index // count, total * (index + 1) // count
    most = -(-total // count)  # The largest share.
    num_batches = -(-most // local)
    ds = synthetic.as_tf_dataset(
        tf.data.Dataset.range(start, stop),
        split=config.dataset.eval_split,
        image_size=tuple(config.dataset.image_size),
    )
    height, width = config.dataset.image_size
    void = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros((height, width, 3), tf.uint8),
            "label": tf.fill((height, width), tf.constant(VOID, tf.uint8)),
        }
    ).repeat()
    ds = ds.concatenate(void).take(num_batches * local)
    return _finish(ds, local, config.dataset.prefetch), num_batches


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """Raises on a label other than 0..num_classes-1 and 255 (void)."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=VOID + 1)
    counts[:num_classes] = counts[VOID] = 0
    bad = np.flatnonzero(counts)
    if bad.size:
        raise ValueError(
            f"label value {int(bad[0])} found ({int(counts[bad[0]])} pixels; all bad values: "
            f"{bad.tolist()}), but model.num_classes={num_classes} allows 0..{num_classes - 1} "
            "and 255 (void); fix the labels or set --config.model.num_classes"
        )
