"""predict: real photos in every mode come out as masks of their displayed size, equal to the
argmax of the model's logits, with overlays; bad files are reported while the rest are written."""

import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import photo_fixtures
import pytest
from PIL import Image

from fcn_jax import inference, normalization, photos, prediction, steps
from tests.conftest import REPO, SAMPLES, require_samples
from tests.test_init_from import save_tiny_weights, tiny_params
from tests.test_photos import pick_sample


def tiny_weights(config, path):
    """Random weights of the config's model, saved as converted weights for init_from."""
    params = tiny_params(config.model.variant, config.model.num_classes, seed=3)
    save_tiny_weights(
        path,
        params,
        config.model.variant,
        config.model.num_classes,
        geometry=config.model.geometry,
        at_once=config.model.at_once,
    )
    return steps.build_model(config), params


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Every variant of a real landscape and a real portrait photo, in one folder."""
    require_samples()
    root = tmp_path_factory.mktemp("photos")
    made = {}
    for layout in ("landscape", "portrait"):
        for name, (path, size) in photo_fixtures.make_variants(
            pick_sample(layout), root / layout
        ).items():
            target = root / "all" / f"{layout}_{name}{path.suffix}"
            target.parent.mkdir(exist_ok=True)
            shutil.copy(path, target)
            made[target.stem] = (target, size)
    return root / "all", made


def padded(photo, canvas):
    """The photo padded with the mean colour to the canvas, normalised, as a batch of one."""
    image = np.empty((1, *canvas, 3), np.uint8)
    image[:] = normalization.mean_rgb_uint8("torch")
    image[0, : photo.shape[0], : photo.shape[1]] = photo
    return normalization.normalize(image, "torch")


def argmax_in(scores, photo):
    """The class indices of the photo's own pixels."""
    return np.asarray(jnp.argmax(scores[0, : photo.shape[0], : photo.shape[1]], -1), np.uint8)


def expected_mask(model, params, photo, canvas):
    """The argmax of the model's logits over the photo padded (mean colour) to the canvas."""
    return argmax_in(model.apply({"params": params}, padded(photo, canvas), train=False), photo)


def test_masks_have_the_displayed_size_and_are_the_logits_argmax(tiny_config, tmp_path, photo_dir):
    folder, made = photo_dir
    config = tiny_config(init_from=str(tmp_path / "weights"), dataset__normalization="")
    model, params = tiny_weights(config, tmp_path / "weights")
    out = tmp_path / "out"
    summary = prediction.predict(config, None, "best", [str(folder)], str(out), batch_size=3)
    assert summary.failed == [] and len(summary.written) == len(made) == 16
    for stem, (path, (height, width)) in made.items():
        mask_file = Image.open(out / f"{stem}.png")
        assert mask_file.mode == "P"
        mask = np.asarray(mask_file)
        assert mask.shape == (height, width), stem
        want = expected_mask(model, params, photos.load_photo(str(path)), (512, 512))
        np.testing.assert_array_equal(mask, want, err_msg=stem)
        overlay = Image.open(out / f"{stem}_overlay.jpg")
        assert overlay.width == width and overlay.height > height  # The legend band below.
    # The classes differ across the image: the test would notice a constant mask.
    assert len(np.unique(mask)) > 1


def test_large_photos_are_segmented_smaller_and_scaled_back(tiny_config, tmp_path):
    """The mask is that of the photo resized to max_size, scaled back by nearest neighbour."""
    require_samples()
    config = tiny_config(init_from=str(tmp_path / "weights"), dataset__normalization="")
    model, params = tiny_weights(config, tmp_path / "weights")
    src = pick_sample("landscape")
    photo = photos.load_photo(str(src))
    height, width = photo.shape[:2]
    summary = prediction.predict(config, None, "best", [str(src)], str(tmp_path), max_size=200)
    assert summary.failed == []
    mask = np.asarray(Image.open(tmp_path / f"{src.stem}.png"))
    small = photos.resize(photo, *photos.fit_within(height, width, 200))
    assert max(small.shape[:2]) == 200
    want = photos.resize_mask(expected_mask(model, params, small, (512, 512)), height, width)
    np.testing.assert_array_equal(mask, want)
    full = expected_mask(model, params, photo, (512, 512))  # What ignoring max_size gives.
    assert np.mean(full != want) > 0.01


