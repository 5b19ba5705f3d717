"""The ``config.optimizer`` section: keys, defaults (the paper's recipe) and validation.

``OPTIMIZER_CONFIG_DOCS`` documents every key; :func:`default_optimizer_config` and
:func:`validate_optimizer_config` are built from the same table, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from lmsgd.schema import Key as _Key
from lmsgd.schema import Section
from lmsgd.schema import is_number as _is_number
from lmsgd.schema import nonneg as _nonneg
from lmsgd.schema import one_of as _one_of
from lmsgd.schema import positive as _positive

OPTIMIZER_NAMES = ("rmsprop_warmup", "momentum", "nesterov", "lars", "lamb")
SCHEDULE_NAMES = ("slow_start", "goyal", "polynomial", "cosine", "constant")
DELTA_DTYPES = ("float32", "bfloat16")


def _unit_interval_open(x: Any) -> bool:
    return _is_number(x) and 0 <= x < 1


def _increasing_epochs(x: Any) -> bool:
    return (
        isinstance(x, (tuple, list))
        and all(_nonneg(b) for b in x)
        and all(b1 < b2 for b1, b2 in zip(x, x[1:]))
    )


def _nonneg_sequence(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(_nonneg(f) for f in x)


_KEYS: dict[str, _Key] = {
    # --- what to run -----------------------------------------------------------------------
    "name": _Key(
        "rmsprop_warmup",
        "Optimizer: 'rmsprop_warmup' (the paper), 'momentum' / 'nesterov' (SGD, Goyal et al.), "
        "'lars' (optax.lars), 'lamb' (optax.lamb).",
        _one_of(*OPTIMIZER_NAMES),
        f"one of {OPTIMIZER_NAMES}",
    ),
    "schedule": _Key(
        "slow_start",
        "Learning-rate schedule, independent of `name`: 'slow_start' (the paper), 'goyal' "
        "(warm-up, x0.1 steps), 'polynomial' (LARS/MLPerf), 'cosine', 'constant'.",
        _one_of(*SCHEDULE_NAMES),
        f"one of {SCHEDULE_NAMES}",
    ),
    # --- learning rate ---------------------------------------------------------------------
    "base_learning_rate": _Key(
        None,
        "Global base learning rate eta_base; None: linear scaling rule "
        "lr_per_256 * global_batch / 256 (12.8 at 32,768).",
        lambda x: x is None or _positive(x),
        "None or a positive number",
        float,
        0.05,
    ),
    "lr_per_256": _Key(
        0.1,
        "Learning rate per 256 images of global batch for the linear scaling rule.",
        _positive,
        "a positive number",
    ),
    "warmup_epochs": _Key(
        5.0,
        "Epochs of linear warm-up for the 'goyal', 'polynomial' and 'cosine' schedules "
        "(ignored by 'slow_start' and 'constant').",
        _nonneg,
        "a non-negative number of epochs",
    ),
    "warmup_init_factor": _Key(
        0.0,
        "Warm-up start as a fraction of the base rate (Goyal et al. started at 256 / batch).",
        _nonneg,
        "a non-negative number",
    ),
    "slow_start_boundaries": _Key(
        (40.0, 70.0, 85.0),
        "Epochs at which the 'slow_start' schedule moves to the next factor.",
        _increasing_epochs,
        "a strictly increasing sequence of non-negative epochs",
    ),
    "slow_start_factors": _Key(
        (0.5, 0.075, 0.01, 0.001),
        "Multiples of the base rate on each 'slow_start' interval (one more than boundaries).",
        _nonneg_sequence,
        "a non-empty sequence of non-negative numbers",
    ),
    "goyal_boundaries": _Key(
        (30.0, 60.0, 80.0),
        "Epochs at which the 'goyal' schedule multiplies the rate by goyal_decay_factor.",
        _increasing_epochs,
        "a strictly increasing sequence of non-negative epochs",
    ),
    "goyal_decay_factor": _Key(
        0.1,
        "Factor applied at each of goyal_boundaries.",
        _nonneg,
        "a non-negative number",
    ),
    "polynomial_power": _Key(
        2.0,
        "Power of the 'polynomial' decay (2 in the LARS/MLPerf ResNet-50 recipe).",
        _positive,
        "a positive number",
    ),
    "end_learning_rate_factor": _Key(
        0.0,
        "Final rate of the 'polynomial' and 'cosine' schedules, as a fraction of the base rate.",
        _nonneg,
        "a non-negative number",
    ),
    # --- weight decay ----------------------------------------------------------------------
    "weight_decay": _Key(
        1e-4,
        "L2 coefficient, added to the gradient as weight_decay * param before the optimizer "
        "(docs/recipe.md section 4; for 'lamb' it is LAMB's decoupled decay).",
        _nonneg,
        "a non-negative number",
    ),
    "weight_decay_exclude_1d": _Key(
        False,
        "Exempt 1-D parameters (normalization scales/offsets, biases) from weight decay. False "
        "for the paper: docs/recipe.md section 4 states plain L2 on the gradient, and Chainer's "
        "WeightDecay hook (the paper's software) decays every parameter.",
        lambda x: isinstance(x, bool),
        "True or False",
    ),
    # --- momentum / RMSprop warm-up --------------------------------------------------------
    "momentum": _Key(
        0.9,
        "mu1: momentum of rmsprop_warmup's Delta, of momentum/nesterov SGD, and of LARS.",
        _unit_interval_open,
        "a number in [0, 1)",
    ),
    "rmsprop_learning_rate": _Key(
        3e-4,
        "eta_rmsprop: step size of the RMSprop part of rmsprop_warmup (global).",
        _nonneg,
        "a non-negative number",
    ),
    "rmsprop_decay": _Key(
        0.99,
        "mu2: decay of rmsprop_warmup's squared-gradient average m.",
        _unit_interval_open,
        "a number in [0, 1)",
    ),
    "eps": _Key(
        1e-8,
        "rmsprop_warmup's epsilon, added to sqrt(m).",
        _positive,
        "a positive number",
    ),
    "beta_center": _Key(
        10.0,
        "Epoch at which alpha_sgd = 0.5 (RMSprop -> SGD hand-over).",
        _nonneg,
        "a non-negative number of epochs",
    ),
    "beta_period": _Key(
        5.0,
        "Epochs; alpha_sgd reaches 1 at beta_center + beta_period / 2.",
        _positive,
        "a positive number of epochs",
    ),
    "delta_dtype": _Key(
        "float32",
        "dtype of rmsprop_warmup's Delta buffer ('bfloat16' halves its memory).",
        _one_of(*DELTA_DTYPES),
        f"one of {DELTA_DTYPES}",
    ),
    # --- LARS / LAMB -----------------------------------------------------------------------
    "lars_trust_coefficient": _Key(
        0.001,
        "LARS trust coefficient eta (You et al. 2017).",
        _positive,
        "a positive number",
    ),
    "lars_eps": _Key(
        0.0,
        "Added to the denominator of the LARS trust ratio.",
        _nonneg,
        "a non-negative number",
    ),
    "lars_exclude_1d": _Key(
        True,
        "LARS: exempt 1-D parameters (BN, biases) from trust-ratio adaptation and weight decay, "
        "the usual LARS recipe (You et al. 2017; MLPerf).",
        lambda x: isinstance(x, bool),
        "True or False",
    ),
    "lamb_b1": _Key(0.9, "LAMB first-moment decay.", _unit_interval_open, "a number in [0, 1)"),
    "lamb_b2": _Key(0.999, "LAMB second-moment decay.", _unit_interval_open, "a number in [0, 1)"),
    "lamb_eps": _Key(1e-6, "LAMB epsilon.", _positive, "a positive number"),
}


def _slow_start_factor_count(cfg: Mapping[str, Any]) -> str | None:
    n_bounds, n_factors = len(cfg["slow_start_boundaries"]), len(cfg["slow_start_factors"])
    if n_factors != n_bounds + 1:
        return (
            f"config.optimizer.slow_start_factors has {n_factors} entries but "
            f"config.optimizer.slow_start_boundaries has {n_bounds}; expected {n_bounds + 1} "
            "factors"
        )
    return None


OPTIMIZER = Section("optimizer", _KEYS, rules=(_slow_start_factor_count,))
OPTIMIZER_CONFIG_DOCS: dict[str, str] = {key: spec.doc for key, spec in _KEYS.items()}


def default_optimizer_config() -> ml_collections.ConfigDict:
    """Every ``config.optimizer`` key with its default: the paper's recipe.

    See ``OPTIMIZER_CONFIG_DOCS`` for what each key means.
    """
    return OPTIMIZER.defaults()


def validate_optimizer_config(cfg: Mapping[str, Any] | ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` (a ValueError) naming the offending key, its value and what is
    allowed: no unknown or missing keys, every value in range, one more slow-start factor than
    boundaries."""
    OPTIMIZER.validate(cfg)
