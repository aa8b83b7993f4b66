"""Tests for fcn_jax.metrics: confusion matrix counting and FCN score.py semantics."""

import math

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from fcn_jax.metrics import confusion_matrix, segmentation_metrics

VOID = 255


def _random_batch(rng, shape, num_classes, void_frac=0.2, dtype=np.uint8):
    labels = rng.integers(0, num_classes, size=shape).astype(dtype)
    labels[rng.random(shape) < void_frac] = VOID
    preds = rng.integers(0, num_classes, size=shape).astype(np.int32)
    return labels, preds


def _loop_confusion_matrix(labels, preds, num_classes):
    cm = np.zeros((num_classes, num_classes), np.int64)
    for t, p in zip(labels.ravel().tolist(), preds.ravel().tolist()):
        if t != VOID:
            cm[t, p] += 1
    return cm


def _reference_metrics(cm):
    """Per-class python loops, written independently of the module's vectorised numpy."""
    n = len(cm)
    total = sum(cm[i][j] for i in range(n) for j in range(n))
    gt = [sum(cm[i][j] for j in range(n)) for i in range(n)]
    pred = [sum(cm[j][i] for j in range(n)) for i in range(n)]
    iou, acc = [], []
    for c in range(n):
        union = gt[c] + pred[c] - cm[c][c]
        iou.append(cm[c][c] / union if union else math.nan)
        acc.append(cm[c][c] / gt[c] if gt[c] else math.nan)
    valid_iou = [x for x in iou if not math.isnan(x)]
    valid_acc = [x for x in acc if not math.isnan(x)]
    return {
        "pixel_accuracy": sum(cm[c][c] for c in range(n)) / total,
        "mean_pixel_accuracy": sum(valid_acc) / len(valid_acc),
        "mean_iou": sum(valid_iou) / len(valid_iou),
        "fw_iou": sum(gt[c] / total * iou[c] for c in range(n) if gt[c]),
        "iou": iou,
        "accuracy": acc,
    }


def _assert_metrics_close(got, want):
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "fw_iou"):
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    for key in ("iou", "accuracy"):
        np.testing.assert_allclose(got[key], np.array(want[key]), rtol=1e-12, err_msg=key)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_confusion_matrix_matches_loop(dtype):
    rng = np.random.default_rng(0)
    labels, preds = _random_batch(rng, (3, 7, 5), num_classes=21, dtype=dtype)
    cm = confusion_matrix(labels, preds, num_classes=21)
    assert cm.dtype == np.int32
    assert cm.shape == (21, 21)
    expected = _loop_confusion_matrix(labels, preds, 21)
    np.testing.assert_array_equal(np.asarray(cm), expected)
    assert int(cm.sum()) == int((labels != VOID).sum())


def test_confusion_matrix_void_pixels_not_in_cell_zero():
    # Void pixels predicted as class 0 would inflate cm[0, 0] if they were counted there.
    labels = np.array([[0, VOID, VOID], [1, 1, VOID]], np.uint8)
    preds = np.zeros_like(labels, np.int32)
    cm = np.asarray(confusion_matrix(labels, preds, num_classes=2))
    np.testing.assert_array_equal(cm, [[1, 0], [2, 0]])


def test_confusion_matrix_custom_ignore_index():
    labels = np.array([0, 1, 2, 2], np.int32)
    preds = np.array([0, 1, 1, 0], np.int32)
    cm = np.asarray(confusion_matrix(labels, preds, num_classes=3, ignore_index=2))
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_confusion_matrix_sharded_equals_unsharded():
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    rng = np.random.default_rng(1)
    labels, preds = _random_batch(rng, (8, 6, 4), num_classes=5)
    sharded = confusion_matrix(
        jax.device_put(labels, sharding), jax.device_put(preds, sharding), num_classes=5
    )
    assert len(jax.device_put(labels, sharding).sharding.device_set) == 8
    single = jax.devices()[0]
    unsharded = confusion_matrix(
        jax.device_put(labels, single), jax.device_put(preds, single), num_classes=5
    )
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(unsharded))
    np.testing.assert_array_equal(np.asarray(sharded), _loop_confusion_matrix(labels, preds, 5))


