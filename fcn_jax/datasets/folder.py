"""Your own data in the PASCAL VOC layout, with no builder to write.

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png     palette (mode P) or grayscale (mode L) PNG of
                                        class indices; 255 = void
    ROOT/ImageSets/Segmentation/<split>.txt   one id per line

Set ``dataset.name="folder"``, ``dataset.data_dir=ROOT``, the split names, and
``model.num_classes`` (and optionally ``dataset.class_names``). The listing is
checked up front (missing files, size mismatches, label PNGs that hold colours
rather than indices, photos with an EXIF orientation other than upright), so a
broken dataset fails at start with the file named.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from fcn_jax import transforms

IMAGES, LABELS, LISTS = "JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")
LABEL_MODES = ("P", "L")
EXIF_ORIENTATION = 0x0112
# EXIF orientations other than "as stored" (1), by how a viewer shows the stored pixels.
ROTATED = {
    2: "mirrored",
    3: "rotated 180 degrees",
    4: "flipped upside down",
    5: "transposed",
    6: "rotated 90 degrees clockwise",
    7: "transversed",
    8: "rotated 90 degrees anticlockwise",
}


class Entry(NamedTuple):
    id: str
    image: str
    label: str


def list_split(root: str, split: str) -> list[Entry]:
    """The checked (id, image path, label path) entries of ``split``."""
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"dataset.data_dir={root!r} is not a folder; point it at a VOC-layout root "
            f"holding {IMAGES}/, {LABELS}/ and {LISTS}/"
        )
    list_file = os.path.join(root, LISTS, f"{split}.txt")
    if not os.path.isfile(list_file):
        have = sorted(f[:-4] for f in os.listdir(os.path.dirname(list_file)) if f.endswith(".txt"))
        raise FileNotFoundError(f"no split list {list_file}; splits there: {have}")
    with open(list_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise ValueError(f"split list {list_file} is empty")
    entries = [
        Entry(i, os.path.join(root, IMAGES, f"{i}.jpg"), os.path.join(root, LABELS, f"{i}.png"))
        for i in ids
    ]
    missing = [p for e in entries for p in (e.image, e.label) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} files listed in {list_file} are missing, e.g. {missing[:3]}; "
            "add them or remove their ids from the list"
        )
    for e in entries:
        _check_pair(e)
    return entries


def _check_pair(entry: Entry) -> None:
    try:
        with Image.open(entry.image) as image, Image.open(entry.label) as label:
            image_size, label_size, mode = image.size, label.size, label.mode
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except OSError as e:
        raise ValueError(f"cannot read {entry.image} or {entry.label}: {e}") from e
    if orientation in ROTATED:
        # Viewers and annotation tools show the photo turned, training would read it as stored.
        raise ValueError(
            f"image {entry.image} has EXIF orientation {orientation} (displayed "
            f"{ROTATED[orientation]}), but its pixels are read as stored, so its label would not "
            "line up; store it upright, e.g. losslessly with `exiftran -ai` or `jhead -autorot`"
        )
    if image_size != label_size:
        raise ValueError(
            f"image {entry.image} is {image_size[0]}x{image_size[1]} but its label "
            f"{entry.label} is {label_size[0]}x{label_size[1]}; they must match"
        )
    if mode not in LABEL_MODES:
        raise ValueError(
            f"label {entry.label} is a mode {mode} PNG; save class indices as a palette (P) "
            "or grayscale (L) PNG, not colours"
        )


def read_label(path, num_classes: int) -> np.ndarray:
    """Class indices of a palette or grayscale PNG (never through its RGB colours).

    Values other than 0..num_classes-1 and 255 raise, naming the file.
    """
    path = path.decode() if isinstance(path, bytes) else str(path)
    with Image.open(path) as label:
        indices = np.asarray(label, np.uint8)
    bad, _ = transforms.invalid_labels(indices, num_classes)
    if bad.size:
        raise ValueError(
            f"label {path} holds values {bad.tolist()}, but "
            f"model.num_classes={num_classes} allows 0..{num_classes - 1} and 255 (void)"
        )
    return indices


def decode_label_tf(path, num_classes: int):
    """tf.data op: label PNG path -> uint8 [H, W] indices (PIL reads palettes as indices)."""
    import tensorflow as tf

    label = tf.numpy_function(
        lambda p: read_label(p, num_classes), [path], tf.uint8, stateful=False
    )
    label.set_shape([None, None])
    return label
