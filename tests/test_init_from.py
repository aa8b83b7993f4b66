"""Starting training from converted weights: config.init_from and init_layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import checkpointing, convert, evaluation, init_from, models, sharding, steps, training
from tests.conftest import save_ranked

# The head of the tiny test configs (the demo's): weights with score layers record it.
SAME_HEAD = {"geometry": "same", "at_once": False}


def save_tiny_weights(path, params, variant="fcn8s", num_classes=4, normalization="torch", **head):
    """Saves test parameters as converted weights for init_from, for the tiny configs' head."""
    convert.save_weights(
        str(path),
        as_variables(params),
        variant=variant,
        num_classes=num_classes,
        normalization=normalization,
        **{**SAME_HEAD, **head},
    )


def as_variables(params):
    """The variables of a model without BatchNorm."""
    return {"params": params, "batch_stats": {}}


def tiny_params(variant, num_classes=4, seed=0):
    model = models.FCN(variant=variant, num_classes=num_classes, base_width=4, fc_width=16)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: np.asarray(p) + rng.normal(size=p.shape).astype(np.float32), params
    )


def to_torch_layout(params, tensor=np.asarray):
    """A Flax FCN params tree as a pytorch-fcn state dict (conv OIHW, transposed conv IOHW)."""
    state = {}
    for name, layer in params.items():
        if name.startswith("upscore"):
            state[f"{name}.weight"] = tensor(layer["kernel"].transpose(2, 3, 0, 1).copy())
        else:
            state[f"{name}.weight"] = tensor(layer["kernel"].transpose(3, 2, 0, 1).copy())
            state[f"{name}.bias"] = tensor(layer["bias"])
    return state


def first_params(config, workdir):
    manager = checkpointing.make_manager(str(workdir), read_only=True)
    try:
        programs = steps.compile_steps(config, sharding.make_mesh((1, 1)))
        step = min(manager.all_steps())
        restored = checkpointing.restore_variables(manager, step, programs.abstract_variables)
        return jax.device_get(restored["params"])
    finally:
        manager.close()


def start_fcn16s_from(tiny_config, init_from, workdir):
    """The parameters an FCN-16s started from ``init_from`` has after one step at rate 0."""
    config = tiny_config(
        model__variant="fcn16s",
        init_from=str(init_from),
        num_train_steps=1,
        checkpoint_every_steps=1,
        optimizer__learning_rate=0.0,
        optimizer__warmup_steps=0,
        optimizer__weight_decay=0.0,
    )
    training.train_and_evaluate(config, str(workdir))
    return first_params(config, workdir)


def test_fcn16s_starts_from_an_fcn32s(tiny_config, tmp_path):
    """The paper's staging: every layer both nets have is taken; the new skip starts at zero."""
    weights = tiny_params("fcn32s")
    save_tiny_weights(tmp_path / "w", weights, "fcn32s")
    params = start_fcn16s_from(tiny_config, tmp_path / "w", tmp_path / "run")
    for name in (*models.BACKBONE_LAYERS, "score_fr"):
        for key in weights[name]:
            np.testing.assert_allclose(params[name][key], weights[name][key], rtol=1e-6)
    assert not np.any(params["score_pool4"]["kernel"])  # New in FCN-16s: zero, as in the paper.
    np.testing.assert_allclose(params["upscore2"]["kernel"], models.bilinear_kernel(2, 4))


def test_normalization_follows_the_weights_unless_the_config_sets_it(tiny_config, tmp_path):
    convert.save_weights(
        str(tmp_path / "w"),
        as_variables({n: tiny_params("fcn8s")[n] for n in models.BACKBONE_LAYERS}),
        variant="fcn8s",
        num_classes=4,
        normalization="torch",
    )
    manager = checkpointing.make_manager(str(tmp_path / "run"))
    config = tiny_config(init_from=str(tmp_path / "w"), dataset__normalization="")
    init_from.resolve_normalization(config, manager, None)
    assert config.dataset.normalization == "torch"
    config = tiny_config(init_from="", dataset__normalization="")
    init_from.resolve_normalization(config, manager, None)
    assert config.dataset.normalization == "caffe"
    config = tiny_config(init_from=str(tmp_path / "w"), dataset__normalization="caffe")
    init_from.resolve_normalization(config, manager, None)
    assert config.dataset.normalization == "caffe"
    manager.close()


def test_weights_of_another_num_classes_are_refused_by_layer(tiny_config, tmp_path):
    save_tiny_weights(tmp_path / "w", tiny_params("fcn8s", 7), num_classes=7)
    config = tiny_config(init_from=str(tmp_path / "w"))
    with pytest.raises(
        convert.ConversionError, match=r"layer score_fr (kernel|bias): init_from has shape \(7,?"
    ):
        training.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints" / "1").exists()
    backbone_only = tiny_config(init_from=str(tmp_path / "w"), init_layers=models.BACKBONE_LAYERS)
    backbone_only.num_train_steps = 1
    training.train_and_evaluate(backbone_only, str(tmp_path / "run2"))


