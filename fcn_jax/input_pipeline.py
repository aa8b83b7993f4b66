"""tf.data input: each process's share of every global batch, as numpy dicts.

A batch is ``{"image": uint8[B, H, W, 3], "label": uint8[B, H, W]}`` with label
255 for void pixels; images stay uint8 until the device, where the train and
eval steps normalise them. ``B`` is this process's share of the global batch;
``sharding.global_batch`` assembles the global arrays.

Training data is deterministic for a seed and continues where it left off: the
stream from ``start_step`` holds exactly the examples (and augmentations) that an
unbroken run would have seen from that step on, without decoding the skipped ones.
Evaluation covers the whole split once, never resized or cropped: each image is
padded (label 255) to ``dataset.eval_pad_size``, or for a larger image to its
next multiple (with sliding windows: by whole window strides), or with
``dataset.eval_native_size`` kept at its own size; every process runs the same
number of equally shaped batches.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import numpy as np
import tensorflow as tf

from fcn_jax import inference, models, normalization, transforms
from fcn_jax.datasets import folder, synthetic

VOID = transforms.VOID
DATASETS = ("synthetic", "voc_sbd", "folder")
_STREAM_END = np.iinfo(np.int64).max


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
    return ds.with_options(_options()).as_numpy_iterator()


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # One thread per op: tf.data already runs examples in parallel, nesting only contends.
    options.threading.max_intra_op_parallelism = 1
    return options


class _Split(NamedTuple):
    """This process's contiguous share of a finite split, still encoded."""

    examples: tf.data.Dataset  # {"image": JPEG bytes, "label": label PNG bytes or path}
    size: int  # Examples in this process's share.
    total: int  # Examples in the whole split.
    decode_label: Callable  # examples' "label" -> uint8 [H, W] class indices.


def _voc_sbd_split(config, split: str) -> _Split:
    import tensorflow_datasets as tfds

    builder = _prepared_voc_sbd(config.dataset)
    if split not in builder.info.splits:
        raise ValueError(
            f"voc_sbd has no split {split!r}; it has {sorted(builder.info.splits.keys())}"
        )
    share = tfds.split_for_jax_process(split)
    examples = builder.as_dataset(
        split=share,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()},
    ).map(lambda ex: {"image": ex["image"], "label": ex["label"]})
    return _Split(
        examples,
        builder.info.splits[share].num_examples,
        builder.info.splits[split].num_examples,
        lambda b: tf.io.decode_png(b, channels=1)[..., 0],
    )


def _prepared_voc_sbd(ds_config):
    """The voc_sbd builder, prepared first (by process 0) when manual_dir is given."""
    import tensorflow_datasets as tfds
    from jax.experimental import multihost_utils

    import fcn_jax.datasets  # noqa: F401  Registers voc_sbd with TFDS.

    builder = tfds.builder("voc_sbd", data_dir=ds_config.data_dir or None)
    if not builder.is_prepared():
        if ds_config.manual_dir and not os.path.isdir(ds_config.manual_dir):
            raise FileNotFoundError(
                f"dataset.manual_dir={ds_config.manual_dir} does not exist; give the folder "
                "that holds VOCtrainval_11-May-2012.tar and benchmark.tgz (or their extracted "
                "folders)"
            )
        if not ds_config.manual_dir:
            raise FileNotFoundError(
                f"voc_sbd is not prepared in {builder.data_dir}: set dataset.manual_dir to the "
                "folder with VOCtrainval_11-May-2012.tar and benchmark.tgz (or their extracted "
                "folders) to prepare it now, or run `tfds build fcn_jax/datasets/voc_sbd "
                "--manual_dir=DIR --data_dir=DIR2` and set dataset.data_dir=DIR2"
            )
        if jax.process_index() == 0:
            config = tfds.download.DownloadConfig(manual_dir=ds_config.manual_dir)
            builder.download_and_prepare(download_config=config)
    multihost_utils.sync_global_devices("voc_sbd prepared")
    return tfds.builder("voc_sbd", data_dir=ds_config.data_dir or None)


