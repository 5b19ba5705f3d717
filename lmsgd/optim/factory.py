"""Builds the optimizer from ``config.optimizer`` through the recipe registry.

The training driver calls :func:`create_optimizer` and never assembles chains itself. Which
optimizer and which learning-rate schedule are recipes (:mod:`lmsgd.optim.recipes`), looked
up by name in :mod:`lmsgd.optim.registry`; this module only wires them together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections
import optax

from lmsgd.optim import registry
from lmsgd.optim import schedules as sched
from lmsgd.optim.config import validate_optimizer_config
from lmsgd.optim.recipes import multi_dim_mask, schedule_reaches_zero

__all__ = [
    "base_learning_rate",
    "build_recipe",
    "create_optimizer",
    "learning_rate_schedule",
    "multi_dim_mask",
    "schedule_reaches_zero",
]

ConfigLike = Mapping[str, Any] | ml_collections.ConfigDict


def base_learning_rate(cfg: ConfigLike, global_batch_size: int) -> float:
    """``cfg.base_learning_rate``, or the linear scaling rule with ``cfg.lr_per_256``."""
    if cfg["base_learning_rate"] is not None:
        return float(cfg["base_learning_rate"])
    return sched.linear_scaling_rule(global_batch_size, base=cfg["lr_per_256"])


def _section(cfg: ConfigLike, name: str) -> Mapping[str, Any]:
    """A recipe's own keys (recipes without keys have no section)."""
    return cfg.get(name, {})


def learning_rate_schedule(
    cfg: ConfigLike, *, global_batch_size: int, steps_per_epoch: float, num_epochs: float
) -> optax.Schedule:
    """The learning-rate schedule named by ``cfg.schedule`` (global rate per optimizer step),
    built from its section ``cfg[cfg.schedule]``."""
    name = cfg["schedule"]
    if name not in registry.SCHEDULES:
        raise ValueError(
            f"config.optimizer.schedule={name!r} is invalid; expected one of "
            f"{tuple(registry.SCHEDULES)}"
        )
    base = base_learning_rate(cfg, global_batch_size)
    return registry.SCHEDULES[name].build(_section(cfg, name), base, steps_per_epoch, num_epochs)


def build_recipe(
    cfg: ConfigLike, *, global_batch_size: int, steps_per_epoch: int, num_epochs: float
) -> registry.Built:
    """The recipe ``cfg.name`` built, not yet called: ``built()`` is the transformation, and
    ``optax.inject_hyperparams(built.transform, static_args=built.static_args)(**built.kwargs)``
    the same with its hyperparameters in the state. Arguments as :func:`create_optimizer`.

    >>> import optax
    >>> from lmsgd.optim import build_recipe, default_optimizer_config
    >>> cfg = default_optimizer_config()  # the paper: rmsprop_warmup, slow start
    >>> built = build_recipe(cfg, global_batch_size=32768, steps_per_epoch=39, num_epochs=90)
    >>> built.transform.__name__, sorted(built.schedules)
    ('rmsprop_warmup_chain', ['alpha_sgd', 'learning_rate'])
    >>> print(f"{float(built.schedules['learning_rate'](0)):.2f}")  # 0.5 x 12.8
    6.40
    >>> tx = optax.inject_hyperparams(built.transform, static_args=built.static_args)(
    ...     **built.kwargs
    ... )
    """
    validate_optimizer_config(cfg)
    for arg, value in (
        ("global_batch_size", global_batch_size),
        ("steps_per_epoch", steps_per_epoch),
        ("num_epochs", num_epochs),
    ):
        if not value > 0:
            raise ValueError(f"{arg} must be positive, got {value}")
    lr = learning_rate_schedule(
        cfg,
        global_batch_size=global_batch_size,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
    )
    ctx = registry.BuildContext(
        learning_rate=lr,
        weight_decay=cfg["weight_decay"],
        weight_decay_mask=multi_dim_mask if cfg["weight_decay_exclude_1d"] else None,
        exclude_1d=cfg["weight_decay_exclude_1d"],
        steps_per_epoch=steps_per_epoch,
        total_steps=math.ceil(num_epochs * steps_per_epoch),
    )
    name = cfg["name"]
    built = registry.OPTIMIZERS[name].build(_section(cfg, name), ctx)
    return built._replace(schedules={"learning_rate": lr, **built.schedules})


def create_optimizer(
    cfg: ConfigLike, *, global_batch_size: int, steps_per_epoch: int, num_epochs: float
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The optimizer described by ``cfg`` and the schedules it uses.

    Args:
      cfg: the ``config.optimizer`` section (start from ``default_optimizer_config()``).
      global_batch_size: images per optimizer step summed over all devices (for the linear
        scaling rule).
      steps_per_epoch: optimizer steps per epoch (global batches per pass over the data).
      num_epochs: training length in epochs (sets the end of 'polynomial' and 'cosine').

    Returns:
      ``(tx, schedules)``. ``tx`` expects gradients averaged over the global batch.
      ``schedules`` maps 'learning_rate' (always) and the recipe's own schedules
      ('alpha_sgd' for rmsprop_warmup) to functions of the optimizer step, for logging.

    The recipes (:mod:`lmsgd.optim.recipes`):
      * 'rmsprop_warmup', 'momentum', 'nesterov': L2 weight decay on the gradient
        (docs/recipe.md section 4; 1-D params exempt if ``weight_decay_exclude_1d``), then
        :func:`rmsprop_warmup` or ``optax.sgd``. For SGD the decay is
        ``optax.add_decayed_weights``; :func:`rmsprop_warmup` adds it inside its own two loops
        (the same bits, one pass over memory and one kernel per tensor fewer), behind a
        stateless stand-in that keeps ``opt_state[1]`` where checkpoints have it.
        ``optax.sgd`` is ``trace`` followed by ``scale_by_learning_rate``, i.e. the learning
        rate multiplies the momentum buffer from outside, as in Goyal et al. and as
        :func:`rmsprop_warmup` does at alpha_sgd = 1 (checked in tests/test_optim_factory.py).
      * 'lars': ``optax.lars`` with the decay inside it (it adds L2 to the gradient before
        the trust ratio, like the chain above). 1-D params are exempt from adaptation and
        decay if ``lars.exclude_1d`` (or from decay if ``weight_decay_exclude_1d``). Note
        optax's LARS applies the learning rate *inside* the momentum buffer.
      * 'lamb': ``optax.lamb``, whose weight decay is LAMB's decoupled decay (added to the
        Adam direction before the trust ratio), not L2 on the gradient.
    """
    built = build_recipe(
        cfg,
        global_batch_size=global_batch_size,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
    )
    return built(), dict(built.schedules)
