"""Optimizers and schedules: RMSprop warm-up as optax transformations, the recipe registry
(``config.optimizer.name`` / ``.schedule`` -> a builder with its own keys) and the factory."""

from lmsgd.optim.config import (
    OPTIMIZER_CONFIG_DOCS,
    OPTIMIZER_NAMES,
    SCHEDULE_NAMES,
    default_optimizer_config,
    validate_optimizer_config,
)
from lmsgd.optim.factory import (
    base_learning_rate,
    build_recipe,
    create_optimizer,
    learning_rate_schedule,
)
from lmsgd.optim.plotting import plot_schedules
from lmsgd.optim.recipes import multi_dim_mask, schedule_reaches_zero
from lmsgd.optim.registry import (
    OPTIMIZERS,
    SCHEDULES,
    BuildContext,
    Built,
    OptimizerRecipe,
    ScheduleRecipe,
    register_optimizer,
    register_schedule,
)
from lmsgd.optim.rmsprop_warmup import (
    RMSpropWarmupState,
    has_rms_buffer,
    rmsprop_warmup,
    scale_by_rmsprop_warmup,
    with_rms_buffer,
    without_rms_buffer,
)
from lmsgd.optim.scaling import scale_epochs
from lmsgd.optim.schedules import (
    alpha_sgd_schedule,
    constant_schedule,
    cosine_warmup_schedule,
    goyal_schedule,
    handover_complete_step,
    linear_scaling_rule,
    polynomial_warmup_schedule,
    slow_start_schedule,
)

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_CONFIG_DOCS",
    "OPTIMIZER_NAMES",
    "SCHEDULES",
    "SCHEDULE_NAMES",
    "BuildContext",
    "Built",
    "OptimizerRecipe",
    "RMSpropWarmupState",
    "ScheduleRecipe",
    "alpha_sgd_schedule",
    "base_learning_rate",
    "build_recipe",
    "constant_schedule",
    "cosine_warmup_schedule",
    "create_optimizer",
    "default_optimizer_config",
    "goyal_schedule",
    "handover_complete_step",
    "has_rms_buffer",
    "learning_rate_schedule",
    "linear_scaling_rule",
    "multi_dim_mask",
    "plot_schedules",
    "polynomial_warmup_schedule",
    "register_optimizer",
    "register_schedule",
    "rmsprop_warmup",
    "scale_by_rmsprop_warmup",
    "scale_epochs",
    "schedule_reaches_zero",
    "slow_start_schedule",
    "validate_optimizer_config",
    "with_rms_buffer",
    "without_rms_buffer",
]
