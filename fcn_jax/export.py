"""Deployment: a trained FCN as ONNX, a TF SavedModel and serialized StableHLO.

Every artifact holds one program, uint8 RGB images [N, H, W, 3] -> (classes uint8
[N, H, W], scores float32 [N, H, W, C]), with N, H and W symbolic: one artifact
serves photos of every size. The model's own normalisation is inside, and so is the
canvas rule of evaluation and predict.py (``input_pipeline.eval_canvas``): the program
pads each batch at the bottom and right with the mean colour to the canvas evaluation
would pad it to (``dataset.eval_pad_size`` or its next multiple; with
``dataset.eval_native_size`` its own size, at least ``models.MIN_INPUT_SIZE``), and
crops the outputs back. So a caller sends the photo's pixels as they are, whatever
its size, and gets what ``predict.py --config`` and ``eval.py`` compute. Scores are
the logits, or with flip test-time augmentation (``tta=True`` and the config's
``inference.flip``) the mean softmax probability of the two views.

Routes, all from the one traced JAX function (so the formats cannot disagree on
what the model is):
  * StableHLO: ``jax.export`` serialized; ``jax.export.deserialize(...).call`` runs
    it in any JAX, without fcn_jax.
  * SavedModel: ``jax2tf`` (native serialization: the same StableHLO inside an
    XlaCallModule op) with a ``serving_default`` signature for TF Serving; the
    weights are tf.Variables, not constants in the graph.
  * ONNX: fcn_jax.onnx_export translates the program's jaxpr into ONNX operators, its
    symbolic sizes into ONNX arithmetic on the input's shape (why not jax2onnx or
    jax2tf + tf2onnx: that module's docstring). Computed in float32 whatever
    ``model.dtype`` (ONNX Runtime has no bfloat16 convolutions), checked by
    ``onnx.checker`` in full and run once by ONNX Runtime before the export counts
    as done; the metadata is also in the file (``metadata_props``).

A folder is written beside the artifacts' metadata (``METADATA``), into a hidden
temporary folder (``TEMPORARY``) renamed to ``output`` only once every format
succeeded; folders get the umask's permissions, so a server running as another user
reads them. A temporary folder that a killed export left is removed by the next
export into the same parent folder.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import socket
import uuid

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcn_jax import (
    deployed,
    files,
    input_pipeline,
    models,
    normalization,
    resnet,
    steps,
    visualize,
)

FORMATS = ("onnx", "saved_model", "stablehlo")
FILENAMES = {"onnx": "model.onnx", "saved_model": "saved_model", "stablehlo": "model.stablehlo"}
METADATA = deployed.METADATA  # Where fcn_jax.deployed, which has no JAX, looks for it.
INPUT_NAME = "images"
OUTPUT_NAMES = ("classes", "scores")
SIGNATURE = "serving_default"
ONNX_COMPUTE_DTYPE = "float32"
# .<output>.<host>.<pid>.<random>.fcn_jax_export: whose it is, to know when it is stale.
TEMPORARY = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.fcn_jax_export$"
)


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
    own scoring) on the images padded to their eval canvas, cropped back; the classes
    are the scores' argmax. Sizes may be symbolic.
    """
    if config.model.num_classes > 256:
        raise ExportError(f"{config.model.num_classes} classes do not fit the uint8 class map")
    serving = serving_config(config, tta)
    scores_fn = steps.make_scores_fn(steps.build_model(serving), serving)
    pad_rgb = normalization.mean_rgb_uint8(serving.dataset.normalization)

    def fn(variables, images):
        n, h, w, _ = images.shape
        canvas = input_pipeline.eval_canvas(serving, h, w)
        scores = scores_fn(variables, pad_to_canvas(images, canvas, pad_rgb))
        scores = lax.slice(scores, (0, 0, 0, 0), (n, h, w, scores.shape[-1]))
        scores = scores.astype(jnp.float32)
        return jnp.argmax(scores, -1).astype(jnp.uint8), scores

    return fn


def pad_to_canvas(images, canvas, rgb):
    """uint8 images [N, H, W, 3] padded at the bottom and right to ``canvas`` with the colour
    ``rgb``, as transforms.pad_to pads eval images (each channel its own constant)."""
    _, h, w, _ = images.shape
    widths = ((0, 0, 0), (0, canvas[0] - h, 0), (0, canvas[1] - w, 0), (0, 0, 0))
    channels = [
        lax.pad(lax.slice_in_dim(images, c, c + 1, axis=3), np.uint8(value), widths)
        for c, value in enumerate(rgb)
    ]
    return lax.concatenate(channels, 3)


