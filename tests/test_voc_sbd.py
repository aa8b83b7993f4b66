"""Tests for the voc_sbd TFDS builder, on miniature official archives made of real VOC/SBD files.

The dataset is built twice per module (from the archives and from their extracted folders)
through `tfds.builder("voc_sbd")`, once more through the `tfds build` CLI, and once per broken
input. Downloads are refused throughout, so a build that tried one fails rather than hangs.
"""

import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds
import voc_fixtures
from PIL import Image
from voc_fixtures import IDS, SBD_ROOT, SEG11VALID, VOC_ROOT

import fcn_jax.datasets  # Registers voc_sbd with TFDS.

pytestmark = pytest.mark.skipif(
    not voc_fixtures.SAMPLES.is_dir(),
    reason=f"needs the real VOC/SBD samples at {voc_fixtures.SAMPLES} (a plain clone lacks them)",
)

REPO = Path(__file__).resolve().parents[1]
EXPECTED_COUNTS = {
    "voc_train": 6,
    "voc_val": 6,
    "sbd_train": 5,
    "sbd_val": 3,
    "train_aug": 10,  # 8 SBD ids - 2 in VOC val + 6 VOC train - 2 labelled by both.
    "seg11valid": 5,
}


@pytest.fixture(scope="module", autouse=True)
def no_network():
    def refuse(self, url_or_urls):
        raise ConnectionError(f"network disabled in tests: {url_or_urls}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfds.download.DownloadManager, "download", refuse)
        mp.setattr(tfds.download.DownloadManager, "download_and_extract", refuse)
        yield


def build(manual_dir: Path, data_dir: Path):
    builder = tfds.builder("voc_sbd", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def load(builder) -> dict[str, dict[str, dict]]:
    """{split: {id: example}} with numpy values; images stay encoded (see decode)."""
    return {
        split: {
            ex["id"].decode(): ex
            for ex in tfds.as_numpy(
                builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
            )
        }
        for split in builder.info.splits
    }


def decode(data: bytes) -> np.ndarray:
    """PIL's pixels, to compare exactly: TF's default JPEG decoding (dct_method INTEGER_FAST)
    differs from PIL's by up to ~20 levels; INTEGER_ACCURATE would match."""
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def assert_nothing_prepared(data_dir: Path) -> None:
    leftovers = sorted(data_dir.glob("voc_sbd/*"))
    assert not leftovers, f"a failed build left {leftovers}"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return voc_fixtures.write_tree(tmp_path_factory.mktemp("voc_sbd_tree"))


@pytest.fixture(scope="module")
def archives(tree, tmp_path_factory) -> Path:
    return voc_fixtures.pack_archives(tree, tmp_path_factory.mktemp("voc_sbd_archives"))


@pytest.fixture(scope="module")
def built(tree, archives, tmp_path_factory):
    """The miniature dataset as read back, built from the archives and from the folders."""
    data = tmp_path_factory.mktemp("voc_sbd_data")
    return {
        "archives": load(build(archives, data / "archives")),
        "folders": load(build(tree, data / "folders")),
    }


def test_constants_and_registration():
    from fcn_jax.datasets.voc_sbd import CLASS_NAMES, NUM_CLASSES

    assert tfds.builder_cls("voc_sbd") is fcn_jax.datasets.voc_sbd.Builder
    assert NUM_CLASSES == len(CLASS_NAMES) == 21
    assert CLASS_NAMES[:2] == ("background", "aeroplane") and CLASS_NAMES[-1] == "tvmonitor"


@pytest.mark.parametrize("form", ["archives", "folders"])
def test_split_counts_and_membership(built, form):
    splits = built[form]
    assert {split: len(examples) for split, examples in splits.items()} == EXPECTED_COUNTS

    def sources(split):
        return {id_: ex["source"].decode() for id_, ex in splits[split].items()}

    assert sources("voc_train") == dict.fromkeys(IDS.voc_train, "voc")
    assert sources("voc_val") == dict.fromkeys(IDS.voc_val, "voc")
    assert sources("sbd_train") == dict.fromkeys(IDS.sbd_train, "sbd")
    assert sources("sbd_val") == dict.fromkeys(IDS.sbd_val, "sbd")
    assert sources("seg11valid") == dict.fromkeys(IDS.seg11valid, "voc")
    assert set(IDS.seg11valid) < set(IDS.voc_val)
    assert sources("train_aug") == {
        **dict.fromkeys(IDS.sbd_only, "sbd"),
        **dict.fromkeys(IDS.voc_train, "voc"),  # Includes the ids SBD labels too.
    }
    assert not set(IDS.sbd_and_voc_val) & set(splits["train_aug"])


@pytest.mark.parametrize("form", ["archives", "folders"])
def test_pixels_equal_the_source_files(built, tree, form):
    for split, examples in built[form].items():
        for id_, ex in examples.items():
            original = voc_fixtures.voc_jpeg(id_).read_bytes()
            assert ex["image"] == original, f"{split} {id_}: an RGB JPEG is stored as it came"
            image = np.asarray(Image.open(voc_fixtures.voc_jpeg(id_)).convert("RGB"))
            np.testing.assert_array_equal(decode(ex["image"]), image, err_msg=f"{split} {id_}")
            if ex["source"] == b"voc":
                label = np.asarray(Image.open(voc_fixtures.voc_png(id_)))
            else:
                mat = scipy.io.loadmat(tree / SBD_ROOT / "cls" / f"{id_}.mat")
                label = mat["GTcls"][0, 0]["Segmentation"]
            assert ex["label"].dtype == np.uint8 and ex["label"].shape == (*label.shape, 1)
            np.testing.assert_array_equal(ex["label"][..., 0], label, err_msg=f"{split} {id_}")


def test_voc_label_wins_where_sbd_differs(built, tree):
    for id_ in IDS.sbd_and_voc_train:
        sbd = scipy.io.loadmat(tree / SBD_ROOT / "cls" / f"{id_}.mat")["GTcls"][0, 0]
        voc = np.asarray(Image.open(voc_fixtures.voc_png(id_)))
        assert (sbd["Segmentation"] != voc).any()  # Void pixels: SBD has none.
        np.testing.assert_array_equal(built["archives"]["train_aug"][id_]["label"][..., 0], voc)


# Optional packages that the tfds CLI (TFDS 4.9.10) needs as it starts, even for builds that
# use neither (https://github.com/tensorflow/datasets/issues/5463), and the names it takes from
# them then; where one is not installed, a stand-in lets the CLI start.
CLI_IMPORTS = {"apache_beam": ["DoFn"], "mlcroissant": ["Dataset"]}


@pytest.mark.slow
def test_tfds_build_cli(archives, tmp_path):
    env = dict(os.environ)
    stubs = tmp_path / "stubs"
    for module, names in CLI_IMPORTS.items():
        if importlib.util.find_spec(module) is None:
            (stubs / module).mkdir(parents=True)
            (stubs / module / "__init__.py").write_text(
                "".join(f"class {name}:\n    pass\n" for name in names)
            )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stubs), env.get("PYTHONPATH")]))
    data_dir = tmp_path / "data"
    command = [
        str(Path(sys.executable).with_name("tfds")),
        "build",
        "fcn_jax/datasets/voc_sbd",
        f"--manual_dir={archives}",
        f"--data_dir={data_dir}",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    builder = tfds.builder_from_directory(data_dir / "voc_sbd" / "1.0.0")
    counts = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert counts == EXPECTED_COUNTS


def test_grayscale_and_cmyk_jpegs_become_rgb(tmp_path):
    tree = voc_fixtures.write_tree(tmp_path / "manual")
    gray = tree / VOC_ROOT / "JPEGImages" / f"{IDS.voc_train[4]}.jpg"
    cmyk = tree / SBD_ROOT / "img" / f"{IDS.sbd_only[1]}.jpg"
    Image.open(gray).convert("L").save(gray, quality=95)
    Image.open(cmyk).convert("CMYK").save(cmyk, quality=95)
    splits = load(build(tree, tmp_path / "data"))
    for path, split in ((gray, "voc_train"), (cmyk, "sbd_train")):
        expected = np.asarray(Image.open(path).convert("RGB")).astype(int)
        image = decode(splits[split][path.stem]["image"])
        assert image.shape == expected.shape
        assert np.abs(image - expected).mean() < 2  # Re-encoded as an RGB JPEG.


def _missing_label(tree):
    path = tree / VOC_ROOT / "SegmentationClass" / f"{IDS.voc_train[2]}.png"
    path.unlink()
    return path


def _corrupt_jpeg(tree):
    path = tree / SBD_ROOT / "img" / f"{IDS.sbd_only[2]}.jpg"
    path.write_bytes(path.read_bytes()[:5000])
    return path


def _corrupt_png(tree):
    path = tree / VOC_ROOT / "SegmentationClass" / f"{IDS.voc_val[3]}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    return path


def _corrupt_mat(tree):
    path = tree / SBD_ROOT / "cls" / f"{IDS.sbd_only[1]}.mat"
    path.write_bytes(path.read_bytes()[:300])
    return path


def _size_mismatch(tree):
    path = tree / VOC_ROOT / "SegmentationClass" / f"{IDS.voc_train[3]}.png"
    label = Image.open(path)
    label.crop((0, 0, label.width - 1, label.height)).save(path)
    return path


def _label_21(tree):
    path = tree / VOC_ROOT / "SegmentationClass" / f"{IDS.voc_val[2]}.png"
    label = Image.open(path)
    indices = np.asarray(label).copy()
    indices[10, 10] = 21
    broken = Image.fromarray(indices, mode="P")
    broken.putpalette(label.getpalette())
    broken.save(path)
    return path


def _empty_manual_dir(tree):
    shutil.rmtree(tree)
    tree.mkdir()
    return tree / voc_fixtures.VOC_ARCHIVE  # The message lists it among what it looked for.


def _no_seg11valid(tree):
    path = tree / SEG11VALID
    path.unlink()
    return path


# name: (break the tree, build from archives, error, words of the remedy)
BROKEN = {
    "missing_label": (_missing_label, False, FileNotFoundError, "restore it"),
    "corrupt_jpeg": (_corrupt_jpeg, False, ValueError, "restore it"),
    "corrupt_jpeg_in_archive": (_corrupt_jpeg, True, ValueError, "delete"),
    "corrupt_png": (_corrupt_png, False, ValueError, "restore it"),
    "corrupt_mat": (_corrupt_mat, False, ValueError, "restore it"),
    "size_mismatch": (_size_mismatch, False, ValueError, "restore it"),
    "label_21": (_label_21, False, ValueError, "restore it"),
    "empty_manual_dir": (_empty_manual_dir, False, FileNotFoundError, "Looked for"),
    "no_seg11valid_offline": (_no_seg11valid, False, FileNotFoundError, "put it at"),
}


def test_a_manual_dir_that_does_not_exist_is_an_error_not_a_download(tmp_path):
    """A mistyped --manual_dir must not start fetching 3.4 GB (or say to put files there)."""
    missing = tmp_path / "VOCdevkti"
    with pytest.raises(FileNotFoundError, match=f"manual dir {missing} does not exist") as caught:
        build(missing, tmp_path / "data")
    assert "download" not in str(caught.value).lower()
    assert_nothing_prepared(tmp_path / "data")


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_input_fails_naming_the_file(case, tmp_path):
    breaker, packed, error, remedy = BROKEN[case]
    tree = voc_fixtures.write_tree(tmp_path / "tree")
    path = breaker(tree)
    manual_dir = voc_fixtures.pack_archives(tree, tmp_path / "archives") if packed else tree
    data_dir = tmp_path / "data"
    with pytest.raises(error) as caught:
        build(manual_dir, data_dir)
    message = str(caught.value)
    assert (path.name if packed else str(path)) in message, message
    assert remedy in message, message
    assert_nothing_prepared(data_dir)
