"""Evaluation reports, test-time inference over a split, converted weights, TensorBoard pictures."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from fcn_jax import (
    evaluation,
    inference,
    input_pipeline,
    metrics,
    normalization,
    sharding,
    steps,
    training,
    visualize,
)
from tests.test_init_from import as_variables, save_tiny_weights, tiny_params


def one_device(config):
    return steps.compile_steps(config, sharding.make_mesh((1, 1), jax.devices()[:1]))


def test_report_recomputes_exactly_from_its_own_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 1000, (4, 4))
    cm[3] = 0  # A class absent from the ground truth: NaN accuracy, null in JSON.
    cm[:, 3] = 0
    result = evaluation.EvalResult(metrics.segmentation_metrics(cm), cm, None)
    names = ("background", "circle", "square", "triangle")
    paths = evaluation.write_report(
        str(tmp_path / "eval" / "val_7.json"), result, names, step=7, split="val", settings={}
    )
    report = json.loads((tmp_path / "eval" / "val_7.json").read_text())
    again = metrics.segmentation_metrics(np.asarray(report["confusion_matrix"]))
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "fw_iou"):
        assert report[key] == again[key]  # Exactly: the same numbers from the same counts.
    for key in ("iou", "accuracy"):
        assert report[key][3] is None
        assert report[key][:3] == again[key][:3].tolist()
    assert report["class_names"] == list(names) and report["step"] == 7
    for kind in ("confusion", "iou"):
        assert os.path.getsize(paths[kind]) > 1000
    assert sorted(os.listdir(tmp_path / "eval")) == [
        "val_7.json",
        "val_7_confusion.png",
        "val_7_iou.png",
    ]


def test_report_table_names_every_class():
    cm = np.array([[5, 1, 0], [0, 3, 0], [0, 0, 0]])
    text = evaluation.format_report(
        metrics.segmentation_metrics(cm), "step 3", "val", ("a", "bb", "c")
    )
    lines = text.splitlines()
    assert lines[0] == "Evaluation of step 3 on val:"
    assert any(line.split() == ["a", "0.8333", "0.8333"] for line in lines)
    assert any(line.split() == ["c", "n/a", "n/a"] for line in lines)


def reference_confusion(config, scores_fn):
    """The confusion matrix of argmax(scores_fn(normalised images)) over the eval split."""
    num_classes = config.model.num_classes
    cm = np.zeros((num_classes, num_classes), np.int64)
    for batch in input_pipeline.eval_iterator(config)[0]:
        images = normalization.normalize(batch["image"], config.dataset.normalization)
        preds = jnp.argmax(scores_fn(images), -1)
        cm += np.asarray(metrics.confusion_matrix(batch["label"], preds, num_classes))
    return cm


def test_flip_and_multi_scale_over_the_split_follow_their_definition(tiny_config):
    """Mean softmax of every (scale, mirror) view, resized back and mirrored back."""
    config = tiny_config(
        dataset__image_size=(64, 64), inference__flip=True, inference__scales=(0.75, 1.0)
    )
    params = tiny_params("fcn8s")  # Random score layers: the prediction varies.
    model = steps.build_model(config)

    def by_definition(images):
        n, h, w, _ = images.shape
        total = 0.0
        for scale in config.inference.scales:
            size = (n, round(h * scale), round(w * scale), 3)
            scaled = jax.image.resize(images, size, "bilinear")
            for mirrored in (False, True):
                view = scaled[:, :, ::-1] if mirrored else scaled
                logits = model.apply({"params": params}, view, train=False)
                logits = logits[:, :, ::-1] if mirrored else logits
                logits = jax.image.resize(logits, (n, h, w, logits.shape[-1]), "bilinear")
                total = total + jax.nn.softmax(logits, -1)
        return total

    variables = as_variables(params)
    augmented = evaluation.evaluate(one_device(config), variables, config).confusion_matrix
    np.testing.assert_array_equal(augmented, reference_confusion(config, by_definition))
    config.inference.flip, config.inference.scales = False, (1.0,)
    plain = evaluation.evaluate(one_device(config), variables, config).confusion_matrix
    assert plain.sum() == augmented.sum() and not np.array_equal(plain, augmented)


def test_sliding_windows_over_the_split_tile_each_canvas(tiny_config):
    """Images larger than eval_pad_size are tiled into overlapping windows of that size."""
    config = tiny_config(
        dataset__image_size=(64, 64),
        dataset__eval_pad_size=(32, 32),
        inference__sliding_window=True,
    )
    params = tiny_params("fcn8s")
    model = steps.build_model(config)
    window, stride = inference.sliding_windows(config)
    assert stride == (21, 21)  # Windows at 0, 21 and 32 along each side of the 64x64 images.

    def tiled(images):
        logits_fn = lambda x: model.apply({"params": params}, x, train=False)  # noqa: E731
        return inference.predict_scores(logits_fn, images, window=window, stride=stride)

    windows = evaluation.evaluate(one_device(config), as_variables(params), config).confusion_matrix
    np.testing.assert_array_equal(windows, reference_confusion(config, tiled))


def test_eval_examples_show_input_truth_and_prediction(tiny_config):
    config = tiny_config()
    programs = one_device(config)
    params = tiny_params("fcn8s")  # Trained-looking: the predictions vary across classes.
    result = evaluation.evaluate(programs, as_variables(params), config, num_examples=2)
    first = next(input_pipeline.eval_iterator(config)[0])
    height, width = config.dataset.image_size
    assert result.examples.shape == (2, height, 3 * width, 3)
    np.testing.assert_array_equal(result.examples[:, :, :width], first["image"][:2])
    np.testing.assert_array_equal(
        result.examples[:, :, width : 2 * width], visualize.colorize(first["label"][:2])
    )
    model = steps.build_model(config)
    logits = model.apply(
        {"params": params},
        normalization.normalize(first["image"][:2], config.dataset.normalization),
        train=False,
    )
    predicted = np.asarray(jnp.argmax(logits, -1))
    assert len(np.unique(predicted)) >= 2
    np.testing.assert_array_equal(result.examples[:, :, 2 * width :], visualize.colorize(predicted))


def test_training_writes_eval_pictures_and_per_class_iou_to_tensorboard(tiny_config, tmp_path):
    training.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path))
    tags = set()
    for name in os.listdir(tmp_path):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(str(tmp_path / name)):
                tags.update(v.tag for v in event.summary.value)
    assert {"eval/mean_iou", "eval/input_truth_prediction", "eval_iou/background"} <= tags


def test_evaluates_converted_weights_of_a_whole_fcn(tiny_config, tmp_path):
    save_tiny_weights(tmp_path / "w", tiny_params("fcn8s"))
    config = tiny_config(init_from=str(tmp_path / "w"), dataset__normalization="")
    result, restored = evaluation.evaluate_checkpoint(config, str(tmp_path / "run"))
    assert restored.step is None and restored.source == f"weights {tmp_path / 'w'}"
    assert config.dataset.normalization == "torch"  # What the weights expect.
    report = json.loads((tmp_path / "run" / "eval" / "validation_w.json").read_text())
    assert report["mean_iou"] == result.metrics["mean_iou"]


def test_a_backbone_is_not_evaluated_as_a_whole_fcn(tiny_config, tmp_path):
    params = tiny_params("fcn8s")
    backbone = {k: v for k, v in params.items() if k not in ("score_fr", "score_pool4")}
    save_tiny_weights(tmp_path / "w", backbone)
    config = tiny_config(init_from=str(tmp_path / "w"))
    with pytest.raises(ValueError, match=r"lacks \['score_fr', 'score_pool4'\].*not a backbone"):
        evaluation.restore(config, str(tmp_path / "run"))