def test_metrics_hand_checked_2x2():
    # gt sums (4, 6), pred sums (5, 5), diag (3, 4), total 10.
    m = segmentation_metrics(np.array([[3, 1], [2, 4]]))
    assert m["pixel_accuracy"] == pytest.approx(0.7)
    np.testing.assert_allclose(m["accuracy"], [3 / 4, 4 / 6])
    assert m["mean_pixel_accuracy"] == pytest.approx(17 / 24)
    np.testing.assert_allclose(m["iou"], [3 / 6, 4 / 7])
    assert m["mean_iou"] == pytest.approx(15 / 28)
    assert m["fw_iou"] == pytest.approx(19 / 35)


def test_metrics_absent_and_predicted_only_classes_by_hand():
    # Class 1 never appears (NaN, excluded); class 2 is only predicted (IoU 0, included).
    m = segmentation_metrics(np.array([[2, 0, 1], [0, 0, 0], [0, 0, 0]]))
    assert m["iou"][0] == pytest.approx(2 / 3)
    assert np.isnan(m["iou"][1])
    assert m["iou"][2] == 0.0
    assert m["mean_iou"] == pytest.approx(1 / 3)
    assert m["accuracy"][0] == pytest.approx(2 / 3)
    assert np.isnan(m["accuracy"][1]) and np.isnan(m["accuracy"][2])
    assert m["mean_pixel_accuracy"] == pytest.approx(2 / 3)
    assert m["pixel_accuracy"] == pytest.approx(2 / 3)
    assert m["fw_iou"] == pytest.approx(2 / 3)


def test_metrics_match_reference_with_absent_and_predicted_only_classes():
    rng = np.random.default_rng(2)
    cm = rng.integers(0, 50, size=(6, 6))
    cm[1, :] = 0
    cm[:, 1] = 0  # class 1 absent from ground truth and predictions
    cm[4, :] = 0  # class 4 only predicted
    assert cm[:, 4].sum() > 0
    m = segmentation_metrics(cm)
    want = _reference_metrics(cm.tolist())
    _assert_metrics_close(m, want)
    assert np.isnan(m["iou"][1]) and m["iou"][4] == 0.0
    assert m["mean_iou"] == pytest.approx(np.nanmean(m["iou"]))


def test_metrics_match_reference_on_random_matrix():
    cm = np.random.default_rng(3).integers(0, 1000, size=(21, 21))
    _assert_metrics_close(segmentation_metrics(cm), _reference_metrics(cm.tolist()))


def test_metrics_accept_jax_int32_matrix():
    labels = np.array([0, 1, 1, 2], np.int32)
    cm = confusion_matrix(labels, labels, num_classes=3)
    m = segmentation_metrics(cm)
    assert m["mean_iou"] == 1.0 and m["pixel_accuracy"] == 1.0


def test_metrics_all_zero_matrix_raises():
    with pytest.raises(ValueError, match="no valid pixels"):
        segmentation_metrics(np.zeros((3, 3), np.int64))


def test_metrics_non_square_raises():
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(np.zeros((2, 3), np.int64))


def test_accumulated_batches_equal_concatenation():
    rng = np.random.default_rng(4)
    batches = [_random_batch(rng, (2, 5, 4), num_classes=7) for _ in range(4)]
    total = np.zeros((7, 7), np.int64)
    for labels, preds in batches:
        total += np.asarray(confusion_matrix(labels, preds, num_classes=7), np.int64)
    all_labels = np.concatenate([b[0] for b in batches])
    all_preds = np.concatenate([b[1] for b in batches])
    whole = np.asarray(confusion_matrix(all_labels, all_preds, num_classes=7))
    np.testing.assert_array_equal(total, whole)


def test_accumulated_miou_differs_from_mean_of_batch_mious():
    # Batch A: 4 pixels of class 0, all right (mIoU 1). Batch B: 1 pixel of class 1 called 0
    # (mIoU 0). Averaging per batch gives 0.5; the split's true mIoU is (4/5 + 0) / 2 = 0.4.
    batches = [
        (np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.int32)),
        (np.ones((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.int32)),
    ]
    cms = [np.asarray(confusion_matrix(t, p, num_classes=2), np.int64) for t, p in batches]
    per_batch = [segmentation_metrics(cm)["mean_iou"] for cm in cms]
    assert per_batch == [1.0, 0.0]
    accumulated = segmentation_metrics(sum(cms))["mean_iou"]
    assert accumulated == pytest.approx(0.4)
    assert np.mean(per_batch) == pytest.approx(0.5)
