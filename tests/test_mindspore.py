"""The MindSpore FCN-8s tutorial's checkpoints, read without MindSpore, and its training.

tests/data/mindspore_fcn8s_tiny.* were written by MindSpore 2.10 itself
(tests/data/make_mindspore_fixture.py): the tutorial's network at narrow widths, its
checkpoint, MindSpore's own logits for two inputs, and a train-mode forward pass and
three training steps of the model zoo's kind.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mindspore_fixtures import encode

from fcn_jax import convert, evaluation, init_from, models, optim, sharding, steps
from fcn_jax.normalization import normalize
from fcn_jax.weights import mindspore_file
from tests.conftest import convert_cli

DATA = pathlib.Path(__file__).resolve().parent / "data"
CKPT = DATA / "mindspore_fcn8s_tiny.ckpt"
TRAIN = DATA / "mindspore_fcn8s_tiny_train.npz"


def test_logits_equal_mindspores_own():
    model, variables = convert.from_mindspore_checkpoint(CKPT, num_classes=3)
    arrays = np.load(DATA / "mindspore_fcn8s_tiny.npz")
    for name in ("wide", "tall"):
        x = jnp.asarray(arrays[f"{name}_input"].transpose(0, 2, 3, 1))
        expected = arrays[f"{name}_logits"].transpose(0, 2, 3, 1)
        out = np.asarray(model.apply(variables, x, train=False))
        atol = 1e-4 * np.abs(expected).max()
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=atol, err_msg=name)


def relative_errors(actual, expected) -> dict[str, float]:
    """{path: max |actual - expected| / max |expected|} over two trees of arrays."""
    return {
        sharding.path_str(path): float(np.abs(np.asarray(a) - e).max() / np.abs(e).max())
        for (path, a), e in zip(
            jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
        )
    }


def mindspore_variables(arrays, prefix: str) -> dict:
    """The fixture's checkpoint with the tensors ``prefix``* of ``arrays`` put in, converted."""
    tensors = mindspore_file.read(CKPT)
    for key, value in arrays.items():
        if key.startswith(prefix):
            tensors[key.removeprefix(prefix)] = value
    return convert.from_mindspore_checkpoint(tensors, num_classes=3)[1]


def test_train_mode_and_three_sgd_steps_match_mindspores_own(tiny_config):
    """BatchNorm in training, as MindSpore computes it: logits by the batch statistics,
    moving statistics updated with the unbiased variance, then 3 steps of nn.Momentum."""
    model, start = convert.from_mindspore_checkpoint(CKPT, num_classes=3)
    arrays = dict(np.load(TRAIN))
    lr, momentum, weight_decay, num_steps = arrays["lr_momentum_weight_decay_steps"]
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = forward(start, normalize(arrays["images"], "mindspore"))
    expected = mindspore_variables(arrays, "forward/")
    errors = {
        "logits": relative_errors(logits, arrays["logits"].transpose(0, 2, 3, 1))[""],
        **relative_errors(updates["batch_stats"], expected["batch_stats"]),
    }
    assert max(errors.values()) < 1e-4, errors

    config = tiny_mindspore_config(
        tiny_config,
        dataset__normalization="mindspore",
        optimizer__name="sgd",
        optimizer__schedule="constant",
        optimizer__learning_rate=float(lr),
        optimizer__momentum=float(momentum),
        optimizer__weight_decay=float(weight_decay),  # On the kernels: not gamma, not beta.
    )
    tx, _ = optim.make_optimizer(config.optimizer, config.num_train_steps, False)
    state = steps.TrainState(0, start["params"], start["batch_stats"], tx.init(start["params"]))
    train_step = jax.jit(steps.make_train_step(model, tx, config))
    batch = {"image": arrays["images"], "label": arrays["labels"]}
    for _ in range(int(num_steps)):
        state, _ = train_step(state, batch, jax.random.key(0))
    expected = mindspore_variables(arrays, "steps/")
    errors = relative_errors(steps.variables(state), expected)
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda e: -e[1])[:5]
    # Equal updates, not only nearly unchanged tensors: the moves agree too.
    ours, theirs = (jax.tree.map(np.subtract, v, start) for v in (steps.variables(state), expected))
    update_errors = relative_errors(ours, theirs)
    assert max(update_errors.values()) < 1e-2, sorted(update_errors.items(), key=lambda e: -e[1])


def test_the_test_writer_writes_what_mindspore_writes():
    """The checkpoints the other tests write hold exactly MindSpore's bytes."""
    tensors = mindspore_file.read(CKPT)
    assert len(tensors) == 81 and tensors["upscore8.weight"].shape == (3, 3, 16, 16)
    assert encode(tensors) == CKPT.read_bytes()


def tiny_mindspore_config(tiny_config, **overrides):
    """The fixture's network as a config: the tutorial's, at the fixture's widths."""
    fields = {
        "model__backbone": "vgg16_bn",
        "model__fc_batch_norm": True,
        "model__dropout_rate": 0.0,
        "model__base_width": 2,
        "model__fc_width": 8,
        "model__num_classes": 3,
        "dataset__normalization": "",
    }
    return tiny_config(**{**fields, **overrides})


def save_fixture_weights(path):
    """The fixture as converted weights for init_from, as --layout=mindspore writes them;
    returns (model, variables)."""
    model, variables = convert.from_mindspore_checkpoint(CKPT, num_classes=3)
    head = {"geometry": "same", "at_once": False}
    convert.save_weights(
        str(path), variables, variant="fcn8s", num_classes=3, normalization="mindspore", **head
    )
    return model, variables


