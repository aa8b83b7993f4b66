"""Tests for the synthetic shapes dataset the demo trains on."""

import numpy as np
import pytest

from fcn_jax.datasets import synthetic
from fcn_jax.datasets.synthetic import (
    CLASS_NAMES,
    NUM_CLASSES,
    VALIDATION_SIZE,
    VOID_LABEL,
    as_tf_dataset,
    make_example,
    mark_void_boundaries,
)

SIZE = (64, 64)


@pytest.fixture(scope="module")
def train_batch():
    """64 training examples stacked: images [N, H, W, 3] and labels [N, H, W]."""
    examples = [make_example(i, split="train", image_size=SIZE) for i in range(64)]
    return (
        np.stack([e["image"] for e in examples]),
        np.stack([e["label"] for e in examples]),
    )


def test_constants():
    assert len(CLASS_NAMES) == NUM_CLASSES and CLASS_NAMES[0] == "background"
    assert synthetic.SPLITS == {"train": None, "validation": VALIDATION_SIZE}


def test_deterministic_and_varied():
    def image(index=3, split="train", seed=0):
        return make_example(index, split=split, image_size=SIZE, seed=seed)["image"]

    first = make_example(3, split="train", image_size=SIZE)
    again = make_example(3, split="train", image_size=SIZE)
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["label"], again["label"])
    for other in (image(index=4), image(seed=1), image(split="validation")):
        assert np.mean(first["image"] != other) > 0.5


@pytest.mark.parametrize("image_size", [(64, 64), (48, 80), (96, 96)])
def test_dtype_and_shape(image_size):
    example = make_example(0, split="validation", image_size=image_size)
    assert set(example) == {"image", "label"}
    assert example["image"].dtype == np.uint8 and example["label"].dtype == np.uint8
    assert example["image"].shape == (*image_size, 3)
    assert example["label"].shape == image_size
    assert example["image"].flags.c_contiguous


def test_labels_valid_and_every_class_present(train_batch):
    _, labels = train_batch
    values = set(np.unique(labels).tolist())
    assert values <= set(range(NUM_CLASSES)) | {VOID_LABEL}
    assert values >= set(range(NUM_CLASSES))
    # Shapes are a sizeable part of the image, and no class is starved.
    fractions = [np.mean(labels == c) for c in range(1, NUM_CLASSES)]
    assert min(fractions) > 0.02 and sum(fractions) > 0.1


def test_void_is_a_thin_two_sided_boundary_band(train_batch):
    _, labels = train_batch
    void = labels == VOID_LABEL
    assert 0.01 < void.mean() < 0.15
    # Every boundary is covered: 4-neighbours that are both non-void share a class.
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[:, :, 1:], labels[:, :, :-1])):
        both_valid = (a != VOID_LABEL) & (b != VOID_LABEL)
        assert np.all(a[both_valid] == b[both_valid])
    # Both sides of a boundary are void, so no void pixel stands alone.
    padded = np.pad(void, ((0, 0), (1, 1), (1, 1)))
    void_neighbour = (
        padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
    )
    assert np.all(void_neighbour[void])


def test_mark_void_boundaries_exact():
    label = np.zeros((6, 7), np.uint8)
    label[1:5, 1:4] = 2
    label[5, 6] = 1
    v = VOID_LABEL
    expected = np.array(
        [
            [0, v, v, v, 0, 0, 0],
            [v, v, v, v, v, 0, 0],
            [v, v, 2, v, v, 0, 0],
            [v, v, 2, v, v, 0, 0],
            [v, v, v, v, v, 0, v],
            [0, v, v, v, 0, v, v],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(mark_void_boundaries(label), expected)
    np.testing.assert_array_equal(label[5, 6], 1)  # The input is left alone.


def test_colour_does_not_give_the_class_away(train_batch):
    images, labels = train_batch
    pixels, classes = images.reshape(-1, 3).astype(np.float64), labels.reshape(-1)
    means = np.stack([pixels[classes == c].mean(0) for c in range(NUM_CLASSES)])
    stds = np.stack([pixels[classes == c].std(0) for c in range(NUM_CLASSES)])
    # Class-mean colours differ far less than colours vary within a class (per channel).
    assert np.all(means.std(0) < 0.3 * stds.mean(0))
    assert np.all(stds > 40)


def test_validation_and_train_streams_differ():
    for index in range(8):
        train = make_example(index, split="train", image_size=SIZE)["image"]
        validation = make_example(index, split="validation", image_size=SIZE)["image"]
        assert np.mean(train != validation) > 0.5
    make_example(VALIDATION_SIZE - 1, split="validation", image_size=SIZE)
    make_example(10 * VALIDATION_SIZE, split="train", image_size=SIZE)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(index=0, split="test", image_size=SIZE), ValueError, r"'test'.*train.*validation"),
        (dict(index=VALIDATION_SIZE, split="validation", image_size=SIZE), IndexError, "256"),
        (dict(index=-1, split="train", image_size=SIZE), IndexError, "-1"),
        (dict(index=0, split="train", image_size=(31, 64)), ValueError, r"\(31, 64\)"),
        (dict(index=0, split="train", image_size=(64, 16)), ValueError, r"\(64, 16\)"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    index = kwargs.pop("index")
    with pytest.raises(error, match=message):
        make_example(index, **kwargs)


def test_as_tf_dataset_matches_make_example():
    tf = pytest.importorskip("tensorflow")
    dataset = as_tf_dataset(
        tf.data.Dataset.range(5, 8), split="validation", image_size=(40, 56), seed=2
    )
    assert dataset.element_spec["image"].shape == (40, 56, 3)
    assert dataset.element_spec["label"].shape == (40, 56)
    assert dataset.element_spec["image"].dtype == tf.uint8
    examples = list(dataset.as_numpy_iterator())
    for index, example in zip(range(5, 8), examples, strict=True):
        expected = make_example(index, split="validation", image_size=(40, 56), seed=2)
        np.testing.assert_array_equal(example["image"], expected["image"])
        np.testing.assert_array_equal(example["label"], expected["label"])
    with pytest.raises(ValueError, match="'test'"):
        as_tf_dataset(tf.data.Dataset.range(1), split="test", image_size=(40, 56))
