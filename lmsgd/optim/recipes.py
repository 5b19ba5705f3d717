"""The optimizer recipes and learning-rate schedules lmsgd's configs can name.

Each ``register_*`` call below is one recipe: its name (``config.optimizer.name`` or
``config.optimizer.schedule``), its own keys (the sub-section ``config.optimizer.<name>``) and
a builder. To add an optimizer, add one here and set ``config.optimizer.name`` to it in a
config file (docs/optimizer.md walks through one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lmsgd.optim import schedules as sched
from lmsgd.optim.registry import (
    BuildContext,
    Built,
    OptimizerRecipe,
    ScheduleRecipe,
    register_optimizer,
    register_schedule,
)
from lmsgd.optim.rmsprop_warmup import rmsprop_warmup
from lmsgd.schema import Key, is_bool, is_number, nonneg, one_of, positive

DELTA_DTYPES = ("float32", "bfloat16")


def multi_dim_mask(params: optax.Params) -> Any:
    """True for parameters with more than one dimension (kernels), False for 1-D (and 0-D)
    ones: normalization scales/offsets and biases. For ``mask=`` arguments of optax, where
    True means "apply"."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def schedule_reaches_zero(schedule: optax.Schedule, total_steps: int) -> bool:
    """Whether ``schedule`` is <= 0 (or not finite) at any step in ``[0, total_steps)``, as the
    float32 value the train step sees. Lets :func:`rmsprop_warmup` drop the eta = 0 limit from
    its compiled update (8 bytes per parameter) for schedules that never reach 0."""
    values = jax.vmap(schedule)(jnp.arange(total_steps, dtype=jnp.int32))
    return not bool(jnp.all(jnp.isfinite(values) & (values > 0)))


def _unit_interval_open(x: Any) -> bool:
    return is_number(x) and 0 <= x < 1


def _increasing_epochs(x: Any) -> bool:
    return (
        isinstance(x, (tuple, list))
        and all(nonneg(b) for b in x)
        and all(b1 < b2 for b1, b2 in zip(x, x[1:]))
    )