def test_cli_writes_weights_that_eval_runs_and_training_starts_from(tiny_config, tmp_path):
    result = convert_cli(
        "--layout=mindspore", "--num_classes=3", f"--input={CKPT}", f"--output={tmp_path / 'w'}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _, expected = convert.from_mindspore_checkpoint(CKPT, num_classes=3)
    weights, meta = convert.load_weights(str(tmp_path / "w"))
    assert (meta["normalization"], meta["backbone"], meta["fc_batch_norm"]) == (
        "mindspore",
        "vgg16_bn",
        True,
    )
    assert (meta["geometry"], meta["at_once"], meta["variant"]) == ("same", False, "fcn8s")
    jax.tree.map(np.testing.assert_array_equal, weights, expected)

    config = tiny_mindspore_config(tiny_config, init_from=str(tmp_path / "w"))
    restored = evaluation.restore(config, str(tmp_path / "run"))
    assert config.dataset.normalization == "mindspore"  # What the weights expect.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.variables), expected)

    # The backbone alone, with its BatchNorm statistics, into a 4-class model.
    config = tiny_mindspore_config(
        tiny_config,
        init_from=str(tmp_path / "w"),
        init_layers=models.BACKBONE_LAYERS,
        model__num_classes=4,
    )
    programs = steps.compile_steps(config, sharding.make_mesh((1, 1), jax.devices()[:1]))
    state = init_from.initialise(programs.init(jax.random.key(0)), programs, config)
    for name in models.BACKBONE_LAYERS:
        norm = models.batch_norm_name(name)
        for collection, layer in (("params", name), ("params", norm), ("batch_stats", norm)):
            got = jax.device_get(getattr(state, collection)[layer])
            jax.tree.map(np.testing.assert_array_equal, got, expected[collection][layer])
    assert not np.any(jax.device_get(state.params["score_fr"]["kernel"]))  # Starts at zero.


def test_cli_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.ckpt").write_text("not weights\n")
    result = convert_cli(
        "--layout=mindspore", f"--input={tmp_path / 'notes.ckpt'}", f"--output={tmp_path / 'w'}"
    )
    assert result.returncode != 0
    assert "notes.ckpt is not a MindSpore checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_weights_of_another_backbone_are_refused_naming_the_field(tiny_config, tmp_path):
    """MindSpore tutorial weights (BatchNorm everywhere) never start a plain VGG-16 FCN."""
    save_fixture_weights(tmp_path / "w")
    config = tiny_mindspore_config(
        tiny_config, init_from=str(tmp_path / "w"), model__fc_batch_norm=False
    )
    with pytest.raises(
        convert.ConversionError,
        match=r"model.fc_batch_norm=True.*config has model.fc_batch_norm=False",
    ):
        evaluation.restore(config, str(tmp_path / "run"))
    config.model.backbone, config.model.fc_batch_norm = "vgg16", False
    with pytest.raises(convert.ConversionError, match=r"model.backbone='vgg16_bn'"):
        evaluation.restore(config, str(tmp_path / "run"))


def test_predict_segments_photos_with_the_tutorials_network(tiny_config, tmp_path):
    from PIL import Image

    from fcn_jax import normalization, prediction

    model, variables = save_fixture_weights(tmp_path / "w")
    photo = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    config = tiny_mindspore_config(
        tiny_config,
        init_from=str(tmp_path / "w"),
        dataset__eval_pad_size=(64, 96),
        dataset__name="folder",  # Names its classes: a, b, c.
        dataset__class_names=("a", "b", "c"),
    )
    summary = prediction.predict(
        config, None, "best", [str(tmp_path / "photo.png")], str(tmp_path / "out")
    )
    assert summary.failed == []
    logits = model.apply(variables, normalization.normalize(photo[None], "mindspore"), train=False)
    want = np.asarray(jnp.argmax(logits[0], -1), np.uint8)
    assert len(np.unique(want)) > 1
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "photo.png")), want)


def test_xavier_head_is_drawn_as_mindspore_draws_it():
    """head_init=xavier_uniform: score layers and upsampling ~ U(+-sqrt(6 / (fan_in +
    fan_out))), as MindSpore's weight_init="xavier_uniform" drew the fixture's own head
    (head_init=fcn, zero scores and bilinear upsampling: tests/test_models.py)."""
    theirs = mindspore_file.read(CKPT)
    model = convert.mindspore_model(convert.from_mindspore_checkpoint(CKPT, 3)[1], 3)
    model = model.clone(head_init="xavier_uniform")
    ours = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)), train=False)["params"])(
        jax.random.key(0)
    )
    for layer in (
        "score_fr",
        "score_pool4",
        "score_pool3",
        "upscore2",
        "upscore_pool4",
        "upscore8",
    ):
        kernel = np.asarray(ours[layer]["kernel"])
        k_h, k_w, c_in, c_out = kernel.shape
        bound = np.sqrt(6 / (k_h * k_w * (c_in + c_out)))
        for weights in (kernel, theirs[f"{layer}.weight"]):
            assert 0.7 * bound < np.abs(weights).max() <= bound, (layer, bound)
        if kernel.size > 1000:  # Uniform: std = bound / sqrt(3).
            assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
