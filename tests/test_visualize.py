"""Tests for the palette, class names and pictures in fcn_jax.visualize."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from fcn_jax import visualize
from fcn_jax.visualize import PALETTE
from tests.conftest import REPO, SAMPLES, require_samples

VOC_COLORS = {  # From the VOC devkit's VOCcolormap.
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    15: (192, 128, 128),
    20: (0, 64, 128),
    255: (224, 224, 192),
}


def contains_color(pixels, color):
    return bool((pixels.reshape(-1, 3) == color).all(axis=1).any())


def test_palette_is_the_voc_colormap():
    for index, color in VOC_COLORS.items():
        assert tuple(PALETTE[index]) == color, index
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(row) for row in PALETTE.tolist()}) == 256
    copy = visualize.palette()
    copy[0] = 1
    assert (PALETTE[0] == 0).all()  # palette() hands out a copy.


def test_palette_matches_official_voc_label_pngs():
    require_samples()
    paths = sorted((SAMPLES / "voc" / "SegmentationClass").glob("*.png"))
    assert paths
    for path in paths:
        with Image.open(path) as image:
            embedded = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(embedded[:21], PALETTE[:21], err_msg=path.name)
        np.testing.assert_array_equal(embedded[255], PALETTE[255], err_msg=path.name)


def test_module_stays_light_and_plots_without_pyplot(tmp_path):
    code = (
        "import sys\n"
        "from fcn_jax import visualize\n"
        "heavy = {'matplotlib', 'tensorflow', 'tensorflow_datasets', 'jax'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        f"visualize.plot_iou([0.5, 0.25], ['a', 'b'], {str(tmp_path / 'iou.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    assert (tmp_path / "iou.png").stat().st_size > 0


def test_mask_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 21, (37, 53)).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.1] = 255
    path = tmp_path / "sub" / "m.png"
    visualize.save_image(visualize.mask_image(mask), path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), mask)
        np.testing.assert_array_equal(np.array(image.convert("RGB")), PALETTE[mask])


def test_save_image_format_follows_the_extension(tmp_path):
    photo = Image.new("RGB", (8, 6), (10, 200, 30))
    visualize.save_image(photo, tmp_path / "photo.JPG", quality=90)
    with Image.open(tmp_path / "photo.JPG") as image:
        assert image.format == "JPEG" and image.size == (8, 6)
    with pytest.raises(ValueError, match="extension"):
        visualize.save_image(photo, tmp_path / "photo.unknown")
    assert sorted(os.listdir(tmp_path)) == ["photo.JPG"]


def test_save_image_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    image = visualize.mask_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(OSError, match="disk full"):
        visualize.save_image(image, tmp_path / "new.png")
    assert os.listdir(tmp_path) == []
    (tmp_path / "old.png").write_bytes(b"previous")
    with pytest.raises(OSError, match="disk full"):
        visualize.save_image(image, tmp_path / "old.png")
    assert os.listdir(tmp_path) == ["old.png"]
    assert (tmp_path / "old.png").read_bytes() == b"previous"


def test_colorize_looks_up_the_palette_on_batches():
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 256, (2, 3, 4, 5))
    colors = visualize.colorize(masks)
    assert colors.shape == (2, 3, 4, 5, 3) and colors.dtype == np.uint8
    for index in np.ndindex(masks.shape):
        assert tuple(colors[index]) == tuple(PALETTE[masks[index]])
    np.testing.assert_array_equal(visualize.colorize(masks.astype(np.uint8)), colors)
    with pytest.raises(ValueError, match="0..255"):
        visualize.colorize(np.array([[0, 256]]))


def test_overlay_blends_class_colours_and_lists_present_classes():
    rng = np.random.default_rng(2)
    photo = rng.integers(0, 256, (40, 200, 3), dtype=np.uint8)
    mask = np.zeros((40, 200), np.uint8)
    mask[:, 100:150] = 15
    mask[:, 150:190] = 1
    mask[:, 190:] = 255
    names = [f"name {i}" for i in range(21)]
    out = visualize.overlay(photo, mask, names, alpha=0.25)

    assert out.dtype == np.uint8 and out.shape[1] == 200 and out.shape[0] > 40
    top, band = out[:40], out[40:]
    np.testing.assert_array_equal(top[:, :100], photo[:, :100])  # Background: photo untouched.
    for cols, color in ((slice(100, 150), (192, 128, 128)), (slice(150, 190), (128, 0, 0))):
        expected = np.round(photo[:, cols].astype(float) * 0.75 + np.array(color) * 0.25)
        np.testing.assert_array_equal(top[:, cols], expected.astype(np.uint8))
    assert (top[:, 190:] != photo[:, 190:]).any()  # Void is drawn in its VOC colour too.

    for present in (0, 1, 15):
        assert contains_color(band, PALETTE[present]), present
    for absent in (2, 255):  # Void is never listed.
        assert not contains_color(band, PALETTE[absent]), absent


def test_overlay_legend_wraps_into_rows():
    photo = np.full((30, 120, 3), 90, np.uint8)
    names = [f"a rather long class name {i}" for i in range(21)]
    one = visualize.overlay(photo, np.zeros((30, 120), np.uint8), names)
    many = visualize.overlay(photo, np.arange(30 * 120).reshape(30, 120) % 21, names)
    assert many.shape[1] == one.shape[1] == 120
    assert many.shape[0] - 30 > 5 * (one.shape[0] - 30)
    for index in range(21):
        assert contains_color(many[30:], PALETTE[index]), index


def test_overlay_of_an_all_void_mask_is_the_photo():
    photo = np.full((6, 7, 3), 255, np.uint8)
    out = visualize.overlay(photo, np.full((6, 7), 255), ["x"], alpha=1.0)
    assert out.shape == (6, 7, 3)
    assert contains_color(out, PALETTE[255])


def test_eval_panels_puts_input_truth_and_prediction_side_by_side():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 21, (2, 4, 5)).astype(np.int32)
    labels[0, 0, 0] = 255
    preds = rng.integers(0, 21, (2, 4, 5))
    panels = visualize.eval_panels(images, labels, preds)
    assert panels.shape == (2, 4, 15, 3) and panels.dtype == np.uint8
    np.testing.assert_array_equal(panels[:, :, :5], images)
    np.testing.assert_array_equal(panels[:, :, 5:10], PALETTE[labels])
    np.testing.assert_array_equal(panels[:, :, 10:], PALETTE[preds])


def open_plot(path):
    assert os.listdir(path.parent) == [path.name]  # No temp file left beside it.
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_plot_confusion(tmp_path):
    names = [f"class {i}" for i in range(21)]
    cm = np.random.default_rng(4).integers(0, 1000, (21, 21))
    cm[3] = 0  # A class without ground-truth pixels.
    path = tmp_path / "plots" / "confusion.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        visualize.plot_confusion(cm, names, str(path))
    width, height = open_plot(path)
    assert width >= 800 and height >= 800


def test_plot_iou_with_absent_classes(tmp_path):
    names = [f"class {i}" for i in range(21)]
    iou = np.linspace(0, 1, 21)
    iou[[2, 7]] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        visualize.plot_iou(iou, names, str(tmp_path / "some" / "iou.png"))
        visualize.plot_iou([np.nan, np.nan], ["a", "b"], str(tmp_path / "none" / "iou.png"))
    width, height = open_plot(tmp_path / "some" / "iou.png")
    assert width >= 500 and height >= 500
    width, height = open_plot(tmp_path / "none" / "iou.png")
    assert width >= 500 and height >= 100


@pytest.fixture
def config():
    from configs import demo

    return demo.get_config()


def test_class_names_of_the_datasets(config):
    from fcn_jax.datasets import synthetic, voc_sbd

    assert visualize.class_names(config) == synthetic.CLASS_NAMES
    config.dataset.name = "voc_sbd"
    config.model.num_classes = 21
    names = visualize.class_names(config)
    assert names == voc_sbd.CLASS_NAMES and len(names) == 21
    assert names[0] == "background" and names[15] == "person"
    config.dataset.name = "folder"
    config.model.num_classes = 3
    assert visualize.class_names(config) == ("class 0", "class 1", "class 2")
    config.dataset.class_names = ("sky", "road", "car")
    assert visualize.class_names(config) == ("sky", "road", "car")


def test_class_names_mismatch_says_what_to_do(config):
    config.model.num_classes = 5
    with pytest.raises(ValueError, match=r"model.num_classes=5 .*'synthetic' names 4 .*=4"):
        visualize.class_names(config)
    config.dataset.name = "folder"
    config.dataset.class_names = ("sky", "road")
    with pytest.raises(ValueError, match=r"'folder' names 2 .*dataset.class_names"):
        visualize.class_names(config)
