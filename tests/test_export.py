"""export: every format gives the Flax model's classes and scores (logits in the tens, or flip
probabilities) on real photos of two sizes and on photos smaller than the network's minimum,
through one loaded artifact; a bfloat16 model too; StableHLO runs without fcn_jax; predict.py
gives the same masks with the exported model as with the JAX one; the metadata is complete and
travels inside model.onnx; a failed, killed or unwritable export leaves nothing, and the folder
follows the umask."""

import functools
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import deployed, export, input_pipeline, models, normalization, photos, steps
from tests.conftest import REPO, make_tiny_config
from tests.test_init_from import save_tiny_weights
from tests.test_photos import pick_sample

SMALL_CANVAS = dict(dataset__eval_pad_size=(64, 64))  # Photos pad to 64 or 128: cheap.
FAMILIES = {
    "vgg_same": dict(model__geometry="same", dataset__normalization="caffe", **SMALL_CANVAS),
    "vgg_caffe": dict(  # The reference protocol: each photo at its own size, 32x32 at least.
        model__geometry="caffe", dataset__normalization="caffe", dataset__eval_native_size=True
    ),
    "vgg_bn": dict(
        model__backbone="vgg16_bn",
        model__geometry="same",
        dataset__normalization="torch",
        **SMALL_CANVAS,
    ),
    "mindspore": dict(  # The MindSpore tutorial's network: BatchNorm after fc6/fc7, no biases.
        model__backbone="vgg16_bn",
        model__fc_batch_norm=True,
        model__geometry="same",
        dataset__normalization="mindspore",
        **SMALL_CANVAS,
    ),
    "resnet50": dict(
        model__backbone="resnet50",
        model__aux_loss_weight=0.0,
        model__dropout_rate=0.0,
        dataset__normalization="torch",
        **SMALL_CANVAS,
    ),
    "bfloat16": dict(
        model__geometry="same",
        model__dtype="bfloat16",
        dataset__normalization="caffe",
        **SMALL_CANVAS,
    ),
}
FLIP = dict(FAMILIES["vgg_same"], inference__flip=True)  # Exported with tta=True.
# `-m "not slow"` keeps vgg_same, bfloat16 and the flip; each exports all three formats.
SLOW = {"vgg_caffe", "vgg_bn", "mindspore", "resnet50"}
LOGIT_PEAK = 25.0  # The largest |logit| the test weights give, as trained nets do.
TOOLS = {"stablehlo": "jax", "saved_model": "tensorflow", "onnx": "onnxruntime"}


def _score_layer(name: str) -> bool:
    """The layers whose sum is the logits (upsampled): VGG's score_*, the ResNets' head."""
    return name.startswith("score") or name.endswith("_score")


