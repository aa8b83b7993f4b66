"""PASCAL VOC 2012 segmentation plus the SBD annotations, in the splits FCN trains and reports on.

Labels keep the original class indices: VOC's palette indices (255 on void pixels and object
boundaries) and SBD's masks (no void). `train_aug` is SBD train+val plus VOC train minus every
VOC val image (10,582 images; VOC's label wins where both exist), and `seg11valid` is the FCN
paper's 736-image subset of VOC val that no SBD training image overlaps.

The archives are extracted once (TFDS caches the extraction under the download dir) rather
than scanned per split: each split reads an image and its label from different folders of a
2 GB tar, in an order the tar does not promise.
"""

from __future__ import annotations

import dataclasses
import io
import textwrap
from collections.abc import Callable

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)
VOID_LABEL = 255

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = (
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
    "benchmark.tgz"
)
SEG11VALID_URL = (
    "https://raw.githubusercontent.com/shelhamer/fcn.berkeleyvision.org/master/data/pascal/"
    "seg11valid.txt"
)
SEG11VALID = "seg11valid.txt"
SPLITS = ("voc_train", "voc_val", "sbd_train", "sbd_val", "train_aug", "seg11valid")

_VALID_LABELS = np.array([*range(NUM_CLASSES), VOID_LABEL])


def _voc_label(path: epath.Path, fix: str) -> np.ndarray:
    """Class indices straight from the palette PNG; converting to RGB would give colours."""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            img.load()
            mode, label = img.mode, np.asarray(img)
    except Exception as err:
        raise ValueError(f"{path} is not a readable PNG ({err}); {fix}") from err
    if mode not in ("P", "L"):
        raise ValueError(f"{path} is a mode {mode} PNG, not palette class indices; {fix}")
    return label


def _sbd_label(path: epath.Path, fix: str) -> np.ndarray:
    try:
        return scipy.io.loadmat(io.BytesIO(path.read_bytes()))["GTcls"][0, 0]["Segmentation"]
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable SBD mask (a MATLAB file with struct GTcls.Segmentation) "
            f"({type(err).__name__}: {err}); {fix}"
        ) from err


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where one dataset's files sit inside its official archive (and its extracted folder)."""

    name: str  # The `source` feature.
    title: str
    archive: str
    url: str
    root: str  # Folder inside the archive that holds the paths below.
    image: str
    label: str
    lists: dict[str, str]
    read_label: Callable[[epath.Path, str], np.ndarray]


_VOC = _Source(
    name="voc",
    title="PASCAL VOC 2012",
    archive="VOCtrainval_11-May-2012.tar",
    url=VOC_URL,
    root="VOCdevkit/VOC2012",
    image="JPEGImages/{}.jpg",
    label="SegmentationClass/{}.png",
    lists={"train": "ImageSets/Segmentation/train.txt", "val": "ImageSets/Segmentation/val.txt"},
    read_label=_voc_label,
)
_SBD = _Source(
    name="sbd",
    title="SBD",
    archive="benchmark.tgz",
    url=SBD_URL,
    root="benchmark_RELEASE/dataset",
    image="img/{}.jpg",
    label="cls/{}.mat",
    lists={"train": "train.txt", "val": "val.txt"},
    read_label=_sbd_label,
)


@dataclasses.dataclass(frozen=True)
class _Found:
    """A source's files on disk, with what to do when one of them is missing or broken."""

    source: _Source
    root: epath.Path
    fix: str

    def image(self, id_: str) -> epath.Path:
        return self.root / self.source.image.format(id_)

    def label_path(self, id_: str) -> epath.Path:
        return self.root / self.source.label.format(id_)

    def listed(self, split: str) -> list[str]:
        """The ids of one official list, after checking that each has its image and label."""
        path = self.root / self.source.lists[split]
        ids = _read_ids(path, self.fix)
        for id_ in ids:
            for needed in (self.image(id_), self.label_path(id_)):
                if not needed.exists():
                    raise FileNotFoundError(
                        f"{needed} is missing, but {id_} is listed in {path}; {self.fix}"
                    )
        return ids

    def label(self, id_: str) -> np.ndarray:
        path = self.label_path(id_)
        label = self.source.read_label(path, self.fix)
        if label.ndim != 2:
            raise ValueError(f"{path} holds a {label.shape} array, not an HxW mask; {self.fix}")
        bad = ~np.isin(label, _VALID_LABELS)
        if bad.any():
            values = np.unique(label[bad])[:10].tolist()
            raise ValueError(
                f"{path} has label values {values} outside 0..{NUM_CLASSES - 1} and "
                f"{VOID_LABEL}; {self.fix}"
            )
        return label.astype(np.uint8)


