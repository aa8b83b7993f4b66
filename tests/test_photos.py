"""Reading users' photos: every mode and EXIF orientation, bad files, inputs and resizing."""

import os
import re

import numpy as np
import photo_fixtures
import pytest
from PIL import Image

from fcn_jax import photos
from tests.conftest import SAMPLES, require_samples

VARIANTS = ("rgb", "gray", "rgba", "cmyk", "png16", "palette", "exif_rotated", "exif_mirrored")


def pick_sample(layout):
    """The first real VOC photo wider than tall ("landscape") or taller than wide ("portrait")."""
    require_samples()
    for path in sorted((SAMPLES / "voc" / "JPEGImages").glob("*.jpg")):
        width, height = Image.open(path).size
        if (width > height) == (layout == "landscape") and width != height:
            return path
    pytest.fail(f"no {layout} photo among the samples")


@pytest.fixture(scope="module", params=["landscape", "portrait"])
def variants(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return photo_fixtures.make_variants(pick_sample(request.param), out)


def stored(path, mode="RGB"):
    """The pixels as the file holds them (PIL applies no EXIF orientation on its own)."""
    return np.asarray(Image.open(path).convert(mode))


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_loads_as_uint8_rgb_at_displayed_size(variants, name):
    path, (height, width) = variants[name]
    photo = photos.load_photo(str(path))
    assert photo.dtype == np.uint8
    assert photo.shape == (height, width, 3)


def test_exif_rotation_changes_the_size(variants):
    """Guards the fixture: the rotated variant's displayed size is its stored size transposed."""
    path, displayed = variants["exif_rotated"]
    width, height = Image.open(path).size
    assert displayed == (width, height) != (height, width)


def test_rgb_is_the_pil_decode(variants):
    path, _ = variants["rgb"]
    np.testing.assert_array_equal(photos.load_photo(str(path)), stored(path))


def test_gray_has_equal_channels(variants):
    path, _ = variants["gray"]
    photo = photos.load_photo(str(path))
    for channel in range(3):
        np.testing.assert_array_equal(photo[..., channel], stored(path, "L"))


def test_exif_orientation_6_rotates_clockwise(variants):
    path, _ = variants["exif_rotated"]
    np.testing.assert_array_equal(photos.load_photo(str(path)), np.rot90(stored(path), k=-1))


def test_exif_orientation_2_mirrors(variants):
    path, _ = variants["exif_mirrored"]
    np.testing.assert_array_equal(photos.load_photo(str(path)), stored(path)[:, ::-1])


def test_16_bit_is_scaled_not_clipped(variants):
    path, _ = variants["png16"]
    with Image.open(path) as img:
        assert img.mode == "I;16"
        values = np.asarray(img).astype(np.float64)
    photo = photos.load_photo(str(path))
    expected = np.rint(values * 255 / 65535).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(photo[..., channel], expected)
    np.testing.assert_array_equal(photo[0, :3, 0], [0, 128, 255])


def test_alpha_is_composited_over_white(variants):
    path, _ = variants["rgba"]
    rgba = stored(path, "RGBA").astype(np.float64)
    photo = photos.load_photo(str(path))
    assert (rgba[:, 0, 3] == 0).all() and (rgba[:, -1, 3] == 255).all()
    assert (photo[:, 0] == 255).all()
    np.testing.assert_array_equal(photo[:, -1], rgba[:, -1, :3])
    alpha = rgba[..., 3:] / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(photo - expected).max() <= 0.5


def test_palette_transparency_is_white(variants):
    path, _ = variants["palette"]
    with Image.open(path) as img:
        assert img.mode == "P"
        index = np.asarray(img)
        clear = index == img.info["transparency"]
        colours = np.asarray(img.convert("RGB"))
    photo = photos.load_photo(str(path))
    assert clear.any() and not clear.all()
    assert (photo[clear] == 255).all()
    np.testing.assert_array_equal(photo[~clear], colours[~clear])


def test_cmyk_looks_like_the_original(variants):
    """Catches an inverted or channel-swapped CMYK decode; JPEG loss keeps it from being exact."""
    cmyk = photos.load_photo(str(variants["cmyk"][0])).astype(np.int64)
    rgb = photos.load_photo(str(variants["rgb"][0])).astype(np.int64)
    assert np.abs(cmyk - rgb).mean() < 8


@pytest.mark.parametrize(
    "image, suffix, expected",
    [
        pytest.param(
            Image.fromarray(np.array([[False, True, True]])), ".png", [0, 255, 255], id="1-bit"
        ),
        pytest.param(
            Image.merge(
                "LA", [Image.new("L", (3, 1), 10), Image.fromarray(np.uint8([[0, 255, 51]]))]
            ),
            ".png",
            [255, 10, 206],
            id="gray+alpha",
        ),
        pytest.param(
            Image.fromarray(np.array([[0, 32768, 65535]], dtype=">u2")),
            ".tif",
            [0, 128, 255],
            id="16-bit-big-endian",
        ),
        pytest.param(
            Image.fromarray(np.array([[257, 65535, 70000]], dtype=np.int32)),
            ".tif",
            [1, 255, 255],
            id="32-bit-int",
        ),
        pytest.param(
            Image.fromarray(np.array([[-5.0, 127.6, 300.0]], dtype=np.float32)),
            ".tif",
            [0, 128, 255],
            id="float",
        ),
    ],
)
def test_other_modes(tmp_path, image, suffix, expected):
    path = tmp_path / f"photo{suffix}"
    image.save(path)
    assert Image.open(path).mode == image.mode  # The file really holds that mode.
    photo = photos.load_photo(str(path))
    assert photo.dtype == np.uint8 and photo.shape == (1, 3, 3)
    np.testing.assert_array_equal(photo, np.repeat(np.uint8(expected)[None, :, None], 3, axis=2))


def test_bad_files_raise_photo_error_naming_the_file(tmp_path):
    broken = photo_fixtures.make_corrupt(tmp_path)
    Image.open(broken)  # The header reads: only the full decode can find the truncation.
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    for path in (broken, text, tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(photos.PhotoError, match=re.escape(str(path))):
            photos.load_photo(str(path))


@pytest.fixture
def photo_tree(tmp_path, monkeypatch):
    """cwd = tmp_path, holding photos/{b.jpg, a.JPG, c.png, notes.txt, .d.jpg, sub/e.png} and
    empty/notes.txt."""
    monkeypatch.chdir(tmp_path)
    for name in ("b.jpg", "a.JPG", "c.png", "notes.txt", ".d.jpg", "sub/e.png", "empty/notes.txt"):
        path = tmp_path / ("" if name.startswith("empty") else "photos") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path


def test_expand_folder_takes_its_images_sorted_and_case_insensitive(photo_tree):
    paths, errors = photos.expand_inputs(["photos"])
    assert paths == [os.path.join("photos", n) for n in ("a.JPG", "b.jpg", "c.png")]
    assert errors == []


def test_expand_file_is_taken_whatever_its_extension(photo_tree):
    assert photos.expand_inputs(["photos/notes.txt"]) == (["photos/notes.txt"], [])


def test_expand_glob_is_recursive_sorted_and_skips_folders(photo_tree):
    assert photos.expand_inputs(["photos/**/*.png"]) == (["photos/c.png", "photos/sub/e.png"], [])
    paths, _ = photos.expand_inputs(["photos/*"])
    assert paths == ["photos/a.JPG", "photos/b.jpg", "photos/c.png", "photos/notes.txt"]


def test_expand_keeps_order_and_drops_the_same_file_named_twice(photo_tree):
    absolute = str(photo_tree / "photos" / "c.png")
    paths, errors = photos.expand_inputs(["photos/c.png", "photos", absolute, "photos/./b*"])
    assert paths == ["photos/c.png", "photos/a.JPG", "photos/b.jpg"]
    assert errors == []


def test_expand_reports_each_bad_arg_and_keeps_the_good_ones(photo_tree):
    paths, errors = photos.expand_inputs(
        ["photos/b.jpg", "nope.jpg", "empty", "*.gif", "photos/a.JPG"]
    )
    assert paths == ["photos/b.jpg", "photos/a.JPG"]
    assert errors == [
        "nope.jpg: no such file, folder or glob match",
        f"empty: folder holds no images ({', '.join(photos.IMAGE_EXTENSIONS)})",
        "*.gif: no such file, folder or glob match",
    ]


@pytest.mark.parametrize(
    "size, max_side, fitted",
    [
        ((375, 500), 250, (188, 250)),
        ((500, 334), 100, (100, 67)),
        ((2, 1000), 10, (1, 10)),
        ((375, 500), 500, (375, 500)),
        ((375, 500), 0, (375, 500)),
    ],
)
def test_fit_within(size, max_side, fitted):
    assert photos.fit_within(*size, max_side) == fitted


def test_fit_within_keeps_the_aspect_ratio():
    for height, width in ((281, 500), (500, 334), (999, 1001)):
        h, w = photos.fit_within(height, width, 321)
        assert max(h, w) == 321
        assert abs(h / w - height / width) < 1 / min(h, w)


def test_resize_is_bilinear_and_antialiased():
    flat = np.full((30, 40, 3), (12, 200, 99), np.uint8)
    np.testing.assert_array_equal(photos.resize(flat, 7, 11), np.full((7, 11, 3), (12, 200, 99)))
    stripes = np.zeros((8, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # Sampling without antialiasing would give pure black or white.
    small = photos.resize(stripes, 8, 8)
    assert small.dtype == np.uint8 and small.shape == (8, 8, 3)
    assert (np.abs(small.astype(int) - 128) <= 8).all()  # Edge columns see the clamped border.


def test_resize_mask_never_invents_classes():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.uint8([0, 3, 15, 255]), size=(13, 17)).repeat(3, 0).repeat(3, 1)
    for height, width in ((7, 9), (40, 50), (101, 23)):
        out = photos.resize_mask(mask, height, width)
        assert out.dtype == np.uint8 and out.shape == (height, width)
        assert set(np.unique(out)) <= {0, 3, 15, 255}
    np.testing.assert_array_equal(photos.resize_mask(mask, 78, 102), mask.repeat(2, 0).repeat(2, 1))
