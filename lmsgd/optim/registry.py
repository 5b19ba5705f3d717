"""The registry of optimizer recipes and learning-rate schedules: a name, a builder, its keys.

``config.optimizer.name`` picks an :class:`OptimizerRecipe` and ``config.optimizer.schedule`` a
:class:`ScheduleRecipe`; each owns the sub-section ``config.optimizer.<its name>`` (its keys,
defaults, checks and docs, as :class:`lmsgd.schema.Key`). Adding one is one
:func:`register_optimizer` (or :func:`register_schedule`) call, next to the others in
:mod:`lmsgd.optim.recipes`; its config keys, their validation, the command line and
``scale_epochs`` all follow from it. See docs/optimizer.md.

>>> from lmsgd.optim import OPTIMIZERS, SCHEDULES
>>> sorted(OPTIMIZERS)
['lamb', 'lars', 'momentum', 'nesterov', 'rmsprop_warmup']
>>> list(OPTIMIZERS["lars"].keys)  # config.optimizer.lars.<key>
['momentum', 'trust_coefficient', 'eps', 'exclude_1d']
>>> SCHEDULES["goyal"].epoch_keys  # what scale_epochs rescales
('warmup_epochs', 'boundaries')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import optax

from lmsgd.schema import Key


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What every optimizer recipe may use besides its own section.

    Attributes:
      learning_rate: the global learning rate per optimizer step (from the schedule recipe).
      weight_decay: ``config.optimizer.weight_decay`` (L2 on the gradient, or LAMB's decay).
      weight_decay_mask: ``lmsgd.optim.multi_dim_mask`` if ``weight_decay_exclude_1d``, else
        None (every parameter decays); optax's ``mask=`` convention (True: decay).
      exclude_1d: ``config.optimizer.weight_decay_exclude_1d``.
      steps_per_epoch: optimizer steps per epoch (global batches per pass over the data).
      total_steps: optimizer steps of the whole run.
    """

    learning_rate: optax.Schedule
    weight_decay: float
    weight_decay_mask: Callable[[Any], Any] | None
    exclude_1d: bool
    steps_per_epoch: float
    total_steps: int


class Built(NamedTuple):
    """An optimizer recipe, built: call it for the transformation.

    ``transform(**kwargs)`` is the optax transformation. ``transform`` takes its numeric
    hyperparameters as keywords, so ``optax.inject_hyperparams(transform,
    static_args=static_args)(**kwargs)`` is the same optimizer with its hyperparameters in the
    state. ``schedules`` are the recipe's own schedules of the step, for logging (the learning
    rate is logged for every recipe).
    """

    transform: Callable[..., optax.GradientTransformation]
    kwargs: dict[str, Any]
    schedules: dict[str, optax.Schedule] = {}
    static_args: tuple[str, ...] = ()

    def __call__(self) -> optax.GradientTransformation:
        return self.transform(**self.kwargs)


Rule = Callable[[Mapping[str, Any]], "str | None"]


@dataclasses.dataclass(frozen=True)
class OptimizerRecipe:
    """``config.optimizer.name = <name>``: builds the optimizer from ``config.optimizer.<name>``.

    Attributes:
      name: the value of ``config.optimizer.name``, and the name of its sub-section.
      doc: one line for the docs and the ``name`` key's help.
      keys: its sub-section's keys (default, meaning, check, allowed values).
      build: ``(section, BuildContext) -> Built``; ``section`` has exactly ``keys``, validated.
      epoch_keys: keys measured in epochs (numbers or sequences), scaled by ``scale_epochs``.
      rules: checks that involve several of its keys; each returns a message or None.
    """

    name: str
    doc: str
    keys: Mapping[str, Key]
    build: Callable[[Mapping[str, Any], BuildContext], Built]
    epoch_keys: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


@dataclasses.dataclass(frozen=True)
class ScheduleRecipe:
    """``config.optimizer.schedule = <name>``: the learning rate from ``config.optimizer.<name>``.

    Attributes:
      name, doc, keys, epoch_keys, rules: as for :class:`OptimizerRecipe`.
      build: ``(section, base_learning_rate, steps_per_epoch, num_epochs) -> optax.Schedule``,
        a function of the optimizer step giving the global learning rate.
    """

    name: str
    doc: str
    keys: Mapping[str, Key]
    build: Callable[[Mapping[str, Any], float, float, float], optax.Schedule]
    epoch_keys: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


OPTIMIZERS: dict[str, OptimizerRecipe] = {}
SCHEDULES: dict[str, ScheduleRecipe] = {}
# Keys of config.optimizer itself; no recipe may take one of these names.
COMMON_KEYS = (
    "name", "schedule", "base_learning_rate", "lr_per_256", "weight_decay",
    "weight_decay_exclude_1d",
)  # fmt: skip


def _check_new(recipe: OptimizerRecipe | ScheduleRecipe) -> None:
    taken = {**OPTIMIZERS, **SCHEDULES}
    if recipe.name in taken or recipe.name in COMMON_KEYS or not recipe.name.isidentifier():
        raise ValueError(
            f"cannot register {recipe.name!r}: names must be identifiers, unique among "
            f"optimizers {tuple(OPTIMIZERS)}, schedules {tuple(SCHEDULES)} and the keys of "
            f"config.optimizer {COMMON_KEYS}"
        )
    unknown = set(recipe.epoch_keys) - set(recipe.keys)
    if unknown:
        raise ValueError(f"{recipe.name!r}: epoch_keys {sorted(unknown)} are not among its keys")


def register_optimizer(recipe: OptimizerRecipe) -> OptimizerRecipe:
    """Adds ``recipe`` (its name must be new); returns it."""
    _check_new(recipe)
    OPTIMIZERS[recipe.name] = recipe
    return recipe


def register_schedule(recipe: ScheduleRecipe) -> ScheduleRecipe:
    """Adds ``recipe`` (its name must be new); returns it."""
    _check_new(recipe)
    SCHEDULES[recipe.name] = recipe
    return recipe


def sections() -> dict[str, OptimizerRecipe | ScheduleRecipe]:
    """Every recipe with keys, by the name of its sub-section of ``config.optimizer``."""
    return {n: r for n, r in {**OPTIMIZERS, **SCHEDULES}.items() if r.keys}
