"""The tf.data pipeline on real VOC files through the `folder` source."""

import os

import jax
import numpy as np
import pytest
from PIL import Image, ImageOps

from fcn_jax import evaluation, input_pipeline, metrics, sharding, steps
from fcn_jax.datasets import folder
from fcn_jax.normalization import normalize
from tests.conftest import SAMPLES, require_samples
from tests.test_init_from import as_variables, tiny_params


def folder_config(tiny_config, root, **overrides):
    fields = {
        "dataset__name": "folder",
        "dataset__data_dir": str(root),
        "dataset__train_split": "train",
        "dataset__eval_split": "val",
        "dataset__crop_size": (96, 96),
        "dataset__eval_batch_size": 8,
        "model__num_classes": 21,
    }
    return tiny_config(**{**fields, **overrides})


def pil_label(root, i):
    return np.asarray(Image.open(root / "SegmentationClass" / f"{i}.png"))


def val_ids(root):
    return (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()


def test_training_batches_are_deterministic_and_resume(tiny_config, voc_folder):
    config = folder_config(tiny_config, voc_folder)
    first = [next(it) for it in [input_pipeline.train_iterator(config)] for _ in range(4)]
    again = input_pipeline.train_iterator(config)
    np.testing.assert_array_equal(next(again)["image"], first[0]["image"])
    resumed = input_pipeline.train_iterator(config, start_step=3)
    batch = next(resumed)
    np.testing.assert_array_equal(batch["image"], first[3]["image"])
    np.testing.assert_array_equal(batch["label"], first[3]["label"])
    assert batch["image"].shape == (8, 96, 96, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (8, 96, 96) and batch["label"].dtype == np.uint8
    values = np.unique(np.concatenate([b["label"] for b in first]))
    assert set(values) <= set(range(21)) | {255} and 255 in values and len(values) > 3


def test_eval_gives_every_label_exactly_as_pil_reads_it(tiny_config, voc_folder):
    config = folder_config(tiny_config, voc_folder)
    batches, num_batches = input_pipeline.eval_iterator(config)
    labels = np.concatenate([b["label"] for b in batches])
    ids = val_ids(voc_folder)
    assert num_batches == -(-len(ids) // 8)
    assert labels.shape[1:] == (512, 512)
    for k, i in enumerate(ids):
        expected = pil_label(voc_folder, i)
        h, w = expected.shape
        np.testing.assert_array_equal(labels[k, :h, :w], expected)
        assert (labels[k, h:] == 255).all() and (labels[k, :, w:] == 255).all()
    assert (labels[len(ids) :] == 255).all()
    # Padding never reaches the metrics: the matrix counts exactly the real non-void pixels.
    cm = np.asarray(metrics.confusion_matrix(labels, np.zeros_like(labels), 21))
    expected_pixels = sum(int((pil_label(voc_folder, i) != 255).sum()) for i in ids)
    assert cm.sum() == expected_pixels


def test_larger_images_go_to_larger_buckets_never_cropped(tiny_config, voc_folder):
    config = folder_config(tiny_config, voc_folder, dataset__eval_pad_size=(384, 384))
    batches, num_batches = input_pipeline.eval_iterator(config)
    batches = list(batches)
    assert len(batches) == num_batches
    shapes = {b["label"].shape[1:] for b in batches}
    assert len(shapes) > 1 and all(h % 384 == 0 and w % 384 == 0 for h, w in shapes)
    real = sum(int((~np.all(b["label"] == 255, axis=(1, 2))).sum()) for b in batches)
    assert real == len(val_ids(voc_folder))
    total = sum(int((b["label"] != 255).sum()) for b in batches)
    assert total == sum(int((pil_label(voc_folder, i) != 255).sum()) for i in val_ids(voc_folder))


def test_process_shares_are_disjoint_and_cover_the_split(tiny_config, voc_folder, monkeypatch):
    config = folder_config(tiny_config, voc_folder, dataset__eval_batch_size=4)
    seen, steps = [], set()
    for index in range(2):
        monkeypatch.setattr(input_pipeline.jax, "process_index", lambda index=index: index)
        monkeypatch.setattr(input_pipeline.jax, "process_count", lambda: 2)
        # One real process: no peer to gather bucket counts from (equal shares here).
        monkeypatch.setattr(input_pipeline, "_agree_on_buckets", lambda c: sorted(c.items()))
        batches, num_batches = input_pipeline.eval_iterator(config)
        batches = list(batches)
        steps.add((num_batches, len(batches)))
        labels = np.concatenate([b["label"] for b in batches])
        seen.extend(labels[~np.all(labels == 255, axis=(1, 2))])
    assert len(steps) == 1  # Both processes run the same number of steps.
    ids = val_ids(voc_folder)
    assert len(seen) == len(ids)
    for k, i in enumerate(ids):
        expected = pil_label(voc_folder, i)
        np.testing.assert_array_equal(seen[k][: expected.shape[0], : expected.shape[1]], expected)


def test_folder_errors_name_the_file(voc_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        folder.list_split(str(tmp_path / "nowhere"), "train")
    with pytest.raises(
        FileNotFoundError, match=r"no split list .*test.txt; splits there: \['train', 'val'\]"
    ):
        folder.list_split(str(voc_folder), "test")
    broken = tmp_path / "broken"
    os.system(f"cp -rL {voc_folder} {broken}")
    first = val_ids(broken)[0]
    os.remove(broken / "SegmentationClass" / f"{first}.png")
    with pytest.raises(FileNotFoundError, match=f"{first}.png"):
        folder.list_split(str(broken), "val")
    Image.new("RGB", (10, 10)).save(broken / "SegmentationClass" / f"{first}.png")
    with pytest.raises(ValueError, match=f"{first}.jpg is .* but its label .*{first}.png is 10x10"):
        folder.list_split(str(broken), "val")
    image = Image.open(broken / "JPEGImages" / f"{first}.jpg")
    Image.new("RGB", image.size).save(broken / "SegmentationClass" / f"{first}.png")
    with pytest.raises(ValueError, match=f"{first}.png is a mode RGB PNG"):
        folder.list_split(str(broken), "val")


def test_voc_sbd_is_prepared_on_first_use_and_feeds_the_pipeline(tiny_config, tmp_path):
    import tensorflow_datasets as tfds
    import voc_fixtures

    tree = voc_fixtures.write_tree(tmp_path / "manual")
    fields = {
        "dataset__name": "voc_sbd",
        "dataset__data_dir": str(tmp_path / "tfds"),
        "dataset__train_split": "train_aug",
        "dataset__eval_split": "voc_val",
        "dataset__crop_size": (96, 96),
        "dataset__eval_batch_size": 4,
        "model__num_classes": 21,
    }
    with pytest.raises(
        FileNotFoundError, match="voc_sbd is not prepared .* set dataset.manual_dir"
    ):
        input_pipeline.train_iterator(tiny_config(**fields))
    typo = tmp_path / "manaul"
    with pytest.raises(FileNotFoundError, match=f"dataset.manual_dir={typo} does not exist"):
        input_pipeline.train_iterator(tiny_config(dataset__manual_dir=str(typo), **fields))
    config = tiny_config(dataset__manual_dir=str(tree), **fields)
    with pytest.MonkeyPatch.context() as mp:  # Everything comes from manual_dir.
        mp.setattr(tfds.download.DownloadManager, "download", None)
        batch = next(input_pipeline.train_iterator(config))
    assert batch["image"].shape == (8, 96, 96, 3) and batch["label"].shape == (8, 96, 96)
    batches, num_batches = input_pipeline.eval_iterator(config)
    labels = np.concatenate([b["label"] for b in batches])
    expected = {i: pil_label(tree / voc_fixtures.VOC_ROOT, i) for i in voc_fixtures.IDS.voc_val}
    assert num_batches == -(-len(expected) // 4)
    matched = set()
    for label in labels[: len(expected)]:
        hits = [
            i
            for i, e in expected.items()
            if np.array_equal(label[: e.shape[0], : e.shape[1]], e)
            and (label[e.shape[0] :] == 255).all()
            and (label[:, e.shape[1] :] == 255).all()
        ]
        assert hits, "an eval label differs from PIL's indices"
        matched.update(hits)
    assert matched == set(expected)
    assert (labels[len(expected) :] == 255).all()


def test_folder_label_out_of_range_names_the_file(tiny_config, voc_folder, tmp_path):
    root = tmp_path / "bad"
    os.system(f"cp -rL {voc_folder} {root}")
    first = val_ids(root)[0]
    label = pil_label(root, first).copy()
    label[0, 0] = 21
    Image.fromarray(label, mode="L").save(root / "SegmentationClass" / f"{first}.png")
    config = folder_config(tiny_config, root)
    batches, _ = input_pipeline.eval_iterator(config)
    with pytest.raises(Exception, match=rf"label .*{first}.png holds values \[21\]"):
        list(batches)


def val_subset(root, per_size=2, sizes=3):
    """A VOC-layout folder of real val pairs: ``per_size`` images of each of ``sizes`` sizes."""
    rows = [line.split("\t") for line in (SAMPLES / "voc" / "pairs.tsv").read_text().splitlines()]
    chosen = {}
    for id_, split, size, *_ in rows[1:]:
        if split == "val" and len(chosen.setdefault(size, [])) < per_size:
            chosen[size].append(id_)
    ids = [i for group in list(chosen.values())[:sizes] for i in group]
    for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / sub).mkdir(parents=True)
        for i in ids:
            (root / sub / f"{i}{ext}").symlink_to(SAMPLES / "voc" / sub / f"{i}{ext}")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return ids


def test_native_size_evaluation_runs_every_image_unpadded_at_its_own_size(tiny_config, tmp_path):
    """The reference protocol: the confusion matrix of each image run alone, at its size."""
    require_samples()
    ids = val_subset(tmp_path)
    native = folder_config(
        tiny_config,
        tmp_path,
        model__geometry="caffe",
        dataset__normalization="caffe",
        dataset__eval_native_size=True,
        dataset__eval_batch_size=2,
    )
    params = tiny_params("fcn8s", 21)
    model = steps.build_model(native)
    expected = np.zeros((21, 21), np.int64)
    for i in ids:
        image = np.asarray(Image.open(tmp_path / "JPEGImages" / f"{i}.jpg"))[None]
        logits = model.apply({"params": params}, normalize(image, "caffe"), train=False)
        preds = np.asarray(logits).argmax(-1)
        expected += np.asarray(metrics.confusion_matrix(pil_label(tmp_path, i)[None], preds, 21))

    def evaluate(config):
        programs = steps.compile_steps(config, sharding.make_mesh((1, 1), jax.devices()[:1]))
        return evaluation.evaluate(programs, as_variables(params), config).confusion_matrix

    batches, num_batches = input_pipeline.eval_iterator(native)
    shapes = [b["image"].shape for b in batches]
    assert num_batches == 3 and sorted(shapes) == sorted({s for s in shapes})  # A size each.
    np.testing.assert_array_equal(evaluate(native), expected)
    native.dataset.eval_native_size = False  # Padded to 512x512 with the mean colour:
    padded = evaluate(native)
    assert padded.sum() == expected.sum() and not np.array_equal(padded, expected)


@pytest.mark.parametrize("orientation", [3, 6])
def test_folder_images_shown_rotated_are_refused_naming_them(tmp_path, orientation):
    """Annotation tools draw on the displayed image, training would read the stored pixels."""
    require_samples()
    ids = val_subset(tmp_path, per_size=1, sizes=3)
    rotated = tmp_path / "JPEGImages" / f"{ids[1]}.jpg"
    # Stored as a camera would, so that it is displayed as the label was drawn: 3 stores it
    # upside down (same size), 6 a quarter turn anticlockwise (size transposed).
    turn = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90}[orientation]
    stored = Image.open(rotated).transpose(turn)
    rotated.unlink()
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(rotated, exif=exif, quality=95)
    assert (
        ImageOps.exif_transpose(Image.open(rotated)).size
        == Image.open(tmp_path / "SegmentationClass" / f"{ids[1]}.png").size
    )
    with pytest.raises(ValueError, match=rf"{rotated} has EXIF orientation {orientation}"):
        folder.list_split(str(tmp_path), "val")