def _folder_split(config, split: str) -> _Split:
    entries = folder.list_split(config.dataset.data_dir, split)
    count, index = jax.process_count(), jax.process_index()
    mine = entries[len(entries) * index // count : len(entries) * (index + 1) // count]
    paths = tf.data.Dataset.from_tensor_slices(([e.image for e in mine], [e.label for e in mine]))
    examples = paths.map(
        lambda i, lbl: {"image": tf.io.read_file(i), "label": lbl}  # Label read by PIL.
    )
    num_classes = config.model.num_classes
    return _Split(
        examples, len(mine), len(entries), lambda p: folder.decode_label_tf(p, num_classes)
    )


def _split(config, split: str) -> _Split:
    if config.dataset.name == "voc_sbd":
        return _voc_sbd_split(config, split)
    return _folder_split(config, split)


def train_iterator(config, *, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of global batches start_step, start_step + 1, ..."""
    _check_dataset(config)
    global_batch = config.batch_size
    local = _process_share(global_batch, "batch_size")
    if config.dataset.name == "synthetic":
        return _synthetic_train(config, start_step, global_batch, local)
    split = _split(config, config.dataset.train_split)
    examples = split.examples.cache() if config.dataset.cache else split.examples
    # A seeded reshuffle every epoch; skipping encoded records is cheap, decoding is not.
    examples = (
        examples.shuffle(split.size, seed=config.seed, reshuffle_each_iteration=True)
        .repeat()
        .skip(start_step * local)
    )
    # Augmentations are seeded by the global index, so no two processes draw alike.
    indices = _global_indices(start_step, global_batch, local)
    ds_config = config.dataset
    mean = normalization.mean_rgb_uint8(ds_config.normalization)

    def augment(example, index):
        seed = tf.stack([tf.cast(config.seed, tf.int64), index])
        image, label = transforms.train_crop(
            example["image"],
            split.decode_label(example["label"]),
            seed,
            crop_size=tuple(ds_config.crop_size),
            scale_range=tuple(ds_config.scale_range),
            mean_rgb=mean,
            flip=ds_config.flip,
            color_jitter=ds_config.color_jitter,
            scale_base=tuple(ds_config.scale_base),
            cat_max_ratio=ds_config.cat_max_ratio,
            photometric_distortion=ds_config.photometric_distortion,
            image_resize=ds_config.image_resize,
        )
        return {"image": image, "label": label}

    ds = tf.data.Dataset.zip(examples, indices).map(
        augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return _finish(ds, local, ds_config.prefetch)


def _global_indices(start_step: int, global_batch: int, local: int) -> tf.data.Dataset:
    """Indices in the global training stream of this process's examples from start_step on.

    Global batch s holds stream indices s*B ... s*B + B-1; process p takes its slice.
    """
    offset = jax.process_index() * local

    def to_global(k):  # k-th local example -> index in the training stream.
        return (k // local) * global_batch + offset + k % local

    return tf.data.Dataset.range(start_step * local, _STREAM_END).map(to_global)


def _synthetic_train(config, start_step, global_batch, local):
    """Example i of the global stream is synthetic training image i of the config's seed.

    The synthetic images are drawn at dataset.image_size, unaugmented: the augmentation
    fields (crop_size, scale_range, flip, ...) apply to voc_sbd and folder data.
    """
    ds = synthetic.as_tf_dataset(
        _global_indices(start_step, global_batch, local),
        split=config.dataset.train_split,
        image_size=tuple(config.dataset.image_size),
        seed=config.seed,
    )
    return _finish(ds, local, config.dataset.prefetch)


def _void(height: int, width: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros((height, width, 3), tf.uint8),
            "label": tf.fill((height, width), tf.constant(VOID, tf.uint8)),
        }
    ).repeat()


def check_eval_split(config) -> None:
    """Raises now, naming the field, if the eval split or batch cannot be read, so that
    training does not find out at its first evaluation."""
    _check_dataset(config)
    _process_share(config.dataset.eval_batch_size, "dataset.eval_batch_size")
    if config.dataset.name == "synthetic":
        _synthetic_eval_size(config)
    else:
        _split(config, config.dataset.eval_split)


def eval_iterator(config) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """(this process's batches of the eval split, number of batches).

    Processes take contiguous shares of the split; every process runs the same
    number of batches of each padded size, the missing ones made of void
    examples (label 255, which the confusion matrix ignores).
    """
    _check_dataset(config)
    local = _process_share(config.dataset.eval_batch_size, "dataset.eval_batch_size")
    if config.dataset.name == "synthetic":
        return _synthetic_eval(config, local)
    split = _split(config, config.dataset.eval_split)
    # Each bucket is one pass over the share: keep it in memory after the first (sizes) pass.
    examples = split.examples.cache() if config.dataset.cache else split.examples
    shapes = examples.map(
        lambda ex: tf.image.extract_jpeg_shape(ex["image"])[:2],
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    sizes = [eval_canvas(config, int(h), int(w)) for h, w in shapes.as_numpy_iterator()]
    buckets = _agree_on_buckets(collections.Counter(sizes))
    bucket_of = tf.constant([[b for b, _ in buckets].index(s) for s in sizes], tf.int32)
    indexed = tf.data.Dataset.zip(tf.data.Dataset.range(split.size), examples)
    mean = normalization.mean_rgb_uint8(config.dataset.normalization)
    parts, num_batches = [], 0
    for i, (bucket, most) in enumerate(buckets):
        batches = -(-most // local)

        def decode(_, ex, bucket=bucket):
            image = tf.image.decode_jpeg(ex["image"], channels=3, dct_method="INTEGER_ACCURATE")
            image, label = transforms.pad_to(image, split.decode_label(ex["label"]), bucket, mean)
            return {"image": image, "label": label}

        ds = indexed.filter(lambda k, _, i=i: tf.equal(bucket_of[k], i)).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        parts.append(ds.concatenate(_void(*bucket)).take(batches * local).batch(local))
        num_batches += batches
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    ds = ds.with_options(_options()).prefetch(config.dataset.prefetch)
    return ds.as_numpy_iterator(), num_batches


def eval_canvas(config, height: int, width: int) -> tuple[int, int]:
    """The canvas an eval (or predict) image of height x width is padded to: one rule for
    eval.py, predict.py and the exported programs (which apply it to symbolic sizes).

    With dataset.eval_native_size, the image's own size (the reference protocol: no
    padding beyond the FCN minimum, one compiled step per distinct size); else its
    bucket: dataset.eval_pad_size, or for a larger image the next whole multiple
    (with sliding windows, whole window strides).
    """
    if config.dataset.eval_native_size:
        return tuple(jax.core.max_dim(s, models.MIN_INPUT_SIZE) for s in (height, width))
    pad_size, (_, stride) = tuple(config.dataset.eval_pad_size), inference.sliding_windows(config)
    return transforms.eval_bucket(height, width, pad_size, stride)


def _agree_on_buckets(counts: dict) -> list[tuple[tuple[int, int], int]]:
    """[(padded size, most images of that size on any process)], the same on every process."""
    if jax.process_count() == 1:
        return sorted(counts.items())
    from jax.experimental import multihost_utils

    # Gather (h, w, count) rows from every process, as many as the longest list needs.
    longest = int(np.max(multihost_utils.process_allgather(np.int64(len(counts)))))
    rows = np.zeros((longest, 3), np.int64)
    for i, ((h, w), c) in enumerate(sorted(counts.items())):
        rows[i] = (h, w, c)
    gathered = np.asarray(multihost_utils.process_allgather(rows)).reshape(-1, 3)
    most: dict[tuple[int, int], int] = {}
    for h, w, c in gathered:
        if c:
            most[(int(h), int(w))] = max(most.get((int(h), int(w)), 0), int(c))
    return sorted(most.items())


def _synthetic_eval_size(config) -> int:
    total = synthetic.SPLITS.get(config.dataset.eval_split)
    if not total:
        finite = [name for name, size in synthetic.SPLITS.items() if size]
        raise ValueError(
            f"dataset.eval_split={config.dataset.eval_split!r}: synthetic eval splits are {finite}"
        )
    return total


def _synthetic_eval(config, local):
    total = _synthetic_eval_size(config)
    count, index = jax.process_count(), jax.process_index()
    start, stop = total * index // count, total * (index + 1) // count
    largest_share = -(-total // count)
    num_batches = -(-largest_share // local)
    ds = synthetic.as_tf_dataset(  # Seed 0 whatever config.seed: one validation set for all.
        tf.data.Dataset.range(start, stop),
        split=config.dataset.eval_split,
        image_size=tuple(config.dataset.image_size),
    )
    ds = ds.concatenate(_void(*config.dataset.image_size)).take(num_batches * local)
    return _finish(ds, local, config.dataset.prefetch), num_batches


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """Raises on a label other than 0..num_classes-1 and 255 (void)."""
    bad, counts = transforms.invalid_labels(labels, num_classes)
    if bad.size:
        raise ValueError(
            f"label value {int(bad[0])} found ({int(counts[0])} pixels; all bad values: "
            f"{bad.tolist()}), but model.num_classes={num_classes} allows 0..{num_classes - 1} "
            "and 255 (void); fix the labels or set --config.model.num_classes"
        )
