"""Reading the users' own photos for `predict.py`.

Photos come in any format and mode PIL reads, and phones store many of them unrotated with an
EXIF orientation tag. Everything here works in the DISPLAYED orientation, so that the mask that
`predict.py` writes lines up with the photo as a viewer shows it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Written into predict.py's masks (PNG text "Software") and overlays (JPEG comment), so that a
# later run over the same folder knows them from the user's photos.
OUTPUT_MARK = "fcn_jax predict.py"

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class PhotoError(ValueError):
    """A file that cannot be read as a photo; the message names the file and why."""


def expand_inputs(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line inputs -> (image paths in order, error messages).

    Each arg is a file (taken whatever its extension: the reader decides), a folder (its image
    files, sorted, not recursive) or a glob pattern. Errors are collected rather than raised so
    that the CLI can report every bad argument at once. A file named twice is kept once.
    """
    paths, errors, seen = [], [], set()
    for arg in args:
        if os.path.isdir(arg):
            found = _folder_images(arg)
            if not found:
                errors.append(f"{arg}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(arg):
            found = [arg]
        else:
            found = sorted(p for p in glob.glob(arg, recursive=True) if not os.path.isdir(p))
            if not found:
                errors.append(f"{arg}: no such file, folder or glob match")
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths, errors


def _folder_images(folder: str) -> list[str]:
    """The folder's image files by extension; hidden ones are skipped, as glob skips them (macOS
    leaves `._name.jpg` metadata files beside photos on shared drives)."""
    return sorted(
        entry.path
        for entry in os.scandir(folder)
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def same_file_key(path: str) -> str:
    """One key per file: the real path, case-folded (macOS and Windows ignore case)."""
    return os.path.normcase(os.path.realpath(path)).casefold()


def is_prediction_output(path: str) -> bool:
    """Whether ``path`` is a mask or overlay that predict.py wrote (reads the header only)."""
    try:
        with Image.open(path) as img:
            mark = img.info.get("Software") or img.info.get("comment") or b""
    except (OSError, ValueError, Image.DecompressionBombError):
        return False  # Not an image we wrote; load_photo reports what is wrong with it.
    return (mark.decode(errors="replace") if isinstance(mark, bytes) else mark) == OUTPUT_MARK


def load_photo(path: str) -> np.ndarray:
    """The photo as uint8 [H, W, 3] RGB in its displayed orientation, whatever the file's mode.

    Alpha is composited over white; 16-bit values are scaled to 8 bits (not clipped, which would
    turn most of the photo white); float values are clipped to 0..255. Raises PhotoError for a
    file that is missing or cannot be fully decoded, so one bad photo is reported, not a crash.
    """
    try:
        with Image.open(path) as img:
            img.load()  # Decode now: a truncated file must fail here, not in a later step.
            return _to_rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as e:
        raise PhotoError(f"{path}: not an image format that PIL can read") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PhotoError(f"{path}: {reason}") from e


def _to_rgb(img: Image.Image) -> np.ndarray:
    """uint8 RGB from any mode: convert("RGB") alone would clip 16-bit values to white and show
    whatever colour transparent pixels hide (often black)."""
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            gray = np.clip(values, 0, 255)
        else:
            gray = np.clip(values, 0, 65535) * (255 / 65535)
        return np.repeat(np.rint(gray).astype(np.uint8)[..., None], 3, axis=2)
    if img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        over_white = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
        return over_white.astype(np.uint8)
    return np.array(img.convert("RGB"))


def fit_within(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The (height, width) whose longer side is at most max_side, keeping the aspect ratio.

    Bounds the network's input (memory and time grow with the pixel count); max_side <= 0 means
    no bound.
    """
    longer = max(height, width)
    if max_side <= 0 or longer <= max_side:
        return height, width
    scale = max_side / longer
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 RGB photo (PIL's filter widens when downscaling: antialiased)."""
    return np.array(Image.fromarray(photo).resize((width, height), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 class-index mask: class indices must never be blended."""
    return np.array(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
