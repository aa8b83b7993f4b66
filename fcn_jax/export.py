"""Deployment: a trained FCN as ONNX, a TF SavedModel and serialized StableHLO.

Every artifact holds one program, uint8 RGB images [N, H, W, 3] -> (classes uint8
[N, H, W], scores float32 [N, H, W, C]), with N, H and W symbolic: one artifact
serves every photo size of at least ``models.MIN_INPUT_SIZE`` (one stride-32 cell of
the VGG FCNs; the ResNets, of output stride 8, keep the same rule). The model's own
normalisation is inside, so a caller sends the photo's pixels as they are. Scores
are the logits, or with flip test-time augmentation (``tta=True`` and the
config's ``inference.flip``) the mean softmax probability of the two views.

Routes, all from the one traced JAX function (so the formats cannot disagree on
what the model is):
  * StableHLO: ``jax.export`` serialized; ``jax.export.deserialize(...).call`` runs
    it in any JAX, without fcn_jax.
  * SavedModel: ``jax2tf`` (native serialization: the same StableHLO inside an
    XlaCallModule op) with a ``serving_default`` signature for TF Serving; the
    weights are tf.Variables, not constants in the graph.
  * ONNX: fcn_jax.onnx_export translates the program's jaxpr into ONNX operators, its
    symbolic sizes into ONNX arithmetic on the input's shape (why not jax2onnx or
    jax2tf + tf2onnx: that module's docstring).

A folder is written beside the artifacts' metadata (``METADATA``), into a hidden
temporary folder renamed to ``output`` only once every format succeeded.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import pathlib
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax import deployed, files, models, normalization, resnet, steps, visualize

FORMATS = ("onnx", "saved_model", "stablehlo")
FILENAMES = {"onnx": "model.onnx", "saved_model": "saved_model", "stablehlo": "model.stablehlo"}
METADATA = deployed.METADATA  # Where fcn_jax.deployed, which has no JAX, looks for it.
INPUT_NAME = "images"
OUTPUT_NAMES = ("classes", "scores")
SIGNATURE = "serving_default"
CONSTRAINTS = (f"h >= {models.MIN_INPUT_SIZE}", f"w >= {models.MIN_INPUT_SIZE}")


class ExportError(ValueError):
    """An export that cannot be written; nothing was. A ValueError: the CLI's one-line error."""


def scores_are(config, tta: bool) -> str:
    """ "logits", or "probabilities" when flip TTA averages the softmax of two views."""
    return "probabilities" if tta and config.inference.flip else "logits"


def serving_config(config, tta: bool):
    """The config with the test-time inference an exported program runs: one view at the
    input's own size, plus its mirror when ``tta`` and the config flips. Multi-scale,
    sliding windows and resize_to resize or tile by concrete sizes, which a program of
    symbolic sizes cannot; asking for them is an error rather than a silently different model."""
    options = config.inference
    if tta and (tuple(options.scales) != (1.0,) or options.sliding_window or options.resize_to):
        raise ExportError(
            "only flip test-time augmentation can be exported (the program takes any size); "
            f"the config asks for scales={tuple(options.scales)}, "
            f"sliding_window={options.sliding_window}, resize_to={tuple(options.resize_to)}: "
            "set them to (1.0,), False and ()"
        )
    serving = config.copy_and_resolve_references()
    serving.inference.scales = (1.0,)
    serving.inference.sliding_window = False
    serving.inference.resize_to = ()
    serving.inference.flip = bool(tta and options.flip)
    return serving


def serving_fn(config, tta: bool = False):
    """(variables, uint8 images [N, H, W, 3]) -> (uint8 classes [N, H, W], float32 scores).

    The config's model and normalisation (fcn_jax.steps.make_scores_fn, the eval step's
    own scoring); the classes are the scores' argmax.
    """
    if config.model.num_classes > 256:
        raise ExportError(f"{config.model.num_classes} classes do not fit the uint8 class map")
    serving = serving_config(config, tta)
    scores_fn = steps.make_scores_fn(steps.build_model(serving), serving)

    def fn(variables, images):
        scores = scores_fn(variables, images).astype(jnp.float32)
        return jnp.argmax(scores, -1).astype(jnp.uint8), scores

    return fn


def input_spec() -> jax.ShapeDtypeStruct:
    """uint8 [n, h, w, 3] with symbolic n, h, w, h and w at least ``MIN_INPUT_SIZE``."""
    n, h, w = jax.export.symbolic_shape("n, h, w", constraints=CONSTRAINTS)
    return jax.ShapeDtypeStruct((n, h, w, 3), jnp.uint8)


def host_variables(variables) -> dict:
    """``{"params", "batch_stats"}`` as numpy: sharded arrays of any mesh become plain weights."""
    return jax.tree.map(np.asarray, jax.device_get(dict(variables)))


