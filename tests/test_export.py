"""export: every format gives the Flax model's classes and scores on real photos of two sizes
through one loaded artifact; StableHLO runs without fcn_jax; a failed export writes nothing."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import export, onnx_export, photos, steps
from tests.test_photos import pick_sample

FAMILIES = {
    "vgg_same": dict(model__geometry="same", dataset__normalization="caffe"),
    "vgg_caffe": dict(model__geometry="caffe", dataset__normalization="caffe"),
    "vgg_bn": dict(
        model__backbone="vgg16_bn", model__geometry="same", dataset__normalization="torch"
    ),
    "mindspore": dict(  # The MindSpore tutorial's network: BatchNorm after fc6/fc7, no biases.
        model__backbone="vgg16_bn",
        model__fc_batch_norm=True,
        model__geometry="same",
        dataset__normalization="mindspore",
    ),
    "resnet50": dict(
        model__backbone="resnet50",
        model__aux_loss_weight=0.0,
        model__dropout_rate=0.0,
        dataset__normalization="torch",
    ),
}
# `-m "not slow"` keeps one family; each exports all three formats in about 10 s here.
SLOW = {"vgg_caffe", "vgg_bn", "mindspore", "resnet50"}


def trained_looking(config, seed=0):
    """Variables with every layer random, the score layers too (freshly initialised ones
    predict class 0 everywhere), and BatchNorm statistics away from 0 and 1."""
    model = steps.build_model(config)
    init = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    rng = np.random.default_rng(seed)

    def jitter(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        scale = 0.3 if "mean" in name or "bias" in name else 1.0
        return np.asarray(leaf) + scale * rng.normal(size=leaf.shape).astype(np.float32)

    return {
        "params": jax.tree_util.tree_map_with_path(jitter, init["params"]),
        "batch_stats": jax.tree_util.tree_map_with_path(jitter, init.get("batch_stats", {})),
    }


@pytest.fixture(scope="module")
def real_photos():
    """A real landscape and a real portrait photo, shrunk: two sizes, neither a multiple of 32."""
    shots = []
    for layout in ("landscape", "portrait"):
        pixels = photos.load_photo(pick_sample(layout))
        height, width = pixels.shape[:2]
        shots.append(photos.resize(pixels, height // 5, width // 5)[None])
    assert shots[0].shape != shots[1].shape
    return shots


def flax_outputs(config, variables, images, flip=False):
    """The Flax model's scores and classes, as eval.py's steps compute them."""
    config.inference.flip = flip
    scores = steps.make_scores_fn(steps.build_model(config), config)(variables, images)
    scores = np.asarray(scores, np.float32)
    return scores.argmax(-1), scores


def run_stablehlo(path, images):
    return jax.export.deserialize(path.read_bytes()).call(images)


def run_saved_model(path, images):
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures[export.SIGNATURE]
    out = serve(**{export.INPUT_NAME: tf.constant(images)})
    return tuple(out[name] for name in export.OUTPUT_NAMES)


def run_onnx(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(export.OUTPUT_NAMES), {export.INPUT_NAME: images})


RUNNERS = {"stablehlo": run_stablehlo, "saved_model": run_saved_model, "onnx": run_onnx}
TOOLS = {"stablehlo": "jax", "saved_model": "tensorflow", "onnx": "onnxruntime"}


def check_parity(config, variables, artifact, run, shots, flip=False):
    """One loaded artifact, photos of two sizes: classes on >= 99.9% of pixels, scores within
    1e-4 of the largest score. Returns (fraction of equal classes, relative difference)."""
    worst_equal, worst_diff = 1.0, 0.0
    for images in shots:
        classes, scores = (np.asarray(o) for o in run(artifact, images))
        want_classes, want_scores = flax_outputs(config, variables, images, flip)
        assert classes.dtype == np.uint8 and classes.shape == images.shape[:3]
        assert scores.dtype == np.float32 and scores.shape == want_scores.shape
        assert len(np.unique(want_classes)) > 1, "the weights must predict several classes"
        equal = float(np.mean(classes == want_classes))
        diff = float(np.abs(scores - want_scores).max() / np.abs(want_scores).max())
        worst_equal, worst_diff = min(worst_equal, equal), max(worst_diff, diff)
    assert worst_equal >= 0.999 and worst_diff <= 1e-4, (worst_equal, worst_diff)
    return worst_equal, worst_diff


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (config, variables, output folder of every format), once each."""
    made = {}

    def get(family, tiny_config):
        if family not in made:
            config = tiny_config(**FAMILIES[family])
            variables = trained_looking(config)
            out = tmp_path_factory.mktemp(family) / "export"
            exporter = export.Exporter(config, variables, f"test {family}")
            formats = [f for f in export.FORMATS if importlib.util.find_spec(TOOLS[f])]
            export.export(exporter, formats, out)
            made[family] = config, variables, out
        return made[family]

    return get


