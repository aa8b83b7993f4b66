"""Colours, class names and pictures of segmentations.

The one place for the segmentation palette and for resolving class names, so that evaluation
plots, the predict CLI and TensorBoard summaries colour and name classes the same way. Only
numpy and PIL load with the module; matplotlib loads when a plot is drawn.
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcn_jax import files

VOID = 255  # The void/boundary label of VOC label PNGs; drawn in PALETTE[VOID], never named.


def _voc_colormap() -> np.ndarray:
    """The VOC devkit's labelcolormap: the bits of each index spread over R, G and B, high first."""
    index, channel = np.arange(256)[:, None], np.arange(3)
    colors = np.zeros((256, 3), np.int64)
    for bit in range(8):
        colors |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colors.astype(np.uint8)


PALETTE = _voc_colormap()
PALETTE.flags.writeable = False  # Shared by every caller; palette() hands out copies to modify.


def palette() -> np.ndarray:
    """uint8 [256, 3]: the PASCAL VOC colours, the ones embedded in VOC label PNGs."""
    return PALETTE.copy()


def class_names(config) -> tuple[str, ...]:
    """Names of the config's model.num_classes classes, checked against the dataset's own."""
    name = config.dataset.name
    num_classes = config.model.num_classes
    if name == "voc_sbd":  # Imported here: the dataset packages load tensorflow_datasets.
        from fcn_jax.datasets.voc_sbd import CLASS_NAMES as names

        hint = f"set model.num_classes={len(names)}"
    elif name == "synthetic":
        from fcn_jax.datasets.synthetic import CLASS_NAMES as names

        hint = f"set model.num_classes={len(names)}"
    else:
        names = tuple(config.dataset.class_names)
        if not names:
            return tuple(f"class {i}" for i in range(num_classes))
        hint = f"list {num_classes} names in dataset.class_names or set model.num_classes"
    if len(names) != num_classes:
        raise ValueError(
            f"model.num_classes={num_classes} but dataset {name!r} names {len(names)} classes: "
            f"{hint}"
        )
    return tuple(names)


def _indices(mask) -> np.ndarray:
    """Class indices as uint8, refusing values that would wrap around instead of colouring."""
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"class indices must lie in 0..255, got {mask.min()}..{mask.max()}")
        mask = mask.astype(np.uint8)
    return mask


def colorize(mask) -> np.ndarray:
    """uint8 [..., H, W] class indices (255 = void) -> uint8 [..., H, W, 3] palette colours."""
    return PALETTE[_indices(mask)]


def mask_image(mask) -> Image.Image:
    """A mode 'P' image with the VOC palette: the saved PNG shows colours yet keeps the indices."""
    image = Image.fromarray(_indices(mask))
    image.putpalette(PALETTE.tobytes())  # Turns the 'L' image into a 'P' one.
    return image


def save_image(image: Image.Image, path: str, **save_kwargs) -> None:
    """Writes `image` atomically, in the format its extension names (the temp file's differs)."""
    extension = pathlib.Path(path).suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError(f"cannot tell an image format from the extension of {path!r}")
    with files.atomic_file(path) as f:
        image.save(f, format=image_format, **save_kwargs)


def _legend(present, names, width: int) -> np.ndarray:
    """uint8 [h, width, 3]: a white band of colour swatches and names, wrapped into rows."""
    size = 10 + width // 100  # Grows gently so names stay legible on large photos.
    font = ImageFont.load_default(size=size)
    pad = size // 2
    positions, x, y = [], pad, pad
    for i in present:
        item = size + pad + round(font.getlength(names[i]))
        if x > pad and x + item > width - pad:
            x, y = pad, y + size + pad
        positions.append((i, x, y))
        x += item + 2 * pad
    band = Image.new("RGB", (width, y + size + pad), "white")
    draw = ImageDraw.Draw(band)
    for i, x, y in positions:
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=tuple(PALETTE[i].tolist()))
        draw.text((x + size + pad, y), names[i], fill="black", font=font)
    return np.asarray(band)


def overlay(photo, mask, names, alpha: float = 0.5) -> np.ndarray:
    """uint8 [H, W, 3] photo, [H, W] mask -> uint8 [H + legend, W, 3]: the class colours blended
    over the photo (black, the VOC background, leaves it as is) above a legend of the classes
    present in the mask."""
    photo = np.asarray(photo, np.uint8)
    mask = _indices(mask)
    colors = PALETTE[mask]
    blended = np.rint(photo * (1 - alpha) + colors * alpha).astype(np.uint8)
    blended = np.where(colors.any(axis=-1, keepdims=True), blended, photo)
    present = [i for i in np.unique(mask).tolist() if i != VOID]
    if not present:
        return blended
    return np.concatenate([blended, _legend(present, names, photo.shape[1])])


def eval_panels(images, labels, preds) -> np.ndarray:
    """[N, H, W, 3] images, [N, H, W] labels and predictions -> uint8 [N, H, 3W, 3]: input,
    ground truth and prediction side by side, one picture per example for TensorBoard."""
    images = np.asarray(images, np.uint8)
    return np.concatenate([images, colorize(labels), colorize(preds)], axis=2)


def plot_confusion(cm, names, path: str) -> None:
    """Writes the row-normalised confusion matrix as a PNG heatmap: row r shows where the pixels
    of ground-truth class r went, so rare classes read as clearly as common ones."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm, np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    side = 3 + 0.4 * len(names)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90)
    ax.set_yticks(ticks, names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (each row normalised)")
    fig.colorbar(im, ax=ax, label="fraction of the row's pixels")
    with files.atomic_file(path) as f:
        fig.savefig(f, format="png")


def plot_iou(iou, names, path: str) -> None:
    """Writes per-class IoU as a PNG bar chart; NaN (class absent from the split) reads 'n/a'."""
    from matplotlib.figure import Figure

    iou = np.asarray(iou, np.float64)
    absent = np.isnan(iou)
    fig = Figure(figsize=(7, 1.5 + 0.3 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.where(absent, 0, iou), color="tab:blue")
    for row, value in zip(y, iou):
        label = "n/a" if np.isnan(value) else f"{value:.3f}"
        ax.text(0 if np.isnan(value) else value, row, f" {label}", va="center")
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # Class 0 on top, as in the confusion matrix.
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU")
    title = "Per-class IoU"
    if not absent.all():
        mean = np.nanmean(iou)
        ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean IoU {mean:.3f}")
        ax.legend()
        title += f" (mean {mean:.3f})"
    ax.set_title(title)
    with files.atomic_file(path) as f:
        fig.savefig(f, format="png")