class Builder(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 + SBD semantic segmentation (registered as "voc_sbd")."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put these in the manual dir (`tfds build --manual_dir=DIR`, or
    `tfds.download.DownloadConfig(manual_dir=DIR)`). Each archive may also be given as its
    extracted folder. Whatever the manual dir lacks is downloaded, but a manual dir that holds
    neither dataset is an error.

    * PASCAL VOC 2012: `DIR/{_VOC.archive}` from {_VOC.url}
      (or the extracted `DIR/{_VOC.root}/`).
    * SBD: `DIR/{_SBD.archive}` from {_SBD.url}
      (or the extracted `DIR/{_SBD.root}/`).
    * FCN's validation list: `DIR/{SEG11VALID}` from {SEG11VALID_URL}
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "id": tfds.features.Text(),
                    "source": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        voc, sbd, seg11valid_path = _locate(dl_manager)
        voc_train, voc_val = voc.listed("train"), voc.listed("val")
        sbd_train, sbd_val = sbd.listed("train"), sbd.listed("val")
        seg11valid = _read_ids(seg11valid_path, f"use the official list from {SEG11VALID_URL}")
        outside = sorted(set(seg11valid) - set(voc_val))
        if outside:
            raise ValueError(
                f"{seg11valid_path} lists {len(outside)} ids that are not in VOC val "
                f"({voc.root / _VOC.lists['val']}), e.g. {outside[:3]}; seg11valid.txt and the "
                "VOC lists must come from the official releases"
            )
        val = set(voc_val)
        train_aug = {id_: sbd for id_ in sbd_train + sbd_val if id_ not in val}
        train_aug.update((id_, voc) for id_ in voc_train)  # VOC's label wins.
        items = {
            "voc_train": [(id_, voc) for id_ in voc_train],
            "voc_val": [(id_, voc) for id_ in voc_val],
            "sbd_train": [(id_, sbd) for id_ in sbd_train],
            "sbd_val": [(id_, sbd) for id_ in sbd_val],
            "train_aug": sorted(train_aug.items(), key=lambda item: item[0]),
            "seg11valid": [(id_, voc) for id_ in seg11valid],
        }
        return {split: self._generate_examples(items[split]) for split in SPLITS}

    def _generate_examples(self, items: list[tuple[str, _Found]]):
        for id_, found in items:
            image_path = found.image(id_)
            image, (height, width) = _read_image(image_path, found.fix)
            label = found.label(id_)
            if label.shape != (height, width):
                raise ValueError(
                    f"{found.label_path(id_)} is {label.shape[1]}x{label.shape[0]} but its image "
                    f"{image_path} is {width}x{height}; {found.fix}"
                )
            yield (
                id_,
                {"image": image, "label": label[..., None], "id": id_, "source": found.source.name},
            )


def _locate(dl_manager: tfds.download.DownloadManager) -> tuple[_Found, _Found, epath.Path]:
    """Finds VOC, SBD and seg11valid.txt in the manual dir, downloading what it lacks.

    Reads the manual dir's path directly: TFDS's public `dl_manager.manual_dir` raises for an
    absent folder, which here means "download everything" when it is TFDS's default
    (`<download dir>/manual`) and a mistake when it was given, and for an empty one, which
    must instead fail with the list of what was looked for.
    """
    manual = epath.Path(dl_manager._manual_dir)
    manual_given = manual.exists()
    if not manual_given and manual != epath.Path(dl_manager._download_dir) / "manual":
        raise FileNotFoundError(
            f"The manual dir {manual} does not exist: give the folder that holds "
            f"{_VOC.archive} and {_SBD.archive} (or their extracted folders), or leave the "
            "manual dir out to fetch them."
        )
    candidates = {
        source.name: (manual / source.root, manual / source.archive) for source in (_VOC, _SBD)
    }
    if manual_given and not any(p.exists() for pair in candidates.values() for p in pair):
        looked_for = "\n".join(f"  {p}" for pair in candidates.values() for p in pair)
        raise FileNotFoundError(
            f"The manual dir {manual} holds neither PASCAL VOC 2012 nor SBD. Looked for:\n"
            f"{looked_for}\n{textwrap.dedent(Builder.MANUAL_DOWNLOAD_INSTRUCTIONS)}"
        )

    seg11valid = manual / SEG11VALID
    if not seg11valid.exists():
        seg11valid = _download(dl_manager, SEG11VALID_URL, seg11valid)

    found = []
    for source in (_VOC, _SBD):
        folder, archive = candidates[source.name]
        if manual_given and folder.is_dir():
            fix = f"restore it from the official {source.archive} ({source.url})"
            found.append(_Found(source, folder, fix))
        else:
            if not (manual_given and archive.exists()):
                archive = _download(dl_manager, source.url, archive)
            extracted = epath.Path(dl_manager.extract(archive))
            fix = (
                f"{archive} (extracted to {extracted}) looks damaged: replace it with an intact "
                f"copy of {source.url} and delete {extracted} so that it is extracted again"
            )
            found.append(_Found(source, extracted / source.root, fix))
        logging.info("%s: reading %s", source.title, found[-1].root)
    return found[0], found[1], seg11valid


def _download(
    dl_manager: tfds.download.DownloadManager, url: str, put_at: epath.Path
) -> epath.Path:
    """Downloads url, or says where to put the file by hand when that fails (e.g. offline)."""
    try:
        return epath.Path(dl_manager.download(url))
    except Exception as err:
        raise FileNotFoundError(
            f"Could not download {url} ({type(err).__name__}: {err}). Download it yourself "
            f"and put it at {put_at}"
        ) from err


def _read_ids(path: epath.Path, fix: str) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {fix}")
    return list(
        dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip())
    )


def _read_image(path: epath.Path, fix: str) -> tuple[bytes | np.ndarray, tuple[int, int]]:
    """The original JPEG bytes when they already decode to RGB, else the decoded RGB pixels.

    Decodes every image fully so that a truncated file fails here, naming it, rather than in
    training.
    """
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.format == "JPEG" and img.mode == "RGB":
                return data, (img.height, img.width)
            rgb = np.asarray(img.convert("RGB"))
    except Exception as err:
        raise ValueError(f"{path} is not a readable image ({err}); {fix}") from err
    return rgb, rgb.shape[:2]
