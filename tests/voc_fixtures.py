"""Miniature official PASCAL VOC 2012 and SBD archives, made from the real samples.

The files are the real ones from ../shared/voc_samples (only SBD's .mat masks other than
2008_000783 are generated, in the real file's structure), laid out as in the official archives,
with the official lists filtered to the ids present. The ids exercise the split rules: SBD-only
ids, ids labelled by both SBD and VOC train (VOC must win in train_aug) and ids labelled by
both SBD and VOC val (must stay out of train_aug).
"""

from __future__ import annotations

import csv
import shutil
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "voc_samples"
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
SBD_ARCHIVE = "benchmark.tgz"
VOC_ROOT = "VOCdevkit/VOC2012"
SBD_ROOT = "benchmark_RELEASE/dataset"
SEG11VALID = "seg11valid.txt"
REAL_SBD_ID = "2008_000783"  # The one real SBD mask; SBD-only (not in the VOC lists).


def _sample_ids() -> dict[str, list[str]]:
    with open(SAMPLES / "voc" / "pairs.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {
        split: sorted(r["id"] for r in rows if r["voc2012_seg_split"] == split)
        for split in ("train", "val")
    }


def _official(name: str) -> list[str]:
    return (SAMPLES / "voc" / "ImageSets" / "Segmentation" / name).read_text().split()


class Ids:
    """The ids of the miniature dataset, and the lists that place them in splits."""

    def __init__(self):
        samples = _sample_ids()
        voc_train, voc_val = samples["train"][:6], samples["val"][:6]
        # SBD-only ids besides the real one: VOC samples left out of the miniature VOC archive,
        # with their VOC mask (void set to background) as SBD mask.
        sbd_only = samples["train"][6:8] + samples["val"][6:7]
        self.voc_train = [i for i in _official("train.txt") if i in voc_train]
        self.voc_val = [i for i in _official("val.txt") if i in voc_val]
        # Leaves one val id out so that seg11valid differs from voc_val, as on the full data.
        self.seg11valid = [i for i in _official(SEG11VALID) if i in voc_val][:-1]
        self.sbd_train = [REAL_SBD_ID, *sbd_only[:2], voc_train[0], voc_val[0]]
        self.sbd_val = [sbd_only[2], voc_train[1], voc_val[1]]
        self.sbd_only = [REAL_SBD_ID, *sbd_only]
        self.sbd_and_voc_train = voc_train[:2]
        self.sbd_and_voc_val = voc_val[:2]


IDS = Ids() if SAMPLES.is_dir() else None  # The tests skip without the samples.


def voc_jpeg(id_: str) -> Path:
    """The real JPEG of an id (VOC's; SBD uses the same images)."""
    if id_ == REAL_SBD_ID:
        return SAMPLES / "sbd" / "img" / f"{id_}.jpg"
    return SAMPLES / "voc" / "JPEGImages" / f"{id_}.jpg"


def voc_png(id_: str) -> Path:
    return SAMPLES / "voc" / "SegmentationClass" / f"{id_}.png"


def write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """Writes an SBD class mask as the real files hold it: a MATLAB v5 struct GTcls with a
    20x1 cell of sparse per-class boundary maps, the uint8 mask and the classes present."""
    padded = np.pad(segmentation, 1, mode="edge")
    edge = np.zeros(segmentation.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):  # A 4-neighbour of another class.
        edge |= (
            padded[dy : dy + segmentation.shape[0], dx : dx + segmentation.shape[1]] != segmentation
        )
    boundaries = np.empty((20, 1), dtype=object)
    for c in range(1, 21):
        boundaries[c - 1, 0] = scipy.sparse.csc_matrix(edge & (segmentation == c))
    present = np.unique(segmentation)
    gtcls = {
        "Boundaries": boundaries,
        "Segmentation": segmentation.astype(np.uint8),
        "CategoriesPresent": present[present > 0].astype(np.uint8)[:, None],
    }
    scipy.io.savemat(path, {"GTcls": gtcls}, do_compression=True)


def sbd_mask_from_voc(id_: str) -> np.ndarray:
    """An SBD-like mask for a VOC id: its VOC class indices with void set to background."""
    label = np.asarray(Image.open(voc_png(id_))).copy()
    label[label == 255] = 0
    return label


def write_tree(root: Path) -> Path:
    """Writes both datasets as extracted folders, plus seg11valid.txt, under root."""
    voc = root / VOC_ROOT
    lists = voc / "ImageSets" / "Segmentation"
    for sub in ("JPEGImages", "SegmentationClass"):
        (voc / sub).mkdir(parents=True)
    lists.mkdir(parents=True)
    for id_ in IDS.voc_train + IDS.voc_val:
        shutil.copyfile(voc_jpeg(id_), voc / "JPEGImages" / f"{id_}.jpg")
        shutil.copyfile(voc_png(id_), voc / "SegmentationClass" / f"{id_}.png")
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in IDS.voc_train))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in IDS.voc_val))

    sbd = root / SBD_ROOT
    (sbd / "img").mkdir(parents=True)
    (sbd / "cls").mkdir()
    for id_ in IDS.sbd_train + IDS.sbd_val:
        shutil.copyfile(voc_jpeg(id_), sbd / "img" / f"{id_}.jpg")
        if id_ == REAL_SBD_ID:
            shutil.copyfile(SAMPLES / "sbd" / "cls" / f"{id_}.mat", sbd / "cls" / f"{id_}.mat")
        else:
            write_sbd_mat(sbd / "cls" / f"{id_}.mat", sbd_mask_from_voc(id_))
    (sbd / "train.txt").write_text("".join(f"{i}\n" for i in IDS.sbd_train))
    (sbd / "val.txt").write_text("".join(f"{i}\n" for i in IDS.sbd_val))

    (root / SEG11VALID).write_text("".join(f"{i}\n" for i in IDS.seg11valid))
    return root


def pack_archives(tree: Path, dest: Path) -> Path:
    """Packs a tree from write_tree into the two official archives (and seg11valid.txt)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / VOC_ARCHIVE, "w") as tar:
        tar.add(tree / "VOCdevkit", arcname="VOCdevkit")
    with tarfile.open(dest / SBD_ARCHIVE, "w:gz") as tar:
        tar.add(tree / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    shutil.copyfile(tree / SEG11VALID, dest / SEG11VALID)
    return dest
