"""Builds the full optimizer chain from ``config.optimizer`` (see :mod:`lmsgd.optim.config`).

The training driver calls :func:`create_optimizer` and never assembles chains itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lmsgd.optim import schedules as sched
from lmsgd.optim.config import SCHEDULE_NAMES, validate_optimizer_config
from lmsgd.optim.rmsprop_warmup import rmsprop_warmup

ConfigLike = Mapping[str, Any] | ml_collections.ConfigDict


def multi_dim_mask(params: optax.Params) -> Any:
    """True for parameters with more than one dimension (kernels), False for 1-D (and 0-D)
    ones: normalization scales/offsets and biases. For ``mask=`` arguments of optax, where
    True means "apply"."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _decay_state_only(weight_decay: float, mask: Any) -> optax.GradientTransformation:
    """Identity with ``optax.add_decayed_weights``'s (empty) state: keeps the optimizer state's
    layout of checkpoints written while weight decay was a separate pass before
    :func:`rmsprop_warmup` (which now adds it inside its own loops)."""
    layout = optax.add_decayed_weights(weight_decay, mask=mask)
    return optax.GradientTransformation(
        layout.init, lambda updates, state, params=None: (updates, state)
    )


def base_learning_rate(cfg: ConfigLike, global_batch_size: int) -> float:
    """``cfg.base_learning_rate``, or the linear scaling rule with ``cfg.lr_per_256``."""
    if cfg["base_learning_rate"] is not None:
        return float(cfg["base_learning_rate"])
    return sched.linear_scaling_rule(global_batch_size, base=cfg["lr_per_256"])


def schedule_reaches_zero(schedule: optax.Schedule, total_steps: int) -> bool:
    """Whether ``schedule`` is <= 0 (or not finite) at any step in ``[0, total_steps)``, as the
    float32 value the train step sees. Lets :func:`rmsprop_warmup` drop the eta = 0 limit from
    its compiled update (8 bytes per parameter) for schedules that never reach 0."""
    values = jax.vmap(schedule)(jnp.arange(total_steps, dtype=jnp.int32))
    return not bool(jnp.all(jnp.isfinite(values) & (values > 0)))


def learning_rate_schedule(
    cfg: ConfigLike, *, global_batch_size: int, steps_per_epoch: int, num_epochs: float
) -> optax.Schedule:
    """The learning-rate schedule named by ``cfg.schedule`` (global rate per optimizer step)."""
    base = base_learning_rate(cfg, global_batch_size)
    name = cfg["schedule"]
    if name == "slow_start":
        return sched.slow_start_schedule(
            base,
            steps_per_epoch,
            boundaries=tuple(cfg["slow_start_boundaries"]),
            factors=tuple(cfg["slow_start_factors"]),
        )
    if name == "goyal":
        return sched.goyal_schedule(
            base,
            steps_per_epoch,
            warmup_epochs=cfg["warmup_epochs"],
            boundaries=tuple(cfg["goyal_boundaries"]),
            decay_factor=cfg["goyal_decay_factor"],
            warmup_init_factor=cfg["warmup_init_factor"],
        )
    if name == "polynomial":
        return sched.polynomial_warmup_schedule(
            base,
            steps_per_epoch,
            num_epochs,
            warmup_epochs=cfg["warmup_epochs"],
            power=cfg["polynomial_power"],
            end_factor=cfg["end_learning_rate_factor"],
            warmup_init_factor=cfg["warmup_init_factor"],
        )
    if name == "cosine":
        return sched.cosine_warmup_schedule(
            base,
            steps_per_epoch,
            num_epochs,
            warmup_epochs=cfg["warmup_epochs"],
            end_factor=cfg["end_learning_rate_factor"],
            warmup_init_factor=cfg["warmup_init_factor"],
        )
    if name == "constant":
        return sched.constant_schedule(base)
    # Unreachable after validation; kept so a direct call fails clearly.
    raise ValueError(f"optimizer.schedule={name!r} is invalid; expected one of {SCHEDULE_NAMES}")