def realistic_variables(config, images, seed=0):
    """Weights like a trained net's: He-scaled kernels (the upsampling stays bilinear),
    BatchNorm statistics away from 0 and 1, and the score layers scaled so that the logits of
    ``images`` peak at LOGIT_PEAK with every class about as likely: a score error shows, and
    flip probabilities are not all 0, 0.5 or 1."""
    model = steps.build_model(config)
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(seed), jnp.zeros((1, 32, 32, 3))
    )
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        layer, kind = path[-2].key, path[-1].key
        if kind == "kernel" and layer.startswith("upscore"):  # (2f, 2f, C, C)
            return models.bilinear_kernel(leaf.shape[0] // 2, leaf.shape[2])
        if kind == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        spread = {"bias": (0, 0.1), "mean": (0, 0.5)}
        if kind in spread:
            return rng.normal(*spread[kind], leaf.shape).astype(np.float32)
        low_high = {"scale": (0.5, 1.5), "var": (0.5, 2.0)}[kind]
        return rng.uniform(*low_high, leaf.shape).astype(np.float32)

    variables = {
        k: jax.tree_util.tree_map_with_path(draw, shapes.get(k, {}))
        for k in ("params", "batch_stats")
    }
    single_view = config.copy_and_resolve_references()
    single_view.inference.flip = False  # Logits, not flip probabilities.
    logits = np.asarray(FlaxModel(single_view)(variables, images)[1], np.float64)
    mean = logits.reshape(-1, logits.shape[-1]).mean(0)
    scale = LOGIT_PEAK / np.abs(logits - mean).max()
    layers = [name for name in variables["params"] if _score_layer(name)]
    for name in layers:
        layer = variables["params"][name]
        layer["kernel"] = (layer["kernel"] * scale).astype(np.float32)
        if "bias" in layer:  # Shifts each class's mean logit to about 0.
            layer["bias"] = ((layer["bias"] - mean / len(layers)) * scale).astype(np.float32)
    return variables


class FlaxModel:
    """The Flax model's classes and scores as eval.py and predict.py compute them: the jitted
    scores of the photos padded with the mean colour to their eval canvas, cropped back."""

    _jitted = {}  # Config -> its jitted scores: one compilation per config and canvas.

    def __init__(self, config):
        self.config = config
        key = config.to_json()
        if key not in self._jitted:
            self._jitted[key] = jax.jit(steps.make_scores_fn(steps.build_model(config), config))
        self.scores = self._jitted[key]

    def __call__(self, variables, images):
        n, h, w, _ = images.shape
        canvas = input_pipeline.eval_canvas(self.config, h, w)
        padded = np.empty((n, *canvas, 3), np.uint8)
        padded[:] = normalization.mean_rgb_uint8(self.config.dataset.normalization)
        padded[:, :h, :w] = images
        scores = np.asarray(self.scores(variables, padded), np.float32)[:, :h, :w]
        return scores.argmax(-1), scores


@pytest.fixture(scope="module")
def shots():
    """Batches of real photos: one shrunk to 56x100 (no side a multiple of 32), and a batch
    of two 20x24 crops, below the networks' 32x32 minimum."""
    landscape, portrait = (photos.load_photo(pick_sample(k)) for k in ("landscape", "portrait"))
    height, width = landscape.shape[:2]
    shrunk = photos.resize(landscape, height // 5, width // 5)
    crops = np.stack([shrunk[10:30, 30:54], portrait[200:220, 100:124]])
    assert shrunk.shape == (56, 100, 3) and crops.shape == (2, 20, 24, 3)
    return [shrunk[None], crops]


def load_stablehlo(path):
    return jax.export.deserialize(path.read_bytes()).call


def load_saved_model(path):
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures[export.SIGNATURE]

    def run(images):
        out = serve(**{export.INPUT_NAME: tf.constant(images)})
        return tuple(out[name] for name in export.OUTPUT_NAMES)

    return run


def load_onnx(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(list(export.OUTPUT_NAMES), {export.INPUT_NAME: images})


LOADERS = {"stablehlo": load_stablehlo, "saved_model": load_saved_model, "onnx": load_onnx}


class Exported:
    """One family's export of every format, and the Flax outputs to compare with."""

    def __init__(self, config, folder, shots, tta=False):
        self.config = config
        self.variables = realistic_variables(config, shots[0])
        self.folder = folder
        formats = [f for f in export.FORMATS if importlib.util.find_spec(TOOLS[f])]
        exporter = export.Exporter(config, self.variables, f"test {folder.name}", tta=tta)
        export.export(exporter, formats, folder)
        self.want = [FlaxModel(config)(self.variables, images) for images in shots]
        # ONNX computes in float32 whatever model.dtype: compared with the float32 model.
        self.want_float32 = self.want
        if config.model.dtype != "float32":
            f32 = config.copy_and_resolve_references()
            f32.model.dtype = "float32"
            self.want_float32 = [FlaxModel(f32)(self.variables, images) for images in shots]

    def path(self, fmt):
        return self.folder / export.FILENAMES[fmt]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shots):
    """family -> Exported, made once each, under umask 027 (test_export_follows_the_umask)."""
    made = {}

    def get(family):
        if family not in made:
            overrides = FLIP if family == "flip" else FAMILIES[family]
            config = make_tiny_config(**overrides)
            folder = tmp_path_factory.mktemp(family) / "export"
            umask = os.umask(0o027)
            try:
                made[family] = Exported(config, folder, shots, tta=family == "flip")
            finally:
                os.umask(umask)
        return made[family]

    return get


# (least fraction of equal classes, largest score difference) for float32 logits (of values
# in the tens), flip probabilities, and bfloat16 logits (a bfloat16 step at 32 is 0.25).
LOGITS, PROBABILITIES, BFLOAT16 = (0.999, 1e-3), (0.999, 2e-5), (0.98, 1.0)


def check_parity(run, want, shots, tolerance=LOGITS):
    """One loaded artifact, every batch of photos: the classes and scores within
    ``tolerance``. Returns (fraction of equal classes, largest score difference)."""
    worst_equal, worst_diff = 1.0, 0.0
    for images, (want_classes, want_scores) in zip(shots, want):
        classes, scores = (np.asarray(o) for o in run(images))
        assert classes.dtype == np.uint8 and classes.shape == images.shape[:3]
        assert scores.dtype == np.float32 and scores.shape == want_scores.shape
        assert len(np.unique(want_classes)) > 1, "the weights must predict several classes"
        equal = float(np.mean(classes == want_classes))
        diff = float(np.abs(scores - want_scores).max())
        worst_equal, worst_diff = min(worst_equal, equal), max(worst_diff, diff)
    scores = np.concatenate([s.ravel() for _, s in want])
    if tolerance is PROBABILITIES:  # Not all 0, 0.5 or 1: a difference would show.
        assert scores.min() >= 0 and scores.max() <= 1
        assert np.mean((scores > 0.01) & (scores < 0.99)) > 0.01
    else:
        assert 10 <= np.abs(scores).max() <= 100, "logits should be in the tens"
    assert worst_equal >= tolerance[0] and worst_diff <= tolerance[1], (worst_equal, worst_diff)
    return worst_equal, worst_diff


def family_params():
    return [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES]


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("family", family_params())
def test_artifact_matches_the_flax_model(family, fmt, exported, shots):
    """The parity table of the README: ``pytest tests/test_export.py -k matches -s``."""
    pytest.importorskip(TOOLS[fmt], reason=f"{TOOLS[fmt]} exports {fmt}")
    got = exported(family)
    onnx_float32 = fmt == "onnx" and got.want_float32 is not got.want  # ONNX computes in float32.
    bfloat16 = got.config.model.dtype == "bfloat16" and not onnx_float32
    want = got.want_float32 if onnx_float32 else got.want
    tolerance = BFLOAT16 if bfloat16 else LOGITS
    equal, diff = check_parity(LOADERS[fmt](got.path(fmt)), want, shots, tolerance)
    peak = max(float(np.abs(scores).max()) for _, scores in want)
    line = f"{family} {fmt}: classes equal {equal:.5f}, largest logit difference {diff:.1e}"
    line += f" (logits up to {peak:.1f})"
    if onnx_float32:
        agree = np.mean([np.mean(a[0] == b[0]) for a, b in zip(got.want, want)])
        line += f"; float32 Flax: the bfloat16 one's classes on {agree:.4f} of pixels"
    print(line)


def test_flip_tta_exports_the_mean_probability(exported, shots):
    """The flip runs the model twice (an unrolled lax.map in ONNX); its weights are stored
    once; the probabilities are compared as probabilities."""
    got = exported("flip")
    assert json.loads((got.folder / export.METADATA).read_text())["scores"] == "probabilities"
    for fmt in export.FORMATS:
        if importlib.util.find_spec(TOOLS[fmt]):
            run = LOADERS[fmt](got.path(fmt))
            equal, diff = check_parity(run, got.want, shots, PROBABILITIES)
            print(
                f"flip {fmt}: classes equal {equal:.5f}, largest probability difference {diff:.1e}"
            )
    if importlib.util.find_spec("onnxruntime"):
        one_view = exported("vgg_same").path("onnx")
        assert got.path("onnx").stat().st_size < 1.2 * one_view.stat().st_size


def test_metadata_describes_the_artifacts_and_travels_inside_them(exported):
    pytest.importorskip("onnxruntime", reason="requirements-export.txt: the ONNX artifact")
    got = exported("bfloat16")
    meta = json.loads((got.folder / export.METADATA).read_text())
    assert meta["artifacts"] == {
        "onnx": "model.onnx",
        "saved_model": "saved_model",
        "stablehlo": "model.stablehlo",
    }
    assert meta["model"]["dtype"] == "bfloat16" and meta["platforms"] == ["cpu"]
    assert meta["onnx"] == {"opset": 18, "ir_version": 8, "compute_dtype": "float32"}
    assert meta["canvas"] == {"native_size": False, "pad_size": [64, 64], "min_size": [32, 32]}
    assert meta["scores"] == "logits"
    assert meta["class_names"] == ["background", "circle", "square", "triangle"]
    assert meta["palette"][1] == [128, 0, 0]
    assert meta["normalization"]["mode"] == "caffe" and meta["normalization"]["order"] == "BGR"
    assert meta["normalization"]["pad_rgb"] == [123, 117, 104]
    assert meta["outputs"]["scores"]["shape"] == ["N", "H", "W", got.config.model.num_classes]
    assert meta["source"] == "test export"

    import onnx

    model = onnx.load(got.path("onnx"), load_external_data=False)
    assert model.ir_version == 8
    assert json.loads({p.key: p.value for p in model.metadata_props}["fcn_jax_export"]) == meta
    carried = got.path("saved_model") / "assets.extra" / export.METADATA
    assert json.loads(carried.read_text()) == meta


def test_deployed_runs_an_artifact_copied_alone(exported, shots, tmp_path):
    """model.onnx without the JSON beside it: its own metadata suffices. The runtime says which
    execution provider it took; a batch of none is none (the ONNX file's too: the StableHLO
    and SavedModel refuse N = 0 in JAX's words); a photo of no pixels, or an export made
    before the programs padded photos themselves, is one line."""
    pytest.importorskip("onnxruntime", reason="requirements-export.txt: the ONNX artifact")
    got = exported("vgg_same")
    shutil.copy(got.path("onnx"), tmp_path / "model.onnx")
    model = deployed.Deployed(tmp_path / "model.onnx")
    assert model.class_names == ("background", "circle", "square", "triangle")
    assert model.source.endswith("on ONNX Runtime CPUExecutionProvider")
    classes = model(shots[1])
    assert np.mean(classes == got.want[1][0]) >= 0.999
    assert model(np.zeros((0, 20, 24, 3), np.uint8)).shape == (0, 20, 24)
    none = load_onnx(got.path("onnx"))(np.zeros((0, 20, 24, 3), np.uint8))  # The file too.
    assert [o.shape for o in none] == [(0, 20, 24), (0, 20, 24, 4)]
    for bad in (np.zeros((1, 0, 24, 3), np.uint8), np.zeros((1, 20, 24, 3), np.float32)):
        with pytest.raises(ValueError, match=r"^(images of 0x24|an exported FCN takes uint8)"):
            model(bad)
    meta = json.loads((got.folder / export.METADATA).read_text())
    del meta["canvas"]  # As exports before the program padded photos itself.
    (tmp_path / export.METADATA).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="exported by an older fcn_jax"):
        deployed.Deployed(tmp_path / "model.onnx")


def test_a_saved_model_for_cuda_alone_is_one_line_without_a_gpu(exported, tmp_path):
    """Lowered for cuda only (--platforms=cuda), it cannot run on a CPU: said before loading."""
    pytest.importorskip("tensorflow", reason="the SavedModel artifact")
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    got = exported("vgg_same")
    shutil.copytree(got.path("saved_model"), tmp_path / "saved_model")
    meta = json.loads((got.folder / export.METADATA).read_text())
    (tmp_path / export.METADATA).write_text(json.dumps(dict(meta, platforms=["cuda"])))
    with pytest.raises(ValueError, match="exported for cuda only .* --platforms=cpu,cuda"):
        deployed.Deployed(tmp_path / "saved_model")
    assert deployed.Deployed(got.path("saved_model")).runtime == "TensorFlow /CPU:0"


def test_onnx_runs_on_the_fastest_provider_installed():
    cpu, cuda, trt = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
    assert deployed.onnx_providers(["AzureExecutionProvider", cpu]) == [cpu]
    assert deployed.onnx_providers([cpu, cuda, "AzureExecutionProvider"]) == [cuda, cpu]
    assert deployed.onnx_providers([cpu, cuda, trt]) == [trt, cuda, cpu]


def test_export_follows_the_umask(exported):
    """Folders and files get what the umask (027 here) leaves: a serving group reads them."""
    got = exported("vgg_same")
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [got.folder, *got.folder.rglob("*")]}
    for path, mode in modes.items():
        assert mode == (0o750 if path.is_dir() else 0o640), (path, oct(mode))


