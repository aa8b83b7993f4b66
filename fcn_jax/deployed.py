"""Running an exported FCN (fcn_jax.export) with its own runtime: no JAX model, no training code.

``Deployed(path)`` takes ``model.onnx`` (ONNX Runtime) or a ``saved_model`` folder (TensorFlow),
with ``fcn_jax_export.json`` beside it, and gives a callable uint8 images [N, H, W, 3] ->
uint8 classes [N, H, W]. Only numpy and the runtime are imported here.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

METADATA = "fcn_jax_export.json"  # Written beside the artifacts by fcn_jax.export.


class Deployed:
    """An exported model and its metadata (class names, palette, minimum size, and the
    colour to pad smaller photos with)."""

    def __init__(self, path):
        path = pathlib.Path(path)
        meta_path = path.parent / METADATA
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} is not an fcn_jax export: no {meta_path}")
        self.meta = json.loads(meta_path.read_text())
        self.class_names = tuple(self.meta["class_names"])
        self.min_size = tuple(self.meta["min_input_size"])
        self.pad_rgb = tuple(self.meta["normalization"]["pad_rgb"])
        self.source = f"exported model {path} (from {self.meta['source']})"
        input_name = self.meta["input"]["name"]
        if path.suffix == ".onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self._run = lambda images: session.run(["classes"], {input_name: images})[0]
        elif (path / "saved_model.pb").is_file():
            import tensorflow as tf

            serve = tf.saved_model.load(str(path)).signatures[self.meta["signature"]]
            self._run = lambda images: serve(**{input_name: tf.constant(images)})["classes"]
        else:
            raise ValueError(f"--model={path} is neither a .onnx file nor a SavedModel folder")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] (H, W at least min_size) -> uint8 classes [N, H, W]."""
        return np.asarray(self._run(images))
