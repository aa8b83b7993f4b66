"""Optimizers and learning-rate schedules from the config (optax).

Weight decay reaches the kernels only (Caffe's decay_mult 0 on biases; MindSpore's
Momentum skips BatchNorm's gamma and beta), or with ``decay_all_parameters`` every
parameter (torch's SGD and mmsegmentation's). Biases can learn twice as fast
(``bias_lr_mult=2``, Caffe's lr_mult), and the upsampling layers can be frozen at
their bilinear initialisation, as in the paper. A schedule can step every
``schedule_interval`` steps (MindSpore's zoo: once an epoch) and end at
``min_learning_rate`` (mmsegmentation's poly min_lr).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fcn_jax import models
from fcn_jax.sharding import path_str

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "poly", "cosine")


def make_schedule(opt, num_train_steps: int) -> optax.Schedule:
    """constant | poly | cosine from learning_rate down to min_learning_rate, after an
    optional linear warmup; held for schedule_interval steps at a time.

    poly: min + (lr - min) * (1 - t/T)^power; cosine: min + (lr - min) * (1 + cos(pi t/T)) / 2.
    """
    lr, low, warmup = opt.learning_rate, opt.min_learning_rate, opt.warmup_steps
    decay_steps = max(num_train_steps - warmup, 1)
    if opt.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif opt.schedule == "poly":
        main = optax.polynomial_schedule(lr, low, opt.poly_power, decay_steps)
    elif opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=low / lr if lr else 0.0)
    else:
        raise ValueError(f"optimizer.schedule={opt.schedule!r} is not one of {SCHEDULES}")
    if warmup > 0:
        main = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    interval = opt.schedule_interval
    if interval <= 1:
        return main
    return lambda count: main(count // interval * interval)


def _mask(params, predicate):
    return jax.tree_util.tree_map_with_path(lambda p, _: predicate(path_str(p)), params)


def is_weight(path: str) -> bool:
    return path.endswith("kernel")


def is_upsampling(path: str) -> bool:
    return path.split("/")[0] in models.UPSAMPLE_FACTORS


def decayed(opt) -> Callable[[str], bool]:
    """Which parameters (by path) ``opt.weight_decay`` reaches."""
    return (lambda path: True) if opt.decay_all_parameters else is_weight


def make_optimizer(opt, num_train_steps: int, freeze_upsampling: bool):
    """The optax transformation described by ``config.optimizer``."""
    schedule = make_schedule(opt, num_train_steps)
    decay_mask = lambda p: _mask(p, decayed(opt))  # noqa: E731
    parts = []
    if opt.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.name == "sgd":
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay, decay_mask))
        parts.append(optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov))
    elif opt.name == "adam":
        if opt.weight_decay:
            parts.append(optax.add_decayed_weights(opt.weight_decay, decay_mask))
        parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2))
    elif opt.name == "adamw":
        parts.append(
            optax.adamw(
                schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask
            )
        )
    else:
        raise ValueError(f"optimizer.name={opt.name!r} is not one of {OPTIMIZERS}")
    if opt.bias_lr_mult != 1:
        parts.append(
            optax.masked(
                optax.scale(opt.bias_lr_mult), lambda p: _mask(p, lambda s: not is_weight(s))
            )
        )
    if freeze_upsampling:
        parts.append(optax.masked(optax.set_to_zero(), lambda p: _mask(p, is_upsampling)))
    return optax.chain(*parts), schedule


def init_at(tx, params, step):
    """A new state of ``tx`` whose learning-rate schedule stands at ``step``.

    For changing the optimizer mid-run (config.reset_optimizer): moments start
    afresh, but the schedule continues where the run was rather than restarting.
    """

    def at_step(s):
        if isinstance(s, optax.ScaleByScheduleState):
            return s._replace(count=jnp.asarray(step, s.count.dtype))
        return s

    is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
    return jax.tree.map(at_step, tx.init(params), is_leaf=is_schedule)
