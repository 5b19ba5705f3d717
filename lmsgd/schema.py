"""Config sections as data: each key's default, meaning and check, in one table.

Every section (`config.model`, `config.optimizer`, ...) is a dict of `Key`s; its defaults and
its validation are both derived from that table, so they cannot drift apart.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import ml_collections


class Key(NamedTuple):
    default: Any
    doc: str
    check: Callable[[Any], bool]
    allowed: str
    kind: type | None = None  # the type of a None default, so --config.key=value can set it


def is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def is_bool(x: Any) -> bool:
    return isinstance(x, bool)


def positive_int(x: Any) -> bool:
    return is_int(x) and x > 0


def nonneg_int(x: Any) -> bool:
    return is_int(x) and x >= 0


def positive(x: Any) -> bool:
    return is_number(x) and x > 0


def nonneg(x: Any) -> bool:
    return is_number(x) and x >= 0


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda x: x in choices


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda x: x is None or check(x)


def defaults(keys: Mapping[str, Key]) -> ml_collections.ConfigDict:
    return with_placeholders(
        ml_collections.ConfigDict({k: spec.default for k, spec in keys.items()}),
        {k: spec.kind for k, spec in keys.items() if spec.kind is not None},
    )


def with_placeholders(
    cfg: ml_collections.ConfigDict, kinds: Mapping[str, type]
) -> ml_collections.ConfigDict:
    """Turns None values into typed placeholders.

    ml_collections cannot parse a command-line override of a plain None (it does not know the
    type); a placeholder keeps None as the default and accepts a value of its type.
    """
    for key, kind in kinds.items():
        if cfg[key] is None:
            cfg[key] = ml_collections.config_dict.placeholder(kind)
    return cfg


def validate(cfg: Mapping[str, Any], keys: Mapping[str, Key], section: str) -> None:
    """Raises ValueError naming `section.key`, the bad value and what is allowed."""
    prefix = f"{section}." if section else ""
    unknown = sorted(set(cfg.keys()) - set(keys))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; "
            f"allowed in {section or 'the top level'}: {sorted(keys)}"
        )
    missing = sorted(set(keys) - set(cfg.keys()))
    if missing:
        raise ValueError(
            f"missing config key(s) {[prefix + k for k in missing]}; start from the defaults"
        )
    for key, spec in keys.items():
        value = cfg[key]
        if isinstance(value, ml_collections.ConfigDict):
            continue  # a section, validated by its own table
        if not spec.check(value):
            raise ValueError(f"config.{prefix}{key}={value!r} is invalid; expected {spec.allowed}")