def family_params():
    return [
        pytest.param(f, marks=pytest.mark.slow) if f in SLOW else pytest.param(f) for f in FAMILIES
    ]


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("family", family_params())
def test_artifact_matches_the_flax_model(family, fmt, exported, tiny_config, real_photos):
    pytest.importorskip(TOOLS[fmt], reason=f"{TOOLS[fmt]} exports {fmt}")
    config, variables, out = exported(family, tiny_config)
    equal, diff = check_parity(
        config, variables, out / export.FILENAMES[fmt], RUNNERS[fmt], real_photos
    )
    print(f"{family} {fmt}: classes equal {equal:.5f}, max relative score diff {diff:.2e}")


def test_metadata_describes_the_artifacts(exported, tiny_config):
    pytest.importorskip("onnxruntime", reason="requirements-export.txt: the ONNX artifact")
    config, _, out = exported("vgg_same", tiny_config)
    meta = json.loads((out / export.METADATA).read_text())
    assert meta["artifacts"] == {
        "onnx": "model.onnx",
        "saved_model": "saved_model",
        "stablehlo": "model.stablehlo",
    }
    assert meta["scores"] == "logits" and meta["min_input_size"] == [32, 32]
    assert meta["class_names"] == ["background", "circle", "square", "triangle"]
    assert meta["palette"][1] == [128, 0, 0]
    assert meta["normalization"]["mode"] == "caffe" and meta["normalization"]["order"] == "BGR"
    assert meta["normalization"]["pad_rgb"] == [123, 117, 104]
    assert meta["outputs"]["scores"]["shape"] == ["N", "H", "W", config.model.num_classes]
    assert meta["source"] == "test vgg_same"


def test_stablehlo_runs_without_fcn_jax(exported, tiny_config, real_photos, tmp_path):
    """A fresh interpreter with only JAX deserializes and calls the artifact; fcn_jax is never
    imported (not on its path at all)."""
    config, variables, out = exported("vgg_same", tiny_config)
    images = real_photos[0]
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(out.parent)!r})]
        import jax, numpy as np
        exported = jax.export.deserialize(open({str(out / "model.stablehlo")!r}, "rb").read())
        classes, scores = exported.call(np.load({str(tmp_path / "images.npy")!r}))
        np.save({str(tmp_path / "classes.npy")!r}, np.asarray(classes))
        assert not any(m.startswith("fcn_jax") for m in sys.modules), "imported fcn_jax"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    want_classes, _ = flax_outputs(config, variables, images)
    assert np.mean(np.load(tmp_path / "classes.npy") == want_classes) >= 0.999


def test_flip_tta_exports_the_mean_probability(exported, tiny_config, real_photos, tmp_path):
    """The flip runs the model twice (an unrolled lax.map in ONNX); its weights are stored once."""
    config = tiny_config(**FAMILIES["vgg_same"], inference__flip=True)
    variables = trained_looking(config, seed=1)
    out = tmp_path / "export"
    formats = [f for f in ("stablehlo", "onnx") if importlib.util.find_spec(TOOLS[f])]
    export.export(export.Exporter(config, variables, "test", tta=True), formats, out)
    assert json.loads((out / export.METADATA).read_text())["scores"] == "probabilities"
    for fmt in formats:
        path = out / export.FILENAMES[fmt]
        check_parity(config, variables, path, RUNNERS[fmt], real_photos, flip=True)
    if "onnx" in formats:
        one_view = exported("vgg_same", tiny_config)[2] / "model.onnx"
        assert (out / "model.onnx").stat().st_size < 1.2 * one_view.stat().st_size


