"""Photo files in the modes and layouts users' cameras and tools produce, made from one real JPEG.

Tests of photo reading compare what the reader returns with the pixels stored in these files, so
each variant keeps the real photo's content and changes only what the reader must undo.
"""

from __future__ import annotations

import io
import pathlib
import shutil

import numpy as np
from PIL import Image

ORIENTATION = 0x0112  # The EXIF tag.


def make_variants(jpeg_path, out_dir) -> dict[str, tuple[pathlib.Path, tuple[int, int]]]:
    """From one real RGB JPEG, write variants and return {name: (path, (displayed_h, displayed_w))}.

    "rgb" (the original, copied), "gray" (mode L JPEG), "rgba" (PNG, alpha rising from 0 in the
    first column to 255 in the last), "cmyk" (CMYK JPEG), "png16" (16-bit grayscale PNG, values
    spread over 0..65535, its first row starting 0, 32768, 65535), "palette" (mode P PNG whose
    top-left pixel's index is transparent), "exif_rotated" (stored unrotated, EXIF Orientation=6:
    displayed rotated 90° clockwise, so transposed in size) and "exif_mirrored" (Orientation=2).
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img = Image.open(jpeg_path).convert("RGB")
    pixels = np.asarray(img)
    height, width = pixels.shape[:2]
    variants = {}

    def add(name, suffix, image, displayed=(height, width), **save_args):
        path = out_dir / f"{name}{suffix}"
        image.save(path, **save_args)
        variants[name] = (path, displayed)

    variants["rgb"] = (pathlib.Path(shutil.copy(jpeg_path, out_dir / "rgb.jpg")), (height, width))
    gray = img.convert("L")
    add("gray", ".jpg", gray)
    alpha = np.broadcast_to(np.linspace(0, 255, width).round().astype(np.uint8), (height, width))
    add("rgba", ".png", Image.fromarray(np.dstack([pixels, alpha])))
    add("cmyk", ".jpg", img.convert("CMYK"))
    # 257 * v maps 0..255 onto 0..65535; the ripple fills in the values between, as a real
    # 16-bit scan has them.
    ripple = np.arange(height * width).reshape(height, width) % 257 - 128
    deep = np.clip(np.asarray(gray, dtype=np.int64) * 257 + ripple, 0, 65535)
    deep[0, :3] = 0, 32768, 65535
    add("png16", ".png", Image.fromarray(deep.astype(np.uint16)))
    palette = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    add("palette", ".png", palette, transparency=palette.getpixel((0, 0)))
    for name, orientation, displayed in (
        ("exif_rotated", 6, (width, height)),
        ("exif_mirrored", 2, (height, width)),
    ):
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        add(name, ".jpg", img, displayed, exif=exif)
    return variants


def make_corrupt(out_dir) -> pathlib.Path:
    """broken.jpg: the first half of a real JPEG, so its header opens but its pixels do not decode.

    The JPEG is encoded here from noise (incompressible, so the cut lands well inside the scan
    data), which keeps this helper usable where the real samples are absent.
    """
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(noise).save(encoded, "JPEG", quality=95)
    path = pathlib.Path(out_dir) / "broken.jpg"
    path.write_bytes(encoded.getvalue()[: encoded.tell() // 2])
    return path