@dataclasses.dataclass
class Exporter:
    """One model to export: its config (for the program), weights and provenance."""

    config: object
    variables: dict  # numpy {"params", "batch_stats"}
    source: str  # Where the weights came from, for the metadata.
    tta: bool = False
    platforms: tuple[str, ...] = ("cpu",)  # jax.export / jax2tf lowering targets.

    def __post_init__(self):
        self.variables = host_variables(self.variables)
        self.fn = serving_fn(self.config, self.tta)
        self.spec = input_spec()

    def bound(self):
        """images -> (classes, scores) with the weights as constants."""
        return lambda images: self.fn(self.variables, images)

    def stablehlo(self, path: pathlib.Path) -> None:
        exported = jax.export.export(jax.jit(self.bound()), platforms=self.platforms)(self.spec)
        path.write_bytes(exported.serialize())

    def saved_model(self, path: pathlib.Path) -> None:
        import tensorflow as tf
        from jax.experimental import jax2tf

        weights = tf.nest.map_structure(tf.Variable, self.variables)
        converted = jax2tf.convert(
            self.fn,
            polymorphic_shapes=[None, "(n, h, w, 3)"],
            polymorphic_constraints=CONSTRAINTS,
            native_serialization_platforms=self.platforms,
            with_gradient=False,
        )
        spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)

        @tf.function(autograph=False, input_signature=[spec])
        def serve(images):
            return dict(zip(OUTPUT_NAMES, converted(weights, images)))

        module = tf.Module()
        module.weights, module.serve = weights, serve
        tf.saved_model.save(module, str(path), signatures={SIGNATURE: serve})

    def onnx(self, path: pathlib.Path) -> None:
        from fcn_jax import onnx_export

        # fc6 as a convolution: ONNX Runtime has a fast one, unlike the 49 gathered views
        # the matmul form (faster on XLA CPU) becomes.
        config = self.config.copy_and_resolve_references()
        config.model.fc6_impl = "conv"
        fn = serving_fn(config, self.tta)
        model = onnx_export.to_onnx(
            lambda images: fn(self.variables, images),
            self.spec,
            INPUT_NAME,
            OUTPUT_NAMES,
            dim_names={"n": "N", "h": "H", "w": "W"},
        )
        path.write_bytes(model.SerializeToString())

    def metadata(self, formats) -> dict:
        config = self.config
        c = config.model.num_classes
        scores = scores_are(config, self.tta)
        vgg = config.model.backbone not in resnet.BACKBONES
        return {
            "fcn_jax_version": _version(),
            "source": self.source,
            "model": {
                "backbone": config.model.backbone,
                "variant": config.model.variant if vgg else None,
                "geometry": config.model.geometry if vgg else None,
            },
            "artifacts": {f: FILENAMES[f] for f in formats},
            "signature": SIGNATURE,
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", "H", "W", 3]},
            "outputs": {
                OUTPUT_NAMES[0]: {"dtype": "uint8", "shape": ["N", "H", "W"]},
                OUTPUT_NAMES[1]: {"dtype": "float32", "shape": ["N", "H", "W", c]},
            },
            "scores": scores,
            "test_time_augmentation": {"flip": scores == "probabilities"},
            "min_input_size": [models.MIN_INPUT_SIZE] * 2,
            "normalization": normalization.describe(config.dataset.normalization),
            "class_names": list(visualize.class_names(config)),
            "palette": visualize.palette()[:c].tolist(),
        }


def _version() -> str:
    try:
        return importlib.metadata.version("fcn_jax")
    except importlib.metadata.PackageNotFoundError:  # A checkout: its pyproject.toml.
        pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
        return re.search(r'^version = "(.+)"', pyproject.read_text(), re.M).group(1)


def export(exporter: Exporter, formats, output) -> dict[str, str]:
    """Writes ``formats`` and the metadata into the new folder ``output``; {format: path}.

    All or nothing: on any failure the temporary folder is removed, ``output`` is not
    created, and ExportError says which format failed and why.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format takes some of {','.join(FORMATS)}, not {formats}")
    output = pathlib.Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(f"{output} exists and is not an empty folder; choose a new --output")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for name in formats:
            try:
                getattr(exporter, name)(tmp / FILENAMES[name])
            except ImportError as e:
                raise ExportError(
                    f"{name}: its export tool is not installed ({e}); "
                    "pip install -r requirements-export.txt"
                ) from e
            except Exception as e:  # The exporter's own words, on one line.
                reason = " ".join(str(e).split())[:400]
                raise ExportError(f"{name} export failed: {type(e).__name__}: {reason}") from e
        files.write_json(tmp / METADATA, exporter.metadata(formats))
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {f: str(output / FILENAMES[f]) for f in formats}


def export_trained(
    config, workdir, which, formats, output, *, tta=False, platforms=("cpu",)
) -> dict[str, str]:
    """Exports the model evaluation.restore finds (the workdir's ``which`` checkpoint, or
    config.init_from's converted weights), as eval.py and predict.py would run it."""
    from fcn_jax import evaluation  # Compiles the training programs: only when exporting.

    restored = evaluation.restore(config, workdir, which)
    exporter = Exporter(config, restored.variables, restored.source, tta, tuple(platforms))
    return export(exporter, formats, output)
