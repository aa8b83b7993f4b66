"""Segmenting the users' own photos: a mask PNG and an overlay per photo.

For each input ``<stem>.<ext>`` the output folder gets ``<stem>.png``, a palette
PNG of class indices (PIL reads it back as indices) at exactly the photo's
displayed size, and ``<stem>_overlay.jpg``, the photo with the classes blended
over it and a legend of those present. Photos are read and written on a thread
pool while the device runs; photos with the same padded size share batches.
A file that cannot be read or written is reported by name and skipped. Outputs
never replace an input photo, and carry a mark (``photos.OUTPUT_MARK``) so that a
later run over the same folder skips them instead of segmenting its own masks.

JAX, TensorFlow and the training code load only for the JAX model: with an exported
model (fcn_jax.deployed) this runs where only numpy, PIL and the model's runtime are.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import sys

import numpy as np
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from fcn_jax import deployed, photos
from fcn_jax import visualize as vis


@dataclasses.dataclass
class _Photo:
    path: str
    stem: str
    pixels: np.ndarray  # uint8 [H, W, 3] at the displayed size.
    size: tuple[int, int]  # (h, w) the network sees, after fitting within max_size.


@dataclasses.dataclass
class Summary:
    written: list[str] = dataclasses.field(default_factory=list)  # Input paths done.
    failed: list[str] = dataclasses.field(default_factory=list)  # One message per failure.

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def predict(
    config,
    workdir: str | None,
    which: str,
    inputs,
    output: str,
    *,
    max_size: int = 1024,
    batch_size: int = 0,
    progress: bool = False,
    model: str | None = None,
) -> Summary:
    """Segments every photo named by ``inputs`` (files, folders, globs) into ``output``.

    The model comes from ``evaluation.restore`` (workdir's ``which`` checkpoint,
    or config.init_from). Photos with a longer side than ``max_size`` (0: no
    limit) are segmented at that size and the mask scaled back (nearest); with
    ``inference.sliding_window`` canvases larger than dataset.eval_pad_size are
    tiled. ``batch_size`` 0 means dataset.eval_batch_size (1 without a config), at
    most the number of photos. ``model``, an exported model (fcn_jax.deployed),
    replaces the restored one and the config: photos of one size are batched
    together as they are, and the model pads them to the same canvas as the restored
    one would (input_pipeline.eval_canvas, inside the exported program), so both
    give the same masks.
    """
    paths, errors = photos.expand_inputs(inputs)
    summary = Summary(failed=list(errors))
    for message in errors:
        _report(message)
    ours = {p for p in paths if photos.is_prediction_output(p)}
    if ours:
        print(f"Skipping {len(ours)} masks and overlays written by predict.py", flush=True)
        paths = [p for p in paths if p not in ours]
    if not paths:
        return summary
    wanted = batch_size or min(config.dataset.eval_batch_size if config else 1, len(paths))
    if model:
        runner = _ExportedRunner(deployed.Deployed(model), wanted)
        names = runner.model.class_names
    else:
        runner = _Runner(config, workdir, which, wanted)
        names = vis.class_names(config)
    print(f"Segmenting with {runner.source}", flush=True)
    os.makedirs(output, exist_ok=True)
    inputs_by_key = {photos.same_file_key(p): p for p in paths}
    taken: dict[str, str] = {}  # Output file key -> the input it belongs to.
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        writes = []

        def write(photo, mask):
            writes.append((photo.path, pool.submit(_write, photo, mask, names, output)))

        loads = _ahead(pool, lambda p: _load(p, max_size), paths, 2 * runner.batch_size)
        for path, loaded in tqdm(loads, total=len(paths), unit="photo", disable=not progress):
            if isinstance(loaded, Exception):
                summary.failed.append(_report(str(loaded)))
                continue
            problem = _clash(path, _outputs(output, loaded.stem), inputs_by_key, taken)
            if problem:
                summary.failed.append(_report(problem))
                continue
            for photo, mask in runner.add(loaded):
                write(photo, mask)
        for photo, mask in runner.flush():
            write(photo, mask)
        for path, future in writes:
            try:
                future.result()
                summary.written.append(path)
            except OSError as e:
                summary.failed.append(_report(f"{path}: cannot write its outputs: {e}"))
    return summary


def _outputs(output: str, stem: str) -> tuple[str, str]:
    """The mask and the overlay written for a photo named ``stem``."""
    return os.path.join(output, f"{stem}.png"), os.path.join(output, f"{stem}_overlay.jpg")


def _clash(path: str, outputs, inputs_by_key: dict, taken: dict) -> str | None:
    """Why ``path``'s outputs cannot be written (they would replace an input photo or another
    photo's outputs), or None; records them as taken when they can."""
    keys = [photos.same_file_key(p) for p in outputs]
    for out, key in zip(outputs, keys):
        if key in inputs_by_key:
            return (
                f"{path}: its output {out} would overwrite the input {inputs_by_key[key]}; "
                "choose another --output"
            )
        if key in taken:
            return (
                f"{path}: its outputs would overwrite those of {taken[key]} (same name); "
                "rename it or segment it separately"
            )
    taken.update(dict.fromkeys(keys, path))
    return None