def test_stablehlo_runs_without_fcn_jax(exported, shots, tmp_path):
    """A fresh interpreter with only JAX deserializes and calls the artifact; fcn_jax is never
    imported (not on its path at all)."""
    got = exported("vgg_same")
    np.save(tmp_path / "images.npy", shots[0])
    script = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(REPO)!r})]
        import jax, numpy as np
        exported = jax.export.deserialize(open({str(got.path("stablehlo"))!r}, "rb").read())
        classes, scores = exported.call(np.load({str(tmp_path / "images.npy")!r}))
        np.save({str(tmp_path / "classes.npy")!r}, np.asarray(classes))
        assert not any(m.startswith("fcn_jax") for m in sys.modules), "imported fcn_jax"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    assert np.mean(np.load(tmp_path / "classes.npy") == got.want[0][0]) >= 0.999


def test_multi_scale_tta_is_refused(tiny_config):
    config = tiny_config(inference__scales=(0.5, 1.0))
    with pytest.raises(export.ExportError, match="only flip"):
        export.serving_config(config, tta=True)
    assert export.serving_config(config, tta=False).inference.scales == (1.0,)


def _exporter(tiny_config):
    """An Exporter whose formats are never run (tests of export's folder handling)."""
    return export.Exporter(tiny_config(), {"params": {}, "batch_stats": {}}, "test")