def _nonneg_sequence(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(nonneg(f) for f in x)


def _momentum_key(used_by: str) -> Key:
    return Key(0.9, f"mu1: momentum of {used_by}.", _unit_interval_open, "a number in [0, 1)")


def _function_masks(kwargs: dict[str, Any]) -> tuple[str, ...]:
    """Arguments of ``kwargs`` that are masks given as functions: ``inject_hyperparams`` must
    be told that they are not schedules."""
    return tuple(k for k, v in kwargs.items() if "mask" in k and callable(v))


# ============================================================================ optimizers
def rmsprop_warmup_chain(
    learning_rate: Any,
    alpha_sgd: Any,
    rmsprop_learning_rate: Any = 3e-4,
    momentum: Any = 0.9,
    decay: Any = 0.99,
    eps: Any = 1e-8,
    delta_dtype: Any = None,
    learning_rate_can_be_zero: bool = True,
    weight_decay: Any = None,
    weight_decay_mask: Any = None,
    saturate: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """:func:`rmsprop_warmup` behind a stateless stand-in for ``optax.add_decayed_weights``:
    the decay is inside :func:`rmsprop_warmup`'s own loops (one pass over memory fewer), and
    the state keeps the layout of lmsgd checkpoints written while it was a separate pass
    (``opt_state[1]`` is the :class:`RMSpropWarmupState`). Arguments as :func:`rmsprop_warmup`.
    """
    layout = optax.add_decayed_weights(
        0.0 if weight_decay is None else weight_decay, mask=weight_decay_mask
    )
    stand_in = optax.GradientTransformation(
        layout.init, lambda updates, state, params=None: (updates, state)
    )
    return optax.chain(
        stand_in,
        rmsprop_warmup(
            learning_rate, alpha_sgd, rmsprop_learning_rate=rmsprop_learning_rate,
            momentum=momentum, decay=decay, eps=eps, delta_dtype=delta_dtype,
            learning_rate_can_be_zero=learning_rate_can_be_zero, weight_decay=weight_decay,
            weight_decay_mask=weight_decay_mask, saturate=saturate,
        ),
    )  # fmt: skip


def _build_rmsprop_warmup(cfg: Mapping[str, Any], ctx: BuildContext) -> Built:
    alpha = sched.alpha_sgd_schedule(
        ctx.steps_per_epoch, beta_center=cfg["beta_center"], beta_period=cfg["beta_period"]
    )
    kwargs = dict(
        learning_rate=ctx.learning_rate,
        alpha_sgd=alpha,
        rmsprop_learning_rate=cfg["rmsprop_learning_rate"],
        momentum=cfg["momentum"],
        decay=cfg["decay"],
        eps=cfg["eps"],
        delta_dtype=cfg["delta_dtype"],
        learning_rate_can_be_zero=schedule_reaches_zero(ctx.learning_rate, ctx.total_steps),
        weight_decay=ctx.weight_decay,
        weight_decay_mask=ctx.weight_decay_mask,
        # The train step refuses any step whose gradient norm is not finite, which covers
        # every gradient the saturation would act on (|g| > ~1.8e19 overflows the norm).
        saturate=False,
    )
    return Built(rmsprop_warmup_chain, kwargs, {"alpha_sgd": alpha}, _function_masks(kwargs))


register_optimizer(
    OptimizerRecipe(
        name="rmsprop_warmup",
        doc="the paper's RMSprop warm-up (lmsgd.optim.rmsprop_warmup), L2 decay inside it",
        keys={
            "momentum": _momentum_key("the velocity Delta"),
            "rmsprop_learning_rate": Key(
                3e-4,
                "eta_rmsprop: step size of the RMSprop part (global).",
                nonneg,
                "a non-negative number",
            ),
            "decay": Key(
                0.99,
                "mu2: decay of the squared-gradient average m.",
                _unit_interval_open,
                "a number in [0, 1)",
            ),
            "eps": Key(1e-8, "Added to sqrt(m).", positive, "a positive number"),
            "beta_center": Key(
                10.0,
                "Epoch at which alpha_sgd = 0.5 (RMSprop -> SGD hand-over).",
                nonneg,
                "a non-negative number of epochs",
            ),
            "beta_period": Key(
                5.0,
                "Epochs; alpha_sgd reaches 1 at beta_center + beta_period / 2.",
                positive,
                "a positive number of epochs",
            ),
            "delta_dtype": Key(
                "float32",
                "dtype of the Delta buffer ('bfloat16' halves its memory).",
                one_of(*DELTA_DTYPES),
                f"one of {DELTA_DTYPES}",
            ),
        },
        build=_build_rmsprop_warmup,
        epoch_keys=("beta_center", "beta_period"),
    )
)


def sgd_chain(
    learning_rate: Any,
    momentum: Any = 0.9,
    nesterov: bool = False,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """L2 weight decay on the gradient, then ``optax.sgd``: ``trace`` followed by
    ``scale_by_learning_rate``, i.e. the learning rate multiplies the momentum buffer from
    outside, as in Goyal et al. and as :func:`rmsprop_warmup` does at alpha_sgd = 1."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def _sgd_builder(nesterov: bool):
    def build(cfg: Mapping[str, Any], ctx: BuildContext) -> Built:
        kwargs = dict(
            learning_rate=ctx.learning_rate, momentum=cfg["momentum"], nesterov=nesterov,
            weight_decay=ctx.weight_decay, weight_decay_mask=ctx.weight_decay_mask,
        )  # fmt: skip
        return Built(sgd_chain, kwargs, {}, _function_masks(kwargs))

    return build


for _name, _nesterov in (("momentum", False), ("nesterov", True)):
    register_optimizer(
        OptimizerRecipe(
            name=_name,
            doc=f"momentum SGD{' with Nesterov momentum' if _nesterov else ''} (optax.sgd) "
            "after L2 weight decay (Goyal et al.)",
            keys={"momentum": _momentum_key(f"{_name} SGD (trace decay)")},
            build=_sgd_builder(_nesterov),
        )
    )


def _build_lars(cfg: Mapping[str, Any], ctx: BuildContext) -> Built:
    exclude_from_decay = ctx.exclude_1d or cfg["exclude_1d"]
    kwargs = dict(
        learning_rate=ctx.learning_rate,
        weight_decay=ctx.weight_decay,
        weight_decay_mask=multi_dim_mask if exclude_from_decay else True,
        trust_coefficient=cfg["trust_coefficient"],
        eps=cfg["eps"],
        trust_ratio_mask=multi_dim_mask if cfg["exclude_1d"] else True,
        momentum=cfg["momentum"],
    )
    return Built(optax.lars, kwargs, {}, _function_masks(kwargs))


register_optimizer(
    OptimizerRecipe(
        name="lars",
        doc="optax.lars (You et al. 2017), decay inside it; the learning rate is applied "
        "inside its momentum buffer",
        keys={
            "momentum": _momentum_key("LARS"),
            "trust_coefficient": Key(
                0.001,
                "LARS trust coefficient eta (You et al. 2017).",
                positive,
                "a positive number",
            ),
            "eps": Key(
                0.0,
                "Added to the denominator of the LARS trust ratio.",
                nonneg,
                "a non-negative number",
            ),
            "exclude_1d": Key(
                True,
                "Exempt 1-D parameters (BN, biases) from trust-ratio adaptation and weight "
                "decay, the usual LARS recipe (You et al. 2017; MLPerf).",
                is_bool,
                "True or False",
            ),
        },  # fmt: skip
        build=_build_lars,
    )
)


def _build_lamb(cfg: Mapping[str, Any], ctx: BuildContext) -> Built:
    kwargs = dict(
        learning_rate=ctx.learning_rate, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"],
        weight_decay=ctx.weight_decay, mask=ctx.weight_decay_mask,
    )  # fmt: skip
    return Built(optax.lamb, kwargs, {}, _function_masks(kwargs))


register_optimizer(
    OptimizerRecipe(
        name="lamb",
        doc="optax.lamb; its weight decay is LAMB's decoupled decay, not L2 on the gradient",
        keys={
            "b1": Key(0.9, "First-moment decay.", _unit_interval_open, "a number in [0, 1)"),
            "b2": Key(0.999, "Second-moment decay.", _unit_interval_open, "a number in [0, 1)"),
            "eps": Key(1e-6, "Epsilon.", positive, "a positive number"),
        },
        build=_build_lamb,
    )
)


# ============================================================================ schedules
def _warmup_keys(what: str) -> dict[str, Key]:
    return {
        "warmup_epochs": Key(
            5.0, f"Epochs of linear warm-up before the {what}.", nonneg,
            "a non-negative number of epochs",
        ),
        "warmup_init_factor": Key(
            0.0,
            "Warm-up start as a fraction of the base rate (Goyal et al. started at 256 / batch).",
            nonneg,
            "a non-negative number",
        ),
    }  # fmt: skip


_END_FACTOR = Key(
    0.0, "Final rate, as a fraction of the base rate.", nonneg, "a non-negative number"
)


def _slow_start_factor_count(cfg: Mapping[str, Any]) -> str | None:
    n_bounds, n_factors = len(cfg["boundaries"]), len(cfg["factors"])
    if n_factors != n_bounds + 1:
        return (
            f"config.optimizer.slow_start.factors has {n_factors} entries but "
            f"config.optimizer.slow_start.boundaries has {n_bounds}; expected {n_bounds + 1} "
            "factors"
        )
    return None


def _sequences_as_tuples(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


register_schedule(
    ScheduleRecipe(
        name="slow_start",
        doc="the paper's slow start: piecewise constant, no warm-up (docs/recipe.md s.2)",
        keys={
            "boundaries": Key(
                (40.0, 70.0, 85.0),
                "Epochs at which the rate moves to the next factor.",
                _increasing_epochs,
                "a strictly increasing sequence of non-negative epochs",
            ),
            "factors": Key(
                (0.5, 0.075, 0.01, 0.001),
                "Multiples of the base rate on each interval (one more than boundaries).",
                _nonneg_sequence,
                "a non-empty sequence of non-negative numbers",
            ),
        },  # fmt: skip
        build=lambda cfg, base, spe, epochs: sched.slow_start_schedule(
            base, spe, **_sequences_as_tuples(cfg)
        ),
        epoch_keys=("boundaries",),
        rules=(_slow_start_factor_count,),
    )
)
register_schedule(
    ScheduleRecipe(
        name="goyal",
        doc="Goyal et al.: linear warm-up, then x decay_factor at each boundary",
        keys={
            **_warmup_keys("x decay_factor steps"),
            "boundaries": Key(
                (30.0, 60.0, 80.0),
                "Epochs at which the rate is multiplied by decay_factor.",
                _increasing_epochs,
                "a strictly increasing sequence of non-negative epochs",
            ),
            "decay_factor": Key(
                0.1, "Factor applied at each boundary.", nonneg, "a non-negative number"
            ),
        },  # fmt: skip
        build=lambda cfg, base, spe, epochs: sched.goyal_schedule(
            base, spe, **_sequences_as_tuples(cfg)
        ),
        epoch_keys=("warmup_epochs", "boundaries"),
    )
)
register_schedule(
    ScheduleRecipe(
        name="polynomial",
        doc="LARS / MLPerf: linear warm-up, then polynomial decay to end_factor at the end",
        keys={
            **_warmup_keys("polynomial decay"),
            "power": Key(
                2.0,
                "Power of the decay (2 in the LARS/MLPerf ResNet-50 recipe).",
                positive,
                "a positive number",
            ),
            "end_factor": _END_FACTOR,
        },  # fmt: skip
        build=lambda cfg, base, spe, epochs: sched.polynomial_warmup_schedule(
            base, spe, epochs, **_sequences_as_tuples(cfg)
        ),
        epoch_keys=("warmup_epochs",),
    )
)
register_schedule(
    ScheduleRecipe(
        name="cosine",
        doc="linear warm-up, then cosine decay to end_factor at the end",
        keys={**_warmup_keys("cosine decay"), "end_factor": _END_FACTOR},
        build=lambda cfg, base, spe, epochs: sched.cosine_warmup_schedule(
            base, spe, epochs, **_sequences_as_tuples(cfg)
        ),
        epoch_keys=("warmup_epochs",),
    )
)
register_schedule(
    ScheduleRecipe(
        name="constant",
        doc="the base rate at every step",
        keys={},
        build=lambda cfg, base, spe, epochs: sched.constant_schedule(base),
    )
)

del _name, _nesterov
