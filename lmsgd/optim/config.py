"""The ``config.optimizer`` section: common keys, plus one sub-section per registered recipe.

::

    config.optimizer.name = "rmsprop_warmup"    # an optimizer recipe (lmsgd.optim.recipes)
    config.optimizer.schedule = "slow_start"    # a learning-rate schedule recipe
    config.optimizer.base_learning_rate, .lr_per_256, .weight_decay, .weight_decay_exclude_1d
    config.optimizer.rmsprop_warmup.beta_center = 10.0   # that recipe's own keys
    config.optimizer.lars.trust_coefficient = 0.001      # (every recipe's section is present;
    config.optimizer.goyal.boundaries = (30., 60., 80.)  #  only the named ones are read)

Defaults are the paper's recipe. ``OPTIMIZER_CONFIG_DOCS`` documents every key (sub-section
keys as ``'<recipe>.<key>'``); :func:`default_optimizer_config` and
:func:`validate_optimizer_config` are built from the same tables (the common keys here, each
recipe's in :mod:`lmsgd.optim.recipes`), so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from lmsgd.errors import ConfigError
from lmsgd.optim import (
    recipes,  # noqa: F401  (registers the built-in recipes)
    registry,
)
from lmsgd.schema import Key, Section, is_bool, nonneg, one_of, positive

OPTIMIZER_NAMES = tuple(registry.OPTIMIZERS)
SCHEDULE_NAMES = tuple(registry.SCHEDULES)

# Keys of the older flat optimizer section, where the rule "old key = <recipe>_<key>" does not
# say where they went.
_RENAMED = {
    "rmsprop_learning_rate": ("rmsprop_warmup.rmsprop_learning_rate",),
    "rmsprop_decay": ("rmsprop_warmup.decay",),
    "end_learning_rate_factor": ("polynomial.end_factor", "cosine.end_factor"),
}


def _common_keys() -> dict[str, Key]:
    optimizers, schedules = tuple(registry.OPTIMIZERS), tuple(registry.SCHEDULES)
    return {
        "name": Key(
            "rmsprop_warmup",
            "Optimizer recipe: "
            + "; ".join(f"'{n}': {r.doc}" for n, r in registry.OPTIMIZERS.items())
            + ". Its keys are in config.optimizer.<name>.",
            one_of(*optimizers),
            f"one of {optimizers}",
        ),
        "schedule": Key(
            "slow_start",
            "Learning-rate schedule, independent of `name`: "
            + "; ".join(f"'{n}': {r.doc}" for n, r in registry.SCHEDULES.items())
            + ". Its keys are in config.optimizer.<schedule>.",
            one_of(*schedules),
            f"one of {schedules}",
        ),
        "base_learning_rate": Key(
            None,
            "Global base learning rate eta_base; None: linear scaling rule "
            "lr_per_256 * global_batch / 256 (12.8 at 32,768).",
            lambda x: x is None or positive(x),
            "None or a positive number",
            float,
            0.05,
        ),
        "lr_per_256": Key(
            0.1,
            "Learning rate per 256 images of global batch for the linear scaling rule.",
            positive,
            "a positive number",
        ),
        "weight_decay": Key(
            1e-4,
            "L2 coefficient, added to the gradient as weight_decay * param before the "
            "optimizer (docs/recipe.md section 4; for 'lamb' it is LAMB's decoupled decay).",
            nonneg,
            "a non-negative number",
        ),
        "weight_decay_exclude_1d": Key(
            False,
            "Exempt 1-D parameters (normalization scales/offsets, biases) from weight decay. "
            "False for the paper: docs/recipe.md section 4 states plain L2 on the gradient, "
            "and Chainer's WeightDecay hook (the paper's software) decays every parameter.",
            is_bool,
            "True or False",
        ),
    }


def _owner(name: str) -> str:
    kind = "optimizer" if name in registry.OPTIMIZERS else "schedule"
    return f"the {name!r} {kind}"


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """``config.optimizer``: the interface of :class:`lmsgd.schema.Section` (``name``, ``keys``,
    ``defaults``, ``normalize``, ``validate``) over the common keys and one sub-section per
    registered recipe, read from the registry when called (a recipe registered later is in)."""

    name: str = "optimizer"

    def common(self) -> Section:
        return Section(self.name, _common_keys())

    def subsections(self) -> dict[str, Section]:
        return {
            n: Section(f"{self.name}.{n}", r.keys, rules=r.rules)
            for n, r in registry.sections().items()
        }

    @property
    def keys(self) -> dict[str, Key]:
        """Every key, those of sub-sections as ``'<recipe>.<key>'``."""
        out = dict(_common_keys())
        for sub, section in self.subsections().items():
            out.update({f"{sub}.{k}": spec for k, spec in section.keys.items()})
        return out

    def path(self, key: str) -> str:
        return f"config.{self.name}.{key}"

    def defaults(self) -> ml_collections.ConfigDict:
        cfg = self.common().defaults()
        for sub, section in self.subsections().items():
            cfg[sub] = section.defaults()
        return cfg

    def normalize(self, cfg: ml_collections.ConfigDict) -> None:
        self.common().normalize(cfg)
        for sub, section in self.subsections().items():
            if isinstance(cfg.get(sub), ml_collections.ConfigDict):
                section.normalize(cfg[sub])

    def where_it_went(self, key: str) -> list[str]:
        """Sub-section paths of a key that is not one of config.optimizer's own: a recipe's
        key put at the top, or a key of the older flat section."""
        subs = self.subsections()
        if key in _RENAMED:
            return [self.path(p) for p in _RENAMED[key]]
        homes = [self.path(f"{s}.{key}") for s, sec in subs.items() if key in sec.keys]
        for s, sec in subs.items():  # lars_eps -> lars.eps
            if key.startswith(s + "_") and key[len(s) + 1 :] in sec.keys:
                homes.append(self.path(f"{s}.{key[len(s) + 1 :]}"))
        return homes

    def validate(self, cfg: Mapping[str, Any]) -> None:
        """Raises ConfigError naming the first bad key, its value and what is allowed."""
        subs = self.subsections()
        common = self.common()
        for key in sorted(k for k in cfg if k not in common.keys and k not in subs):
            homes = self.where_it_went(key)
            if homes:
                raise ConfigError(
                    f"config key {self.path(key)} belongs to a recipe's own section: "
                    f"{' or '.join(homes)}"
                )
        common.validate(cfg, nested=tuple(subs))
        for sub, section in subs.items():
            if sub not in cfg:
                raise ConfigError(
                    f"config is missing {self.path(sub)} (the keys of {_owner(sub)}); start "
                    "config files from lmsgd.config.base_config()"
                )
            value = cfg[sub]
            if not isinstance(value, Mapping | ml_collections.ConfigDict):
                raise ConfigError(
                    f"{self.path(sub)}={value!r} is invalid; expected the section of "
                    f"{_owner(sub)} (keys: {', '.join(section.keys)})"
                )
            for key in sorted(k for k in value if k not in section.keys):
                others = [self.path(f"{s}.{key}") for s, sec in subs.items() if key in sec.keys]
                if key in common.keys:
                    others.append(self.path(key))
                if others:
                    raise ConfigError(
                        f"unknown config key {self.path(f'{sub}.{key}')}: {_owner(sub)} has "
                        f"keys {', '.join(section.keys)}; did you mean {' or '.join(others)}?"
                    )
            section.validate(value)


OPTIMIZER = OptimizerSection()


def optimizer_config_docs() -> dict[str, str]:
    """Every key of ``config.optimizer`` (sub-section keys as ``'<recipe>.<key>'``) -> its doc."""
    return {key: spec.doc for key, spec in OPTIMIZER.keys.items()}


OPTIMIZER_CONFIG_DOCS: dict[str, str] = optimizer_config_docs()


def default_optimizer_config() -> ml_collections.ConfigDict:
    """Every ``config.optimizer`` key with its default: the paper's recipe.

    See ``OPTIMIZER_CONFIG_DOCS`` for what each key means.
    """
    return OPTIMIZER.defaults()


def validate_optimizer_config(cfg: Mapping[str, Any] | ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` (a ValueError) naming the offending key, its value and what is
    allowed: no unknown, misplaced or missing keys, every value in range, each recipe's rules
    (e.g. one more slow-start factor than boundaries).

    >>> cfg = default_optimizer_config().to_dict()
    >>> cfg["lars_eps"] = 1e-5  # the flat key of before the registry
    >>> try:
    ...     validate_optimizer_config(cfg)
    ... except ValueError as e:  # one line (wrapped here)
    ...     print(e)
    config key config.optimizer.lars_eps belongs to a recipe's own section:
    config.optimizer.lars.eps
    """
    OPTIMIZER.validate(cfg)
