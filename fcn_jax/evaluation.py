"""Evaluation over a whole split, from checkpoints or converted weights, with reports.

Metrics come from one int64 confusion matrix accumulated over every batch of the
split; per-batch mIoUs are never averaged (that inflates the score). A report is
the printed table, a JSON file holding the confusion matrix it was computed
from, and two plots beside it (the row-normalised confusion matrix, per-class IoU).
"""

from __future__ import annotations

import collections
import os
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from fcn_jax import (
    checkpointing,
    convert,
    damage,
    files,
    init_from,
    input_pipeline,
    metrics,
    sharding,
    steps,
    visualize,
)
from fcn_jax.config_lib import validate_config
from fcn_jax.weights import catalogue

_IN_FLIGHT = 2  # Batches queued on the device before the host waits for the oldest.


class EvalResult(NamedTuple):
    metrics: dict  # segmentation_metrics of the confusion matrix.
    confusion_matrix: np.ndarray  # int64 [C, C], rows = ground truth.
    examples: np.ndarray | None  # uint8 [N, H, 3W, 3]: input | truth | prediction.


def evaluate(programs, variables, config, *, num_examples: int = 0, progress: bool = False):
    """EvalResult of ``variables`` (``{"params", "batch_stats"}``) on dataset.eval_split, with
    the config's test-time inference.

    ``num_examples`` images of the first batch are also predicted and drawn for
    TensorBoard; ``progress`` shows a progress bar on process 0.
    """
    batches, num_batches = input_pipeline.eval_iterator(config)
    num_classes = config.model.num_classes
    cm = np.zeros((num_classes, num_classes), np.int64)
    pending, examples, seen = collections.deque(), None, 0
    bar = tqdm(
        total=num_batches,
        desc=f"eval {config.dataset.eval_split}",
        unit="batch",
        disable=not progress or jax.process_index() > 0,
    )
    with bar:
        for local in batches:
            input_pipeline.check_labels(local["label"], num_classes)
            batch = sharding.global_batch(local, programs.mesh)
            pending.append(programs.eval_step(variables, batch))
            if seen == 0 and num_examples:
                examples = _examples(programs, variables, local, batch, num_examples)
            seen += 1
            while len(pending) > _IN_FLIGHT:
                cm += np.asarray(jax.device_get(pending.popleft()), np.int64)
                bar.update()
        while pending:
            cm += np.asarray(jax.device_get(pending.popleft()), np.int64)
            bar.update()
    if seen != num_batches:
        raise RuntimeError(f"eval split gave {seen} batches, expected {num_batches}")
    return EvalResult(metrics.segmentation_metrics(cm), cm, examples)


def _examples(programs, variables, local, batch, count):
    """Panels of this process's first images: its rows lead its share of the batch."""
    preds = np.asarray(jax.device_get(programs.predict_step(variables, batch["image"])))
    n = min(count, len(local["image"]))
    return visualize.eval_panels(local["image"][:n], local["label"][:n], preds[:n])


def scalar_metrics(eval_metrics: dict) -> dict[str, float]:
    return {k: v for k, v in eval_metrics.items() if np.ndim(v) == 0}


def _jsonable(value):
    """NaN (a class absent from the split) becomes null: strict JSON has no NaN."""
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _score(value: float) -> str:
    return f"{value:8.4f}" if np.isfinite(value) else "     n/a"


def format_report(eval_metrics: dict, source: str, split: str, names) -> str:
    """The four scores, then each class's IoU and accuracy (n/a when undefined)."""
    lines = [f"Evaluation of {source} on {split}:"]
    for name, value in scalar_metrics(eval_metrics).items():
        lines.append(f"  {name:20s} {value:.4f}")
    width = max(len("class"), *(len(n) for n in names))
    lines.append(f"  {'class':{width}s} {'IoU':>8s} {'accuracy':>8s}")
    for name, iou, acc in zip(names, eval_metrics["iou"], eval_metrics["accuracy"]):
        lines.append(f"  {name:{width}s} {_score(iou)} {_score(acc)}")
    return "\n".join(lines)


def report_paths(json_path: str) -> dict[str, str]:
    """The JSON report and the plots written beside it."""
    stem = os.path.splitext(json_path)[0]
    return {
        "json": json_path,
        "confusion": f"{stem}_confusion.png",
        "iou": f"{stem}_iou.png",
    }


def write_report(json_path: str, result: EvalResult, names, **fields) -> dict[str, str]:
    """JSON (metrics, per-class arrays, confusion matrix, ``fields``) and two PNG plots."""
    paths = report_paths(json_path)
    payload = _jsonable(dict(result.metrics))
    payload.update(
        class_names=list(names),
        confusion_matrix=result.confusion_matrix.tolist(),
        **_jsonable(fields),
    )
    files.write_json(paths["json"], payload)
    visualize.plot_confusion(result.confusion_matrix, names, paths["confusion"])
    visualize.plot_iou(result.metrics["iou"], names, paths["iou"])
    return paths


class Restored(NamedTuple):
    programs: Any
    variables: Any  # {"params", "batch_stats"} on the programs' shardings.
    step: int | None  # The checkpoint's step; None for converted weights.
    source: str  # What was restored, for reports.
    tag: str  # Short name for report files: the step, or the weights' folder name.


