"""Segmentation metrics from a confusion matrix accumulated over the whole split.

The device side only counts (label, prediction) pairs per batch; the host sums those counts in
int64 over the whole evaluation split and computes the scores once at the end. Averaging per-batch
mIoU instead would be wrong: a batch without some class scores only the classes it contains, so
small or easy batches weigh as much as large ones and the average overstates the true mIoU.
Scores follow the reference FCN scoring code (shelhamer/fcn.berkeleyvision.org, score.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index"))
def confusion_matrix(labels, preds, num_classes, ignore_index=255):
    """Counts (ground truth, prediction) pairs, skipping pixels labelled `ignore_index`.

    One bincount of fixed length `num_classes**2` keeps the shape static under jit and lets XLA
    reduce across devices when the inputs are sharded. Ignored pixels are sent to cell 0 with
    weight 0: `jnp.bincount` clips out-of-range indices instead of dropping them.

    Args:
        labels: Integer ground truth of any shape, e.g. [N, H, W]. Every label other than
            `ignore_index` must lie in [0, num_classes).
        preds: Integer predictions in [0, num_classes), same shape as `labels`.
        num_classes: Number of classes (static).
        ignore_index: Label of void pixels, which are not counted (static).

    Returns:
        int32[num_classes, num_classes], rows = ground truth, columns = prediction.
    """
    if labels.shape != preds.shape:
        raise ValueError(f"labels shape {labels.shape} != preds shape {preds.shape}")
    valid = labels != ignore_index
    # Cast before multiplying: uint8 labels would overflow in labels * num_classes.
    index = labels.astype(jnp.int32) * num_classes + preds.astype(jnp.int32)
    index = jnp.where(valid, index, 0)
    counts = jnp.bincount(
        index.ravel(), weights=valid.ravel().astype(jnp.int32), length=num_classes**2
    )
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(cm):
    """Scores a confusion matrix accumulated over a whole split, as FCN's score.py does.

    A class absent from both ground truth and predictions has NaN IoU and is left out of
    `mean_iou`; a class only predicted has IoU 0 and counts. A class without ground-truth pixels
    has NaN accuracy and is left out of `mean_pixel_accuracy`.

    Args:
        cm: [C, C] counts (rows = ground truth, columns = prediction), summed in int64 on the host.

    Returns:
        Dict with python floats `pixel_accuracy`, `mean_pixel_accuracy`, `mean_iou`, `fw_iou`
        and float64 arrays `iou` and `accuracy` of length C.

    Raises:
        ValueError: If `cm` is not square 2-D or holds no pixels: an empty split is an
            evaluation bug, and every score would be undefined.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square 2-D, got shape {cm.shape}")
    total = cm.sum()
    if total == 0:
        raise ValueError("confusion matrix is all zeros: no valid pixels were counted")
    cm = cm.astype(np.float64)
    diag = np.diag(cm)
    gt_sum = cm.sum(axis=1)
    pred_sum = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = diag / gt_sum
        iou = diag / (gt_sum + pred_sum - diag)
    freq = gt_sum / total
    present = freq > 0
    return {
        "pixel_accuracy": float(diag.sum() / total),
        "mean_pixel_accuracy": float(np.nanmean(accuracy)),
        "mean_iou": float(np.nanmean(iou)),
        "fw_iou": float((freq[present] * iou[present]).sum()),
        "iou": iou,
        "accuracy": accuracy,
    }