def test_multi_scale_tta_is_refused(tiny_config):
    config = tiny_config(inference__scales=(0.5, 1.0))
    with pytest.raises(export.ExportError, match="only flip"):
        export.serving_config(config, tta=True)
    assert export.serving_config(config, tta=False).inference.scales == (1.0,)


def test_a_failed_format_writes_nothing(tiny_config, tmp_path, monkeypatch):
    def fail(self, path):
        path.write_text("half an artifact")
        raise RuntimeError("no op for layer fc6")

    monkeypatch.setattr(export.Exporter, "saved_model", fail)
    config = tiny_config()
    exporter = export.Exporter(config, trained_looking(config), "test")
    with pytest.raises(export.ExportError, match="saved_model export failed: .*layer fc6"):
        export.export(exporter, ["stablehlo", "saved_model"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_predict_segments_with_an_exported_model(exported, tiny_config, real_photos, tmp_path):
    """predict.py --model: masks of the photos' size equal to the Flax model's classes, and
    overlays, from the SavedModel alone."""
    from PIL import Image

    from fcn_jax import prediction

    config, variables, out = exported("vgg_same", tiny_config)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, images in enumerate(real_photos):
        Image.fromarray(images[0]).save(folder / f"shot{i}.png")
    summary = prediction.predict(
        config, None, "best", [str(folder)], str(tmp_path / "out"), model=str(out / "saved_model")
    )
    assert summary.failed == [] and len(summary.written) == 2
    for i, images in enumerate(real_photos):
        mask = np.asarray(Image.open(tmp_path / "out" / f"shot{i}.png"))
        want, _ = flax_outputs(config, variables, images)
        assert mask.shape == images.shape[1:3] and np.mean(mask == want[0]) >= 0.999
        assert (tmp_path / "out" / f"shot{i}_overlay.jpg").is_file()


def test_predict_runs_an_onnx_model_without_jax_or_tensorflow(
    exported, tiny_config, real_photos, tmp_path
):
    """predict.py --model=model.onnx with JAX, TensorFlow and the training libraries made
    unimportable: the masks are still the Flax model's classes."""
    pytest.importorskip("onnxruntime", reason="requirements-export.txt: the ONNX artifact")
    from PIL import Image

    config, variables, out = exported("vgg_same", tiny_config)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(real_photos[1][0]).save(folder / "shot.png")
    blocked = ["jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets"]
    script = textwrap.dedent(
        f"""
        import runpy, sys
        for name in {blocked!r}:
            sys.modules[name] = None  # "import name" raises ImportError.
        sys.argv = ["predict.py", "--model={out / "model.onnx"}", "--output={tmp_path / "out"}",
                    "{folder}"]
        runpy.run_path("predict.py", run_name="__main__")
        """
    )
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mask = np.asarray(Image.open(tmp_path / "out" / "shot.png"))
    want, _ = flax_outputs(config, variables, real_photos[1])
    assert np.mean(mask == want[0]) >= 0.999


def test_onnx_names_a_primitive_it_cannot_translate():
    spec = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    with pytest.raises(NotImplementedError, match="'cumsum' .*test_export.py"):
        onnx_export.to_onnx(lambda x: jnp.cumsum(x, 0), spec, "x", ["y"])


@pytest.mark.slow
def test_full_size_fcn8s_exports_to_onnx(tiny_config, real_photos, tmp_path):
    """The real VGG-16 FCN-8s (134M parameters, caffe geometry), its score layers random:
    the ONNX graph gives the Flax model's classes on photos of two sizes."""
    pytest.importorskip("onnxruntime", reason="requirements-export.txt: the ONNX artifact")
    config = tiny_config(model__geometry="caffe", dataset__normalization="caffe")
    config.model.base_width, config.model.fc_width = 64, 4096
    model = steps.build_model(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    rng = np.random.default_rng(0)
    for name, layer in params.items():
        if name.startswith("score"):
            layer["kernel"] = rng.normal(0, 0.05, layer["kernel"].shape).astype(np.float32)
    variables = {"params": params, "batch_stats": {}}
    out = tmp_path / "export"
    export.export(export.Exporter(config, variables, "full size"), ["onnx"], out)
    check_parity(config, variables, out / "model.onnx", run_onnx, real_photos)
