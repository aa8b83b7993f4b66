"""Input pipeline: resumable training stream, per-process shares, padded evaluation."""

import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import input_pipeline, normalization
from fcn_jax.datasets import synthetic
from tests.conftest import SAMPLES, require_samples


def as_processes(monkeypatch, index, count):
    monkeypatch.setattr(input_pipeline.jax, "process_index", lambda: index)
    monkeypatch.setattr(input_pipeline.jax, "process_count", lambda: count)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_resumed_stream_continues_without_replaying(tiny_config):
    config = tiny_config()
    first = take(input_pipeline.train_iterator(config), 4)
    resumed = take(input_pipeline.train_iterator(config, start_step=2), 2)
    for a, b in zip(first[2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(first[0]["image"], first[1]["image"])
    assert first[0]["image"].dtype == np.uint8 and first[0]["image"].shape == (8, 32, 32, 3)
    assert first[0]["label"].dtype == np.uint8 and first[0]["label"].shape == (8, 32, 32)


def test_two_processes_split_each_global_batch(tiny_config, monkeypatch):
    config = tiny_config()
    whole = take(input_pipeline.train_iterator(config), 2)
    parts = []
    for index in range(2):
        as_processes(monkeypatch, index, 2)
        parts.append(take(input_pipeline.train_iterator(config), 2))
    for step in range(2):
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, whole[step]["image"])


def test_batch_that_does_not_divide_over_processes_is_rejected(tiny_config, monkeypatch):
    as_processes(monkeypatch, 0, 3)
    with pytest.raises(ValueError, match="batch_size=8 does not divide over 3 processes"):
        input_pipeline.train_iterator(tiny_config())


def eval_examples(config):
    batches, num_batches = input_pipeline.eval_iterator(config)
    batches = list(batches)
    assert len(batches) == num_batches
    return np.concatenate([b["image"] for b in batches]), np.concatenate(
        [b["label"] for b in batches]
    )


def test_eval_covers_the_split_once_and_pads_with_void(tiny_config):
    config = tiny_config(dataset__eval_batch_size=48)  # 256 = 5 * 48 + 16.
    images, labels = eval_examples(config)
    assert len(images) == 6 * 48
    for i in (0, 255):
        ex = synthetic.make_example(i, split="validation", image_size=(32, 32))
        np.testing.assert_array_equal(images[i], ex["image"])
        np.testing.assert_array_equal(labels[i], ex["label"])
    assert np.all(labels[256:] == input_pipeline.VOID)  # Padding never reaches the metrics.


def test_eval_shares_are_disjoint_cover_the_split_and_run_equal_steps(tiny_config, monkeypatch):
    config = tiny_config(dataset__eval_batch_size=16)
    _, whole_labels = eval_examples(config)
    real = []
    for index in range(3):
        as_processes(monkeypatch, index, 3)
        config = tiny_config(dataset__eval_batch_size=15)
        batches, num_batches = input_pipeline.eval_iterator(config)
        batches = list(batches)
        assert num_batches == 18 and len(batches) == 18  # ceil(ceil(256 / 3) / 5).
        labels = np.concatenate([b["label"] for b in batches])
        real.append(labels[~np.all(labels == 255, axis=(1, 2))])
    np.testing.assert_array_equal(np.concatenate(real), whole_labels[:256])


def test_normalization_modes():
    pixel = jnp.asarray([[[10, 20, 30]]], jnp.uint8)
    caffe = normalization.normalize(pixel, "caffe")
    np.testing.assert_allclose(
        caffe[0, 0], [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434], rtol=1e-6
    )
    torch = normalization.normalize(pixel, "torch")
    expected = (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(torch[0, 0], expected, rtol=1e-5)
    mindspore = normalization.normalize(pixel, "mindspore")  # BGR, the tutorial's constants.
    expected = (np.array([30, 20, 10]) - [103.53, 116.28, 123.675]) / [57.375, 57.12, 58.395]
    np.testing.assert_allclose(mindspore[0, 0], expected, rtol=1e-5)
    # Padding with the mean colour normalises to 0, up to uint8 rounding (half a level).
    for mode, half_level in (("caffe", 0.5), ("torch", 0.5 / 255 / 0.224), ("mindspore", 0.5 / 57)):
        mean = jnp.asarray([[normalization.mean_rgb_uint8(mode)]], jnp.uint8)
        assert float(jnp.abs(normalization.normalize(mean, mode)).max()) <= half_level + 1e-6
    with pytest.raises(ValueError, match="'bgr'"):
        normalization.normalize(pixel, "bgr")


def identical_pairs(root, count):
    """A VOC-layout folder of ``count`` ids that all hold the same real image and label."""
    require_samples()
    source = sorted((SAMPLES / "voc" / "SegmentationClass").glob("*.png"))[0].stem
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / sub).mkdir(parents=True)
        for i in range(count):
            (root / sub / f"copy{i}{ext}").symlink_to(SAMPLES / "voc" / sub / f"{source}{ext}")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"copy{i}\n" for i in range(count)))
    return root


def test_every_example_of_a_global_batch_has_its_own_augmentation(
    tiny_config, monkeypatch, tmp_path
):
    """Real data on 2 processes: process p's share is the p-th slice of the 1-process batch.

    All examples hold the same image, so the batches differ only by their augmentation
    draws: a process seeding them with its local stream position repeats the others' draws.
    """
    root = identical_pairs(tmp_path, 8)
    config = tiny_config(
        dataset__name="folder",
        dataset__data_dir=str(root),
        dataset__train_split="train",
        dataset__crop_size=(64, 64),
        model__num_classes=21,
        batch_size=4,
    )
    whole = next(input_pipeline.train_iterator(config, start_step=5))
    assert len({im.tobytes() for im in whole["image"]}) == 4  # Four different draws.
    parts = []
    for index in range(2):
        as_processes(monkeypatch, index, 2)
        parts.append(next(input_pipeline.train_iterator(config, start_step=5)))
    for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_the_seed_sets_the_synthetic_training_data_not_the_validation_set(tiny_config):
    a = next(input_pipeline.train_iterator(tiny_config(seed=0)))
    b = next(input_pipeline.train_iterator(tiny_config(seed=1)))
    again = next(input_pipeline.train_iterator(tiny_config(seed=1)))
    assert not np.array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(b["image"], again["image"])
    val_a = next(input_pipeline.eval_iterator(tiny_config(seed=0))[0])
    val_b = next(input_pipeline.eval_iterator(tiny_config(seed=1))[0])
    np.testing.assert_array_equal(val_a["label"], val_b["label"])  # Comparable evaluations.
