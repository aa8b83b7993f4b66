"""Synthetic shapes segmentation data, drawn on the fly from a seed.

The demo uses it to run the real input pipeline, model and training loop end to end with no
downloads, and to reach a meaningful mean IoU within minutes on a CPU. Each image holds a
textured background (two random colours blended by low-frequency sinusoids, so blotches,
gradients and soft stripes) and 1-4 rotated, possibly overlapping shapes, each a random colour
with faint stripes; mild noise covers everything. Labels follow the PASCAL VOC conventions:
class ids with 0 = background, the topmost shape wins where shapes overlap, and a thin band of
255 (void) along every region boundary.

The task is solvable from shape only: shapes of every kind and the background draw their
colours from one distribution, so a per-pixel colour classifier fails while a small FCN learns
the edges and corners. Every draw happens in image-relative units before the per-pixel noise,
so one (seed, split, index) gives the same scene at any image size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

CLASS_NAMES = ("background", "circle", "square", "triangle")
NUM_CLASSES = len(CLASS_NAMES)
VOID_LABEL = 255
VALIDATION_SIZE = 256
MIN_SIDE = 32
# Examples per split; None marks the unbounded training stream (index 0, 1, 2, ...).
SPLITS = {"train": None, "validation": VALIDATION_SIZE}

_STREAM_IDS = {name: i for i, name in enumerate(SPLITS)}  # Disjoint random streams per split.
_MIN_CONTRAST = 64.0  # RGB distance kept between a shape's colour and its surroundings' colours.
_COLOUR_TRIES = 16
_REACH = 1.5  # Farthest a shape reaches from its centre, in units of its radius.
# Ranges of the per-shape draws: radius (an extent of 15%-45% of the side), centre y and x
# (fractions of the image), rotation, stripe period, stripe amplitude, stripe phase.
_SHAPE_LOW = np.array([0.075, 0.1, 0.1, 0.0, 0.05, 5.0, 0.0])
_SHAPE_HIGH = np.array([0.225, 0.9, 0.9, 2 * math.pi, 0.15, 15.0, 2 * math.pi])


def _check_args(split: str, image_size: tuple[int, int]) -> tuple[int, int]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {sorted(SPLITS)}")
    height, width = (int(side) for side in image_size)
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image_size {tuple(image_size)} has a side below {MIN_SIDE} pixels")
    return height, width


def mark_void_boundaries(label: np.ndarray) -> np.ndarray:
    """Set both pixels of every 4-neighbour pair with different labels to VOID_LABEL.

    Mirrors VOC's void band around objects: pixels on a boundary are ambiguous, so training
    and evaluation ignore them. The band is two pixels wide, one on each side.
    """
    out = label.copy()
    rows = label[1:] != label[:-1]
    cols = label[:, 1:] != label[:, :-1]
    out[1:][rows] = out[:-1][rows] = VOID_LABEL
    out[:, 1:][cols] = out[:, :-1][cols] = VOID_LABEL
    return out


def _pick_colour(candidates: list, background: list, others: list) -> list:
    """Pick the first candidate _MIN_CONTRAST from the background blend and other shapes.

    Rejection sampling that keeps edges visible; it ignores the shape kind, so colour stays
    uninformative. Falls back to the farthest candidate if none qualifies. Plain Python: on
    a few RGB triples it beats numpy's per-call overhead.
    """
    start, end = background
    direction = [b - a for a, b in zip(start, end, strict=True)]
    length2 = max(sum(d * d for d in direction), 1e-6)
    best, best_distance = candidates[0], -1.0
    for colour in candidates:
        along = sum((c - a) * d for c, a, d in zip(colour, start, direction, strict=True)) / length2
        along = min(max(along, 0.0), 1.0)
        nearest = [a + along * d for a, d in zip(start, direction, strict=True)]
        distance = min([math.dist(colour, nearest)] + [math.dist(colour, o) for o in others])
        if distance >= _MIN_CONTRAST:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Mask of a shape in its rotated frame (u, v); all kinds cover about 3 * radius**2."""
    name = CLASS_NAMES[kind]
    if name == "circle":
        return u * u + v * v <= radius * radius
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.9 * radius
    # Equilateral triangle with a vertex on +u and circumradius 1.5 * radius, so inradius
    # 0.75 * radius: right of the edge at u = -inradius, inside the two slanted edges.
    inradius = 0.75 * radius
    return (u >= -inradius) & (math.sqrt(3) * np.abs(v) <= 2 * inradius - u)