def input_spec() -> jax.ShapeDtypeStruct:
    """uint8 [n, h, w, 3] with symbolic n, h, w (each at least 1, as JAX assumes)."""
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape("n, h, w, 3"), jnp.uint8)


def host_variables(variables) -> dict:
    """``{"params", "batch_stats"}`` as numpy: sharded arrays of any mesh become plain weights."""
    return jax.tree.map(np.asarray, jax.device_get(dict(variables)))


def float32_variables(variables) -> dict:
    """The floating-point leaves as float32 (the ONNX graph's compute dtype)."""
    return jax.tree.map(
        lambda x: x.astype(np.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, variables
    )


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

    def stablehlo(self, path: pathlib.Path, metadata: dict) -> None:
        del metadata  # A serialized jax.export.Exported has no room for it: the JSON beside.
        exported = jax.export.export(jax.jit(self.bound()), platforms=self.platforms)(self.spec)
        path.write_bytes(exported.serialize())

    def saved_model(self, path: pathlib.Path, metadata: dict) -> None:
        import tensorflow as tf
        from jax.experimental import jax2tf

        weights = tf.nest.map_structure(tf.Variable, self.variables)
        converted = jax2tf.convert(
            self.fn,
            polymorphic_shapes=[None, "(n, h, w, 3)"],
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
        # TF Serving's place for files beside a model: the SavedModel carries its metadata.
        files.write_json(path / "assets.extra" / METADATA, metadata)

    def onnx(self, path: pathlib.Path, metadata: dict) -> None:
        import onnxruntime

        from fcn_jax import onnx_export

        config = self.config.copy_and_resolve_references()
        # fc6 as a convolution: ONNX Runtime has a fast one, unlike the 49 gathered views
        # the matmul form (faster on XLA CPU) becomes. float32: ONNX Runtime has no
        # bfloat16 convolutions (nor float16 ones on CPU).
        config.model.fc6_impl = "conv"
        config.model.dtype = ONNX_COMPUTE_DTYPE
        fn, variables = serving_fn(config, self.tta), float32_variables(self.variables)
        model = onnx_export.to_onnx(
            lambda images: fn(variables, images),
            self.spec,
            INPUT_NAME,
            OUTPUT_NAMES,
            dim_names={"n": "N", "h": "H", "w": "W"},
            metadata={deployed.METADATA_KEY: json.dumps(metadata)},
        )
        path.write_bytes(model)
        # Loaded and run once (a 1x1 photo: the padding too), as a user's runtime would.
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, {INPUT_NAME: np.zeros((1, 1, 1, 3), np.uint8)})

    def metadata(self, formats) -> dict:
        config = self.config
        c = config.model.num_classes
        scores = scores_are(config, self.tta)
        vgg = config.model.backbone not in resnet.BACKBONES
        meta = {
            "fcn_jax_version": _version(),
            "source": self.source,
            "model": {
                "backbone": config.model.backbone,
                "variant": config.model.variant if vgg else None,
                "geometry": config.model.geometry if vgg else None,
                "dtype": config.model.dtype,
            },
            "artifacts": {f: FILENAMES[f] for f in formats},
            "platforms": list(self.platforms),  # The StableHLO and SavedModel run on these only.
            "signature": SIGNATURE,
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", "H", "W", 3]},
            "outputs": {
                OUTPUT_NAMES[0]: {"dtype": "uint8", "shape": ["N", "H", "W"]},
                OUTPUT_NAMES[1]: {"dtype": "float32", "shape": ["N", "H", "W", c]},
            },
            "scores": scores,
            "test_time_augmentation": {"flip": scores == "probabilities"},
            "canvas": {  # input_pipeline.eval_canvas, applied inside the program.
                "native_size": bool(config.dataset.eval_native_size),
                "pad_size": list(config.dataset.eval_pad_size),
                "min_size": [models.MIN_INPUT_SIZE] * 2,
            },
            "normalization": normalization.describe(config.dataset.normalization),
            "class_names": list(visualize.class_names(config)),
            "palette": visualize.palette()[:c].tolist(),
        }
        if "onnx" in formats:
            from fcn_jax import onnx_export

            meta["onnx"] = {
                "opset": onnx_export.OPSET,
                "ir_version": onnx_export.IR_VERSION,
                "compute_dtype": ONNX_COMPUTE_DTYPE,
            }
        return meta


def _version() -> str:
    try:
        return importlib.metadata.version("fcn_jax")
    except importlib.metadata.PackageNotFoundError:  # A checkout: its pyproject.toml.
        pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
        return re.search(r'^version = "(.+)"', pyproject.read_text(), re.M).group(1)


def export(exporter: Exporter, formats, output) -> dict[str, str]:
    """Writes ``formats`` and the metadata into the new folder ``output``; {format: path}.

    All or nothing: on any failure the temporary folder and the parent folders made for
    ``output`` are removed, ``output`` is not created, and ExportError says in one line
    which format failed or which path cannot be written, and why.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format takes some of {','.join(FORMATS)}, not {formats}")
    output = pathlib.Path(output).absolute()
    try:
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise ExportError(f"{output} exists and is not an empty folder; choose a new --output")
        made = _make_folders(output.parent)
    except OSError as e:
        raise ExportError(_unwritable(output, e)) from e
    tmp = None
    try:
        remove_stale_temporaries(output.parent)
        tmp = output.parent / _temporary_name(output.name)
        tmp.mkdir()  # Not tempfile.mkdtemp: its 0700 would stay private after the rename.
        metadata = exporter.metadata(formats)
        for name in formats:
            try:
                getattr(exporter, name)(tmp / FILENAMES[name], metadata)
            except ImportError as e:
                raise ExportError(
                    f"{name}: its export tool is not installed ({e}); "
                    "pip install -r requirements-export.txt"
                ) from e
            except Exception as e:  # The exporter's own words, on one line.
                reason = " ".join(str(e).split())[:400]
                raise ExportError(f"{name} export failed: {type(e).__name__}: {reason}") from e
        files.write_json(tmp / METADATA, metadata)
        if output.exists():
            output.rmdir()
        os.replace(tmp, output)
    except OSError as e:
        raise ExportError(_unwritable(output, e)) from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not output.exists():
            for folder in reversed(made):
                _remove_if_empty(folder)
    return {f: str(output / FILENAMES[f]) for f in formats}


def _unwritable(output: pathlib.Path, e: OSError) -> str:
    where = pathlib.Path(e.filename) if e.filename else output
    if TEMPORARY.match(where.name):  # The hidden folder is ours: its parent is the user's.
        where = where.parent
    reason = e.strerror or str(e)
    return f"cannot write the export to {output}: {where}: {reason}; choose another --output"


def _make_folders(folder: pathlib.Path) -> list[pathlib.Path]:
    """Makes ``folder`` and its missing parents; the ones made, outermost first (none left
    made if one cannot be)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    try:
        for path in reversed(missing):
            path.mkdir()
            made.append(path)
    except OSError:
        for path in reversed(made):
            _remove_if_empty(path)
        raise
    return made


def _remove_if_empty(folder: pathlib.Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # Someone else's files are there now: theirs to keep.


def _owner() -> tuple[str, int]:
    return socket.gethostname().replace(".", "_"), os.getpid()


def _temporary_name(name: str) -> str:
    host, pid = _owner()
    return f".{name}.{host}.{pid}.{uuid.uuid4().hex[:8]}.fcn_jax_export"


def remove_stale_temporaries(parent: pathlib.Path) -> list[pathlib.Path]:
    """Removes the temporary folders in ``parent`` of exports that were killed (their
    process, on this host, is gone); the ones removed. Other hosts' are left alone."""
    host, _ = _owner()
    removed = []
    for path in parent.iterdir():
        match = TEMPORARY.match(path.name)
        if match and match["host"] == host and path.is_dir() and not _alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Another user's process.
    return True


def export_trained(
    config, workdir, which, formats, output, *, tta=False, platforms=("cpu",)
) -> dict[str, str]:
    """Exports the model evaluation.restore finds (the workdir's ``which`` checkpoint, or
    config.init_from's converted weights), as eval.py and predict.py would run it."""
    from fcn_jax import evaluation  # Compiles the training programs: only when exporting.

    restored = evaluation.restore(config, workdir, which)
    exporter = Exporter(config, restored.variables, restored.source, tta, tuple(platforms))
    return export(exporter, formats, output)