def create_optimizer(
    cfg: ConfigLike, *, global_batch_size: int, steps_per_epoch: int, num_epochs: float
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The optimizer chain described by ``cfg`` and the schedules it uses.

    Args:
      cfg: the ``config.optimizer`` section (start from ``default_optimizer_config()``).
      global_batch_size: images per optimizer step summed over all devices (for the linear
        scaling rule).
      steps_per_epoch: optimizer steps per epoch (global batches per pass over the data).
      num_epochs: training length in epochs (sets the end of 'polynomial' and 'cosine').

    Returns:
      ``(tx, schedules)``. ``tx`` expects gradients averaged over the global batch.
      ``schedules`` maps 'learning_rate' (always) and 'alpha_sgd' (rmsprop_warmup only) to
      functions of the optimizer step, for logging.

    The chain:
      * 'rmsprop_warmup', 'momentum', 'nesterov': L2 weight decay on the gradient (docs/recipe.md
        section 4; 1-D params exempt if ``weight_decay_exclude_1d``), then
        :func:`rmsprop_warmup` or ``optax.sgd``. For SGD the decay is
        ``optax.add_decayed_weights``; :func:`rmsprop_warmup` adds it inside its own two loops
        (the same bits, one pass over memory and one kernel per tensor fewer), behind a
        stateless stand-in that keeps ``opt_state[1]`` where checkpoints have it.
        ``optax.sgd`` is ``trace`` followed by ``scale_by_learning_rate``, i.e. the learning
        rate multiplies the momentum buffer from outside, as in Goyal et al. and as
        :func:`rmsprop_warmup` does at alpha_sgd = 1 (checked in tests/test_optim_factory.py).
      * 'lars': ``optax.lars`` with the decay inside it (it adds L2 to the gradient before
        the trust ratio, like the chain above). 1-D params are exempt from adaptation and
        decay if ``lars_exclude_1d`` (or from decay if ``weight_decay_exclude_1d``). Note
        optax's LARS applies the learning rate *inside* the momentum buffer.
      * 'lamb': ``optax.lamb``, whose weight decay is LAMB's decoupled decay (added to the
        Adam direction before the trust ratio), not L2 on the gradient.
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
    schedules: dict[str, optax.Schedule] = {"learning_rate": lr}
    name = cfg["name"]
    wd = cfg["weight_decay"]
    wd_mask = multi_dim_mask if cfg["weight_decay_exclude_1d"] else None

    if name == "lars":
        exclude_from_decay = cfg["weight_decay_exclude_1d"] or cfg["lars_exclude_1d"]
        tx = optax.lars(
            lr,
            weight_decay=wd,
            weight_decay_mask=multi_dim_mask if exclude_from_decay else True,
            trust_coefficient=cfg["lars_trust_coefficient"],
            eps=cfg["lars_eps"],
            trust_ratio_mask=multi_dim_mask if cfg["lars_exclude_1d"] else True,
            momentum=cfg["momentum"],
        )
        return tx, schedules
    if name == "lamb":
        tx = optax.lamb(
            lr,
            b1=cfg["lamb_b1"],
            b2=cfg["lamb_b2"],
            eps=cfg["lamb_eps"],
            weight_decay=wd,
            mask=wd_mask,
        )
        return tx, schedules

    if name == "rmsprop_warmup":
        alpha = sched.alpha_sgd_schedule(
            steps_per_epoch, beta_center=cfg["beta_center"], beta_period=cfg["beta_period"]
        )
        schedules["alpha_sgd"] = alpha
        core = rmsprop_warmup(
            lr,
            alpha,
            rmsprop_learning_rate=cfg["rmsprop_learning_rate"],
            momentum=cfg["momentum"],
            decay=cfg["rmsprop_decay"],
            eps=cfg["eps"],
            delta_dtype=jnp.dtype(cfg["delta_dtype"]),
            learning_rate_can_be_zero=schedule_reaches_zero(
                lr, math.ceil(num_epochs * steps_per_epoch)
            ),
            weight_decay=wd,
            weight_decay_mask=wd_mask,
            # The train step refuses any step whose gradient norm is not finite, which covers
            # every gradient the saturation would act on (|g| > ~1.8e19 overflows the norm).
            saturate=False,
        )
        return optax.chain(_decay_state_only(wd, wd_mask), core), schedules
    else:  # 'momentum' or 'nesterov' (validated above)
        core = optax.sgd(lr, momentum=cfg["momentum"], nesterov=name == "nesterov")
    return optax.chain(optax.add_decayed_weights(wd, mask=wd_mask), core), schedules
