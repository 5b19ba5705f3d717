"""Optimizers and schedules: RMSprop warm-up, slow-start and baseline schedules, the factory."""

from lmsgd.optim.config import (
    OPTIMIZER_CONFIG_DOCS,
    OPTIMIZER_NAMES,
    SCHEDULE_NAMES,
    default_optimizer_config,
    validate_optimizer_config,
)
from lmsgd.optim.factory import (
    base_learning_rate,
    create_optimizer,
    learning_rate_schedule,
    multi_dim_mask,
    schedule_reaches_zero,
)
from lmsgd.optim.plotting import plot_schedules
from lmsgd.optim.rmsprop_warmup import RMSpropWarmupState, rmsprop_warmup
from lmsgd.optim.scaling import scale_epochs
from lmsgd.optim.schedules import (
    alpha_sgd_schedule,
    constant_schedule,
    cosine_warmup_schedule,
    goyal_schedule,
    linear_scaling_rule,
    polynomial_warmup_schedule,
    slow_start_schedule,
)

__all__ = [
    "scale_epochs",
    "OPTIMIZER_CONFIG_DOCS",
    "OPTIMIZER_NAMES",
    "SCHEDULE_NAMES",
    "RMSpropWarmupState",
    "alpha_sgd_schedule",
    "base_learning_rate",
    "constant_schedule",
    "cosine_warmup_schedule",
    "create_optimizer",
    "schedule_reaches_zero",
    "default_optimizer_config",
    "goyal_schedule",
    "learning_rate_schedule",
    "linear_scaling_rule",
    "multi_dim_mask",
    "plot_schedules",
    "polynomial_warmup_schedule",
    "rmsprop_warmup",
    "slow_start_schedule",
    "validate_optimizer_config",
]