def _read_only_manager(workdir: str):
    """A manager reading ``workdir``, where a training run may be deleting checkpoints
    (its retention) while orbax lists them."""
    for attempt in range(3):
        try:
            return checkpointing.make_manager(workdir, read_only=True)
        except FileNotFoundError:
            if attempt == 2:
                raise


def restore(config, workdir: str | None, which: str = "best", mesh=None) -> Restored:
    """The trained parameters to run: the workdir's ``which`` checkpoint, else config.init_from.

    ``which`` is best (by eval mean IoU) | latest | a step number; ``init_from`` is
    converted weights of a whole FCN or another run's workdir. A workdir with
    checkpoints wins over init_from, which only started its training. Compiles the
    steps for ``mesh`` (default: config.mesh.shape over the current devices, which
    need not be those that trained the model).
    """
    validate_config(config)
    if mesh is None:
        mesh = sharding.make_mesh(config.mesh.shape)
    trained = checkpointing.has_checkpoints(workdir)
    if config.init_from and trained:
        # Worth a warning where init_from could be meant as the model to run: not for a
        # recipe's default backbone, which cannot be evaluated anyway.
        backbone = config.init_from in catalogue.CATALOGUE and (
            catalogue.meta(config.init_from)["variant"] is None
        )
        (logging.info if backbone else logging.warning)(
            "Using the checkpoints of --workdir=%s; config.init_from=%s only started that run",
            workdir,
            config.init_from,
        )
    if config.init_from and not trained:
        init_from.check_before_download(config, whole_model=True)
        init_from.resolve_normalization(config, None, None)
        programs = steps.compile_steps(config, mesh)
        weights, meta = init_from.load(config.init_from)
        convert.check_fits(meta, config.model, weights["params"], config.init_from)
        variables = _whole_model(weights, programs.abstract_variables, config.init_from)
        variables = sharding.put(variables, programs.variables_shardings)
        name = os.path.basename(os.path.normpath(config.init_from)).replace(":", "_")
        step = meta.get("checkpoint")
        return Restored(programs, variables, step, f"weights {config.init_from}", name)
    if not workdir:
        raise ValueError("give --workdir (a trained run) or --config.init_from (converted weights)")
    manager = _read_only_manager(workdir)
    programs = None

    def restore_at(step: int) -> dict:
        nonlocal programs
        checkpointing.check_compatible(manager, step, config)
        init_from.resolve_normalization(config, manager, step)
        programs = programs or steps.compile_steps(config, mesh)
        return checkpointing.restore_variables(manager, step, programs.abstract_variables)

    for step, why in damage.unreadable_json(str(manager.directory), False).items():
        logging.warning("Checkpoint %d cannot be read (%s); it is left as it is", step, why)
    try:
        for attempt in range(3):  # A training run's retention may delete what we read.
            step = checkpointing.resolve_step(manager, which)
            try:
                variables = damage.restore_named(manager, step, restore_at)
                break
            except damage.CheckpointVanishedError:
                if which not in ("best", "latest") or attempt == 2:
                    raise
                manager.reload()
    finally:
        manager.close()
    return Restored(programs, variables, step, f"checkpoint {step} of {workdir}", str(step))


def _whole_model(weights, abstract_variables, path: str):
    """Weights that cover every layer of the model, and only those, as numpy variables."""
    layers = {n for c in convert.COLLECTIONS for n in abstract_variables[c]}
    given = {n for c in convert.COLLECTIONS for n in weights.get(c, {})}
    missing, extra = sorted(layers - given), sorted(given - layers)
    if missing or extra:
        raise ValueError(
            f"init_from={path!r} does not hold this model: it lacks {missing} and has extra "
            f"{extra}. Evaluate converted weights of a whole FCN of the config's variant "
            "(`python -m fcn_jax.convert --layout=fcn`) or a trained workdir, not a backbone"
        )
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables)
    return convert.merge_into(zeros, weights)[0]


def default_report_path(workdir: str, split: str, tag: str) -> str:
    return os.path.join(os.path.abspath(workdir), "eval", f"{split}_{tag}.json")


def evaluate_checkpoint(
    config, workdir: str, which: str = "best", output_json: str | None = None, progress=False
):
    """Restores (see ``restore``), evaluates, prints the report and writes it (process 0).

    The report goes to ``output_json``, by default ``<workdir>/eval/<split>_<step>.json``.
    Returns (EvalResult, Restored).
    """
    validate_config(config)
    mesh = sharding.make_mesh(config.mesh.shape)
    sharding.check_batch_sizes(mesh, {"dataset.eval_batch_size": config.dataset.eval_batch_size})
    restored = restore(config, workdir, which, mesh)
    result = evaluate(restored.programs, restored.variables, config, progress=progress)
    split, names = config.dataset.eval_split, visualize.class_names(config)
    print(format_report(result.metrics, restored.source, split, names), flush=True)
    if jax.process_index() == 0:
        path = output_json or default_report_path(workdir, split, restored.tag)
        written = write_report(
            path,
            result,
            names,
            step=restored.step,
            split=split,
            source=restored.source,
            settings=config.to_dict(),
        )
        logging.info("Wrote %s", ", ".join(written.values()))
        print(f"Report: {path} (plots beside it)", flush=True)
    return result, restored