def test_a_failed_format_writes_nothing(tiny_config, tmp_path, monkeypatch):
    """Neither the artifacts nor the parent folders made for them stay."""

    def fail(self, path, metadata):
        path.write_text("half an artifact")
        raise RuntimeError("no op for layer fc6")

    monkeypatch.setattr(export.Exporter, "saved_model", fail)
    monkeypatch.setattr(export.Exporter, "stablehlo", lambda self, path, meta: path.touch())
    (tmp_path / "kept").mkdir()
    with pytest.raises(export.ExportError, match="saved_model export failed: .*layer fc6"):
        export.export(_exporter(tiny_config), ["stablehlo", "saved_model"], tmp_path / "a/b/out")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_an_unwritable_output_is_one_line(where, tiny_config, tmp_path):
    """--output=/proc/... (refused even to root) or under a file: ExportError (the CLI's
    one-line error) naming the path, and nothing made."""
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "out" if where == "under_a_file" else "/proc/fcn_jax_out/x"
    with pytest.raises(export.ExportError) as raised:
        export.export(_exporter(tiny_config), ["stablehlo"], output)
    message = str(raised.value)
    assert "\n" not in message and f"cannot write the export to {output}" in message, message
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_killed_export_leaves_nothing_after_the_next(tiny_config, tmp_path, monkeypatch):
    """An export killed (SIGKILL) while writing leaves its temporary folder; the next export
    into the same folder removes it, and leaves a running export's alone."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from configs import demo
        from fcn_jax import export

        def die(self, path, metadata):
            path.write_bytes(bytes(1 << 20))
            os.kill(os.getpid(), signal.SIGKILL)

        export.Exporter.stablehlo = die
        exporter = export.Exporter(demo.get_config(), {{"params": {{}}}}, "killed")
        export.export(exporter, ["stablehlo"], {str(tmp_path / "killed")!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=120)
    assert done.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert export.TEMPORARY.match(left.name) and (left / "model.stablehlo").is_file()
    running = tmp_path / export._temporary_name("running")  # This process's: alive.
    running.mkdir()
    monkeypatch.setattr(export.Exporter, "stablehlo", lambda self, path, meta: path.touch())
    export.export(_exporter(tiny_config), ["stablehlo"], tmp_path / "next")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["next", running.name])


def test_predict_gives_the_same_masks_with_the_exported_and_the_jax_model(
    exported, shots, tmp_path
):
    """predict.py --model (ONNX, SavedModel) and --config on photos whose sides are not
    multiples of 32, one of them below the minimum: one canvas rule, the same masks."""
    from PIL import Image

    from fcn_jax import prediction

    got = exported("vgg_same")
    config = got.config.copy_and_resolve_references()
    config.init_from = str(tmp_path / "weights")
    save_tiny_weights(
        config.init_from, got.variables["params"], normalization="caffe", geometry="same"
    )
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, images in enumerate(shots):
        Image.fromarray(images[0]).save(folder / f"shot{i}.png")
    masks = {}
    for fmt in ("jax", "onnx", "saved_model"):
        if fmt != "jax" and not importlib.util.find_spec(TOOLS[fmt]):
            continue
        model = None if fmt == "jax" else str(got.path(fmt))
        summary = prediction.predict(
            None if model else config, None, "best", [str(folder)], str(tmp_path / fmt), model=model
        )
        assert summary.failed == [] and len(summary.written) == len(shots)
        masks[fmt] = [np.asarray(Image.open(tmp_path / fmt / f"shot{i}.png")) for i in range(2)]
        assert (tmp_path / fmt / "shot0_overlay.jpg").is_file()
    for i, images in enumerate(shots):
        assert masks["jax"][i].shape == images.shape[1:3]
        assert np.mean(masks["jax"][i] == got.want[i][0][0]) >= 0.999
        for fmt in masks:
            assert np.mean(masks[fmt][i] == masks["jax"][i]) >= 0.999, (fmt, i)
    # Each photo at its own size (what --model did before) gives other masks.
    native = got.config.copy_and_resolve_references()
    native.dataset.eval_native_size = True
    alone = FlaxModel(native)(got.variables, shots[0])[0][0]
    assert np.mean(alone != masks["jax"][0]) > 0.01


def test_predict_runs_an_onnx_model_without_jax_or_tensorflow(exported, shots, tmp_path):
    """predict.py --model=model.onnx with JAX, TensorFlow and the training libraries made
    unimportable: the masks are still the Flax model's classes."""
    pytest.importorskip("onnxruntime", reason="requirements-export.txt: the ONNX artifact")
    from PIL import Image

    got = exported("vgg_same")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(shots[1][1]).save(folder / "shot.png")
    blocked = ["jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets"]
    script = textwrap.dedent(
        f"""
        import runpy, sys
        for name in {blocked!r}:
            sys.modules[name] = None  # "import name" raises ImportError.
        sys.argv = ["predict.py", "--model={got.path("onnx")}", "--output={tmp_path / "out"}",
                    "{folder}"]
        runpy.run_path("predict.py", run_name="__main__")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on ONNX Runtime CPUExecutionProvider" in done.stdout
    mask = np.asarray(Image.open(tmp_path / "out" / "shot.png"))
    assert np.mean(mask == got.want[1][0][1]) >= 0.999


@pytest.mark.slow
def test_full_size_fcn8s_exports_to_onnx(tiny_config, shots, tmp_path):
    """The real VGG-16 FCN-8s (134M parameters, caffe geometry, each photo at its own size as
    the reference protocol runs it), with realistic weights: the ONNX graph gives the Flax
    model's classes and logits on a real photo."""
    pytest.importorskip("onnxruntime", reason="requirements-export.txt: the ONNX artifact")
    config = tiny_config(**FAMILIES["vgg_caffe"])
    config.model.base_width, config.model.fc_width = 64, 4096
    variables = realistic_variables(config, shots[0])
    out = tmp_path / "export"
    export.export(export.Exporter(config, variables, "full size"), ["onnx"], out)
    want = [FlaxModel(config)(variables, shots[0])]
    check_parity(load_onnx(out / "model.onnx"), want, shots[:1])
