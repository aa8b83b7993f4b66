"""Test-time inference: flip and multi-scale averaging, and sliding windows.

Everything here runs inside the jitted eval and predict steps, on static shapes:
each scale of a padded eval canvas is one more program branch, and the views of
one scale (the windows of the image and of its mirror) run as one ``lax.map``
over the same model body, so flipping or tiling does not multiply compile time.

Views (scales x flips) are combined by averaging softmax probabilities at the
canvas resolution; windows that overlap average their logits, as mmsegmentation
does. With a single view and no overlap the raw logits come back, so the
prediction is exactly the argmax of the model's logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from fcn_jax import models


def window_stride(window: Sequence[int], overlap: float) -> tuple[int, int]:
    """The step between sliding windows that overlap by ``overlap`` of their size."""
    return tuple(max(1, round(w * (1.0 - overlap))) for w in window)


def sliding_windows(config) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(window, stride) from config.inference, or (None, None) when windows are off.

    Windows are dataset.eval_pad_size, so eval canvases and windows agree.
    """
    if not config.inference.sliding_window:
        return None, None
    window = tuple(config.dataset.eval_pad_size)
    return window, window_stride(window, config.inference.window_overlap)


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every stride, the last flush with the end."""
    if size <= window:
        return [0]
    return [*range(0, size - window, stride), size - window]


def _index(xs, i: int):
    """``xs[i]`` as a static slice: plain indexing becomes a gather when the other sizes
    are symbolic (exported programs, fcn_jax.export), which formats like ONNX map poorly."""
    return jax.lax.index_in_dim(xs, i, keepdims=False)


def _map(fn, xs):
    """fn over the leading axis: one model body however many views there are."""
    if xs.shape[0] == 1:
        return fn(_index(xs, 0))[None]
    return jax.lax.map(fn, xs)


def _tiled_logits(logits_fn, views, window, stride):
    """[V, B, h, w, 3] -> [V, B, h, w, C]; overlapping windows average their logits."""
    _, _, h, w, _ = views.shape
    if window is None:
        return _map(logits_fn, views)
    th, tw = min(window[0], h), min(window[1], w)
    corners = [(y, x) for y in _starts(h, th, stride[0]) for x in _starts(w, tw, stride[1])]
    if len(corners) == 1:
        return _map(logits_fn, views)
    tiles = jnp.stack([views[:, :, y : y + th, x : x + tw] for y, x in corners])
    out = _map(logits_fn, tiles.reshape(-1, *tiles.shape[2:]))
    out = out.reshape(len(corners), *views.shape[:2], th, tw, out.shape[-1]).astype(jnp.float32)
    total = jnp.zeros((*views.shape[:4], out.shape[-1]), jnp.float32)
    count = jnp.zeros((h, w, 1), jnp.float32)
    for tile, (y, x) in zip(out, corners):
        total = total.at[:, :, y : y + th, x : x + tw].add(tile)
        count = count.at[y : y + th, x : x + tw].add(1.0)
    return total / count


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The canvas size at ``scale``, never below the FCN minimum.

    Scale 1 is the size itself, untouched: exported programs trace it as symbolic
    dimensions, which float arithmetic and ``max`` cannot take.
    """
    if scale == 1:
        return height, width
    return tuple(max(models.MIN_INPUT_SIZE, round(s * scale)) for s in (height, width))


def predict_scores(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> jax.Array:
    """Per-pixel class scores [B, H, W, C] of normalised images [B, H, W, 3].

    Args:
        logits_fn: the model, [b, h, w, 3] -> logits [b, h, w, C] for any h, w.
        images: normalised float images (resizing commutes with the per-channel
            normalisation, so scaling them is scaling the photo).
        scales: resize factors; each view is resized back to H x W (bilinear).
        flip: also run the mirrored image and mirror its scores back.
        window, stride: tile each scaled image larger than ``window`` into
            windows ``stride`` apart; None runs it whole.

    Returns:
        The logits for a single view, else the mean softmax probability.
    """
    batch, height, width, _ = images.shape
    views_per_scale = 2 if flip else 1
    if window is not None and stride is None:
        stride = tuple(window)
    total = None
    for scale in scales:
        size = scaled_size(height, width, scale)
        x = images
        if size != (height, width):
            x = jax.image.resize(images, (batch, *size, images.shape[-1]), "bilinear")
        views = jnp.stack([x, jnp.flip(x, 2)]) if flip else x[None]
        logits = _tiled_logits(logits_fn, views, window, stride)
        if flip:
            logits = jnp.stack([_index(logits, 0), jnp.flip(_index(logits, 1), 2)])
        if size != (height, width):
            logits = jax.image.resize(
                logits.astype(jnp.float32),
                (*logits.shape[:2], height, width, logits.shape[-1]),
                "bilinear",
            )
        if len(scales) * views_per_scale == 1:
            return _index(logits, 0)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).sum(axis=0)
        total = probs if total is None else total + probs
    return total / (len(scales) * views_per_scale)


def fit_size(height: int, width: int, box: Sequence[int]) -> tuple[int, int]:
    """The size of an image of height x width rescaled to fit inside ``box`` (long, short)
    keeping its shape: mmcv.rescale_size, each side rounded half up."""
    long_side, short_side = max(box), min(box)
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def run_resized(scores_fn, images, box: Sequence[int], pad: bool):
    """``scores_fn`` of ``images`` rescaled to fit ``box`` (bilinear, no antialiasing, as
    OpenCV's and torch's resize), its scores resized back to the images' size.

    ``pad``: the rescaled images are padded at the bottom/right to the box (oriented as
    they are) with zeros, the mean colour once normalised, and the padding's scores dropped.
    """
    batch, height, width, channels = images.shape
    size = fit_size(height, width, box)
    x = jax.image.resize(images, (batch, *size, channels), "bilinear", antialias=False)
    if pad:
        canvas = (max(box), min(box)) if height >= width else (min(box), max(box))
        x = jnp.pad(x, ((0, 0), (0, canvas[0] - size[0]), (0, canvas[1] - size[1]), (0, 0)))
    scores = scores_fn(x).astype(jnp.float32)[:, : size[0], : size[1]]
    shape = (batch, height, width, scores.shape[-1])
    return jax.image.resize(scores, shape, "bilinear", antialias=False)