def _report(message: str) -> str:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return message


def _ahead(pool, fn, items, depth):
    """(item, fn(item) or its PhotoError) in order, with up to ``depth`` running ahead."""
    queue = collections.deque()
    for item in items:
        queue.append((item, pool.submit(fn, item)))
        if len(queue) > depth:
            yield _done(*queue.popleft())
    while queue:
        yield _done(*queue.popleft())


def _done(item, future):
    try:
        return item, future.result()
    except photos.PhotoError as e:
        return item, e


def _load(path: str, max_size: int) -> _Photo:
    pixels = photos.load_photo(path)
    size = photos.fit_within(*pixels.shape[:2], max_size)
    stem = os.path.splitext(os.path.basename(path))[0]
    return _Photo(path, stem, pixels, size)


def _write(photo: _Photo, mask: np.ndarray, names, output: str) -> None:
    height, width = photo.pixels.shape[:2]
    if mask.shape != (height, width):
        mask = photos.resize_mask(mask, height, width)
    mask_path, overlay_path = _outputs(output, photo.stem)
    marked = PngImagePlugin.PngInfo()
    marked.add_text("Software", photos.OUTPUT_MARK)
    vis.save_image(vis.mask_image(mask), mask_path, pnginfo=marked)
    overlay = Image.fromarray(vis.overlay(photo.pixels, mask, names))
    vis.save_image(overlay, overlay_path, quality=90, comment=photos.OUTPUT_MARK)


class _Batcher:
    """Gathers photos into batches by canvas size and segments each batch when full: the
    photos at their network size in the top-left corner, the rest ``pad_rgb``, and each
    mask cropped back to its photo."""

    def __init__(self, batch_size: int, pad_rgb, source: str):
        self.batch_size, self.pad_rgb, self.source = batch_size, pad_rgb, source
        self.waiting: dict[tuple[int, int], list[_Photo]] = collections.defaultdict(list)

    def add(self, photo: _Photo):
        """Queues the photo; returns [(photo, mask)] of a batch when one fills up."""
        canvas = self._canvas(photo)
        self.waiting[canvas].append(photo)
        if len(self.waiting[canvas]) < self.batch_size:
            return []
        return self._run(canvas, self.waiting.pop(canvas))

    def flush(self):
        done = []
        for canvas in list(self.waiting):
            done += self._run(canvas, self.waiting.pop(canvas))
        return done

    def _run(self, canvas, group: list[_Photo]):
        images = np.empty((self._slots(len(group)), *canvas, 3), np.uint8)
        images[:] = self.pad_rgb
        for i, photo in enumerate(group):
            h, w = photo.size
            pixels = photo.pixels
            if pixels.shape[:2] != (h, w):
                pixels = photos.resize(pixels, h, w)
            images[i, :h, :w] = pixels
        classes = self._classes(images)
        return [(p, classes[i, : p.size[0], : p.size[1]]) for i, p in enumerate(group)]

    def _canvas(self, photo: _Photo) -> tuple[int, int]:
        raise NotImplementedError

    def _slots(self, count: int) -> int:
        """Images in a batch of ``count`` photos."""
        raise NotImplementedError

    def _classes(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _Runner(_Batcher):
    """The restored model: fixed-size batches per padded eval canvas (the mean colour in
    the padding and in a last batch's unused slots), on the mesh. (It imports JAX and the
    training code itself, so that the exported models' path never does.)"""

    def __init__(self, config, workdir, which, batch_size: int):
        import jax

        from fcn_jax import evaluation, normalization

        if jax.process_count() > 1:
            raise ValueError("predict.py runs on one host; start it without the multi-host flags")
        restored = evaluation.restore(config, workdir, which)
        self.programs, self.variables = restored.programs, restored.variables
        data = self.programs.mesh.shape["data"]
        super().__init__(
            -(-batch_size // data) * data,  # Whole batches for the "data" axis.
            normalization.mean_rgb_uint8(config.dataset.normalization),
            restored.source,
        )
        self.config = config

    def _canvas(self, photo: _Photo) -> tuple[int, int]:
        from fcn_jax import input_pipeline

        return input_pipeline.eval_canvas(self.config, *photo.size)

    def _slots(self, count: int) -> int:
        return self.batch_size  # One compiled program: every batch is full.

    def _classes(self, images: np.ndarray) -> np.ndarray:
        import jax

        from fcn_jax import sharding

        batch = sharding.global_batch({"image": images}, self.programs.mesh)["image"]
        return np.asarray(jax.device_get(self.programs.predict_step(self.variables, batch)))


class _ExportedRunner(_Batcher):
    """An exported model: photos of one network size batched as they are (the program pads
    them to their eval canvas itself, and crops the classes back)."""

    def __init__(self, model: deployed.Deployed, batch_size: int):
        super().__init__(batch_size, model.pad_rgb, model.source)
        self.model = model

    def _canvas(self, photo: _Photo) -> tuple[int, int]:
        return photo.size

    def _slots(self, count: int) -> int:
        return count  # Any batch size: no unused slots.

    def _classes(self, images: np.ndarray) -> np.ndarray:
        return self.model(images)