def test_cli_reports_bad_files_and_writes_the_others(tiny_config, tmp_path):
    require_samples()
    config = tiny_config()
    tiny_weights(config, tmp_path / "weights")
    good = [pick_sample("landscape"), pick_sample("portrait")]
    broken = photo_fixtures.make_corrupt(tmp_path)
    missing = tmp_path / "nowhere.jpg"
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "predict.py",
            "--config=configs/demo.py",
            "--config.model.base_width=4",
            "--config.model.fc_width=16",
            "--config.mesh.shape=1,1",
            f"--config.init_from={tmp_path / 'weights'}",
            *map(str, [good[0], broken, missing, good[1]]),
            f"--output={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"{broken}:" in result.stderr and f"{missing}:" in result.stderr
    assert f"Segmenting with weights {tmp_path / 'weights'}" in result.stdout
    assert "Segmented 2 of 4 photos" in result.stdout
    for path in good:
        assert (out / f"{path.stem}.png").is_file()
        assert (out / f"{path.stem}_overlay.jpg").is_file()
    assert not (out / "broken.png").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{p.stem}{s}" for p in good for s in (".png", "_overlay.jpg")
    )  # No half-written files either.


def test_photos_with_the_same_name_do_not_overwrite_each_other(tiny_config, tmp_path):
    require_samples()
    config = tiny_config(init_from=str(tmp_path / "weights"), dataset__normalization="")
    tiny_weights(config, tmp_path / "weights")
    src = pick_sample("landscape")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(src, tmp_path / sub / "photo.jpg")
    summary = prediction.predict(
        config, None, "best", [str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out")
    )
    assert len(summary.written) == 1 and summary.exit_code == 1
    assert "would overwrite those of" in summary.failed[0]
    assert str(tmp_path / "b" / "photo.jpg") in summary.failed[0]


def test_predict_needs_a_workdir_or_weights(tiny_config, tmp_path):
    require_samples()
    with pytest.raises(ValueError, match="--workdir.*--config.init_from"):
        prediction.predict(
            tiny_config(), None, "best", [str(SAMPLES / "voc" / "JPEGImages")], str(tmp_path)
        )


def test_sliding_windows_segment_full_resolution_photos(tiny_config, tmp_path):
    """max_size=0 keeps the photo's size; windows of eval_pad_size tile its canvas."""
    config = tiny_config(
        init_from=str(tmp_path / "weights"),
        dataset__eval_pad_size=(64, 64),
        inference__sliding_window=True,
    )
    model, params = tiny_weights(config, tmp_path / "weights")
    photo = np.random.default_rng(0).integers(0, 256, (150, 100, 3), np.uint8)
    Image.fromarray(photo).save(tmp_path / "big.png")
    summary = prediction.predict(
        config, None, "best", [str(tmp_path / "big.png")], str(tmp_path / "out"), max_size=0
    )
    assert summary.failed == []
    canvas = (64 + 2 * 43, 64 + 1 * 43)  # Whole strides of 43 (a third of overlap) past 64.
    scores = inference.predict_scores(
        lambda x: model.apply({"params": params}, x, train=False),
        padded(photo, canvas),
        window=(64, 64),
        stride=(43, 43),
    )
    want = argmax_in(scores, photo)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "big.png")), want)


def test_predict_never_writes_over_its_inputs_and_skips_its_own_outputs(tiny_config, tmp_path):
    """Output folder = input folder: photos stay intact, a second run ignores the first's files."""
    require_samples()
    config = tiny_config(init_from=str(tmp_path / "weights"), dataset__normalization="")
    tiny_weights(config, tmp_path / "weights")
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = Image.open(pick_sample("landscape"))
    pixels.save(folder / "street.jpg")
    pixels.save(folder / "holiday.jpg")  # Its mask would be holiday.png, a photo of the user's.
    pixels.save(folder / "holiday.png")
    pixels.save(folder / "cat.jpg")  # Its mask would be cat.png: Cat.png on macOS and Windows.
    pixels.save(folder / "Cat.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for _ in range(2):  # The second run finds the first run's masks and overlays in the folder.
        summary = prediction.predict(config, None, "best", [str(folder)], str(folder))
        assert summary.written == [str(folder / "street.jpg")]
        assert len(summary.failed) == 4
        assert all("would overwrite the input" in m for m in summary.failed), summary.failed
        for name, data in before.items():
            assert (folder / name).read_bytes() == data, f"{name} was overwritten"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [*before, "street.png", "street_overlay.jpg"]
        )