def test_init_from_must_be_converted_weights(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a converted weights directory"):
        training.train_and_evaluate(tiny_config(init_from=str(tmp_path)), str(tmp_path / "run"))
    with pytest.raises(convert.ConversionError, match="exists"):
        convert.save_weights(
            str(tmp_path), as_variables({}), variant="fcn8s", num_classes=4, normalization="caffe"
        )


def test_convert_cli_writes_weights_that_train_reads(tmp_path):
    from tests.conftest import convert_cli

    torch = pytest.importorskip("torch", reason="torch comes from requirements-convert.txt")
    params = tiny_params("fcn8s", 4)
    state = to_torch_layout(params, torch.from_numpy)
    torch.save({"model_state_dict": state}, tmp_path / "fcn8s.pth")
    result = convert_cli(
        "--layout=fcn",
        "--variant=fcn8s",
        "--num_classes=4",
        f"--input={tmp_path / 'fcn8s.pth'}",
        f"--output={tmp_path / 'w'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    weights, meta = convert.load_weights(str(tmp_path / "w"))
    weights = weights["params"]
    assert meta == {
        "variant": "fcn8s",
        "num_classes": 4,
        "normalization": "caffe",
        "geometry": "caffe",  # The published FCNs are caffe nets.
        "at_once": False,
        "backbone": "vgg16",
        "fc_batch_norm": False,
        "layers": sorted(params),
    }
    jax.tree.map(np.testing.assert_array_equal, weights, params)

    (tmp_path / "notes.txt").write_text("not weights")
    result = convert_cli(
        "--layout=fcn",
        "--variant=fcn8s",
        "--num_classes=4",
        f"--input={tmp_path / 'notes.txt'}",
        f"--output={tmp_path / 'x'}",
    )
    assert result.returncode != 0
    assert "notes.txt is not a PyTorch state dict file" in result.stderr
    assert not (tmp_path / "x").exists()


def test_staged_training_starts_from_another_runs_best_checkpoint(tiny_config, tmp_path):
    """FCN-16s from a trained FCN-32s workdir, as in the paper's staged recipe: its best
    checkpoint by eval mean IoU, not its latest."""
    stage1 = tiny_config(model__variant="fcn32s")
    programs = steps.compile_steps(stage1, sharding.make_mesh((1, 1)))
    state = programs.init(jax.random.key(0))
    manager = checkpointing.make_manager(str(tmp_path / "fcn32s"), keep=2)
    trained = {}
    for step, seed, mean_iou in ((2, 1, 0.6), (4, 2, 0.4)):  # The latest is not the best.
        trained[step] = tiny_params("fcn32s", seed=seed)
        save_ranked(manager, step, state.replace(params=trained[step]), stage1, mean_iou)
    manager.close()
    params = start_fcn16s_from(tiny_config, tmp_path / "fcn32s", tmp_path / "fcn16s")
    for name in (*models.BACKBONE_LAYERS, "score_fr"):
        for key in trained[2][name]:
            np.testing.assert_allclose(params[name][key], trained[2][name][key], rtol=1e-6)
    assert not np.any(params["score_pool4"]["kernel"])


def test_a_state_dict_of_another_variant_is_named():
    params = tiny_params("fcn32s", 4)
    state = to_torch_layout(params)
    with pytest.raises(
        convert.ConversionError, match="these weights are an fcn32s .* not an fcn8s"
    ):
        convert.from_torch_state_dict(state, "fcn8s", 4)
    converted = convert.from_torch_state_dict(state, "fcn32s", 4)
    jax.tree.map(np.testing.assert_array_equal, converted, params)


@pytest.mark.parametrize("field, recorded", [("geometry", "caffe"), ("at_once", True)])
def test_score_layers_of_another_head_are_refused_naming_the_field(
    tiny_config, tmp_path, field, recorded
):
    """Caffe-geometry weights run as `same`, or at-once weights without at_once, are wrong."""
    save_tiny_weights(tmp_path / "w", tiny_params("fcn8s"), **{field: recorded})
    config = tiny_config(init_from=str(tmp_path / "w"))
    message = rf"model\.{field}={recorded!r}.*add --config\.model\.{field}={recorded}"
    with pytest.raises(convert.ConversionError, match=message):
        evaluation.restore(config, str(tmp_path / "run"))  # eval.py and predict.py
    with pytest.raises(convert.ConversionError, match=message):
        training.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints" / "1").exists()
    config.model[field] = recorded  # The weights' own head is accepted.
    assert evaluation.restore(config, str(tmp_path / "run")).source.startswith("weights")


def test_a_trained_workdir_wins_over_the_init_from_that_started_it(tiny_config, tmp_path):
    """eval.py/predict.py with the training flags evaluate the trained run, not its start."""
    weights = tiny_params("fcn8s")
    save_tiny_weights(tmp_path / "w", weights)
    config = tiny_config(init_from=str(tmp_path / "w"), num_train_steps=2)
    training.train_and_evaluate(config, str(tmp_path / "run"))
    restored = evaluation.restore(config, str(tmp_path / "run"), "latest")
    assert (restored.step, restored.source) == (2, f"checkpoint 2 of {tmp_path / 'run'}")
    params = jax.device_get(restored.variables["params"])
    jax.tree.map(np.testing.assert_array_equal, params, first_params(config, tmp_path / "run"))
    assert not np.allclose(params["score_fr"]["kernel"], weights["score_fr"]["kernel"])
    # Without checkpoints in the workdir, init_from is what there is to run.
    fresh = evaluation.restore(config, str(tmp_path / "empty"))
    assert (fresh.step, fresh.source) == (None, f"weights {tmp_path / 'w'}")