def make_example(
    index: int, *, split: str, image_size: tuple[int, int], seed: int = 0
) -> dict[str, np.ndarray]:
    """Draw example `index` of `split`: uint8 image [H, W, 3] and uint8 label [H, W].

    Deterministic in (seed, split, index, image_size). Lengths are in units of the shorter
    image side, so the scene does not depend on the resolution.
    """
    height, width = _check_args(split, image_size)
    size = SPLITS[split]
    if index < 0 or (size is not None and index >= size):
        raise IndexError(f"index {index} out of range for split {split!r} of size {size}")
    rng = np.random.default_rng([seed, _STREAM_IDS[split], index])
    side = min(height, width)
    y = ((np.arange(height, dtype=np.float32) + 0.5) / side)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / side)[None, :]

    # Background: two colours blended by two plane waves of 0.5-2 cycles per side.
    background = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    blend = np.float32(0.5)
    for angle, phase, cycles in rng.random((2, 3)).tolist():
        angle, phase = 2 * math.pi * angle, 2 * math.pi * phase
        frequency = 2 * math.pi * (0.5 + 1.5 * cycles)
        wave = (frequency * math.cos(angle) * x + phase) + frequency * math.sin(angle) * y
        blend = blend + 0.25 * np.sin(wave)
    # Channels first while drawing: numpy broadcasts far faster over a long last axis.
    start, end = background[:, :, None, None]
    image = start + blend * (end - start)

    # Shapes, drawn bottom to top.
    count = int(rng.integers(1, 5))
    kinds = rng.integers(1, NUM_CLASSES, count).tolist()
    candidates = rng.uniform(0, 255, (count, _COLOUR_TRIES, 3)).tolist()
    params = (_SHAPE_LOW + (_SHAPE_HIGH - _SHAPE_LOW) * rng.random((count, 7))).tolist()
    label = np.zeros((height, width), np.uint8)
    background_rgb, colours = background.tolist(), []
    for kind, shape_candidates, shape_params in zip(kinds, candidates, params, strict=True):
        radius, centre_y, centre_x, rotation, period, amplitude, phase = shape_params
        centre_y, centre_x = centre_y * height / side, centre_x * width / side
        colour = _pick_colour(shape_candidates, background_rgb, colours)
        colours.append(colour)
        # Only the shape's bounding box is touched, which keeps rendering fast.
        reach = _REACH * radius
        rows = slice(max(0, int((centre_y - reach) * side)), int((centre_y + reach) * side) + 1)
        cols = slice(max(0, int((centre_x - reach) * side)), int((centre_x + reach) * side) + 1)
        dy, dx = y[rows] - centre_y, x[:, cols] - centre_x
        u = math.cos(rotation) * dx + math.sin(rotation) * dy
        v = math.cos(rotation) * dy - math.sin(rotation) * dx
        mask = _shape_mask(kind, u, v, radius)
        stripes = amplitude * np.sin(2 * math.pi / period * u + phase)
        fill = np.array(colour, np.float32)[:, None, None] + stripes
        np.copyto(image[:, rows, cols], fill, where=mask)
        label[rows, cols][mask] = kind

    # Triangular noise in [-15, 15] (std 6.5) from two random nibbles per value: raw bits are
    # several times faster to draw than normal variates.
    noise = rng.bit_generator.random_raw(-(-image.size // 8)).view(np.uint8)[: image.size]
    noise = noise.reshape(image.shape)
    image += (noise & 15) + (noise >> 4) - np.float32(15)
    image = np.dstack(np.clip(image, 0, 255).astype(np.uint8))
    return {"image": image, "label": mark_void_boundaries(label)}


def as_tf_dataset(
    indices: tf.data.Dataset, *, split: str, image_size: tuple[int, int], seed: int = 0
) -> tf.data.Dataset:
    """Map a dataset of int64 indices to {"image", "label"} examples with static shapes.

    Lets the synthetic data flow through the same tf.data code as real data downstream.
    TensorFlow is imported here so numpy-only users of this module never load it.
    """
    import tensorflow as tf

    height, width = _check_args(split, image_size)

    def load(index):
        example = make_example(int(index), split=split, image_size=(height, width), seed=seed)
        return example["image"], example["label"]

    def to_example(index):
        image, label = tf.numpy_function(load, [index], (tf.uint8, tf.uint8), stateful=False)
        return {
            "image": tf.ensure_shape(image, (height, width, 3)),
            "label": tf.ensure_shape(label, (height, width)),
        }

    return indices.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
