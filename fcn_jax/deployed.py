"""Running an exported FCN (fcn_jax.export) with its own runtime: no JAX model, no training code.

``Deployed(path)`` takes ``model.onnx`` (ONNX Runtime) or a ``saved_model`` folder (TensorFlow)
and gives a callable uint8 images [N, H, W, 3] of any size -> uint8 classes [N, H, W]. Its
metadata is ``fcn_jax_export.json`` beside it, or else the copy the artifact carries (an ONNX
file's ``metadata_props``, a SavedModel's ``assets.extra/``), so a model.onnx copied on its own
still runs. ONNX Runtime runs on TensorRT or CUDA where they are installed, else on the CPU;
the SavedModel on the GPU only if it was exported for one (``--platforms``). ``runtime``
says which. Only numpy and the runtime are imported here.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

METADATA = "fcn_jax_export.json"  # Written beside the artifacts by fcn_jax.export.
METADATA_KEY = "fcn_jax_export"  # The same JSON in model.onnx's metadata_props.
# Fastest first; ONNX Runtime lists those its installed package has.
ONNX_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def onnx_providers(available) -> list[str]:
    """The ONNX Runtime execution providers to ask for, fastest first, among ``available``."""
    return [p for p in ONNX_PROVIDERS if p in available]


def _metadata(path: pathlib.Path, carried: str | None) -> dict:
    """The export's metadata: the JSON beside ``path``, else the copy the artifact carries."""
    beside = path.parent / METADATA
    if beside.is_file():
        meta = json.loads(beside.read_text())
    elif carried is None:
        raise FileNotFoundError(f"{path} is not an fcn_jax export: no {beside}, none inside")
    else:
        meta = json.loads(carried)
    if "canvas" not in meta:  # Before the programs padded photos themselves.
        raise ValueError(
            f"{path} was exported by an older fcn_jax (photos of 32x32 at least, no platforms "
            "in its metadata); export it again"
        )
    return meta


class Deployed:
    """An exported model and its metadata (class names, palette, the colour it pads with)."""

    def __init__(self, path):
        path = pathlib.Path(path)
        if path.suffix == ".onnx":
            import onnxruntime

            providers = onnx_providers(onnxruntime.get_available_providers())
            session = onnxruntime.InferenceSession(str(path), providers=providers)
            carried = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
            self.meta = _metadata(path, carried)
            self.runtime = f"ONNX Runtime {session.get_providers()[0]}"  # What it really took.
            self._run = lambda images: session.run(["classes"], {self.input_name: images})[0]
        elif (path / "saved_model.pb").is_file():
            carried = path / "assets.extra" / METADATA
            self.meta = _metadata(path, carried.read_text() if carried.is_file() else None)
            self._open_saved_model(path)
        else:
            raise ValueError(f"--model={path} is neither a .onnx file nor a SavedModel folder")
        self.input_name = self.meta["input"]["name"]
        self.class_names = tuple(self.meta["class_names"])
        self.pad_rgb = tuple(self.meta["normalization"]["pad_rgb"])
        self.source = f"exported model {path} (from {self.meta['source']}) on {self.runtime}"

    def _open_saved_model(self, path: pathlib.Path) -> None:
        import tensorflow as tf

        platforms = self.meta["platforms"]
        if {"cuda", "rocm"} & set(platforms) and tf.config.list_logical_devices("GPU"):
            device = "/GPU:0"
        elif "cpu" in platforms:
            device = "/CPU:0"
        else:
            raise ValueError(
                f"{path} was exported for {','.join(platforms)} only and this machine has no "
                "GPU; export it again with --platforms=cpu,cuda"
            )
        self.runtime = f"TensorFlow {device}"
        serve = tf.saved_model.load(str(path)).signatures[self.meta["signature"]]

        def run(images):
            with tf.device(device):
                return serve(**{self.input_name: tf.constant(images)})["classes"]

        self._run = run

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3], any N, H, W -> uint8 classes [N, H, W] (N = 0: none)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"an exported FCN takes uint8 images [N, H, W, 3], not {images.dtype} "
                f"{list(images.shape)}"
            )
        n, h, w, _ = images.shape
        if not (h and w):
            raise ValueError(f"images of {h}x{w} pixels have nothing to segment")
        if n == 0:  # The artifacts' batch size is at least 1 (JAX's symbolic sizes).
            return np.zeros((0, h, w), np.uint8)
        return np.asarray(self._run(images))
