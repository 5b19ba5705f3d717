"""Config sections as data: each key's default, meaning and check, in one table.

Every section (`config.model`, `config.optimizer`, ...) is a `Section` of `Key`s; its
defaults, its command-line types and its validation all derive from that table, so they
cannot drift apart. `Section.validate` is the one validator: unknown keys (with the closest
valid names), missing keys, bad values and the section's cross-key rules, each with one
message that names `config.<section>.<key>`, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections

from lmsgd.errors import ConfigError


class Key(NamedTuple):
    default: Any
    doc: str
    check: Callable[[Any], bool]
    allowed: str
    # Type of a None default, so that `--config.key=value` can set it (a typed placeholder).
    kind: type | None = None
    # A valid non-default value, for tests that set every key from the command line.
    example: Any = None


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
    def check(x: Any) -> bool:
        # `x in choices` would take 1 for True and 0.0 for False.
        return any(x is c or (type(x) is type(c) and x == c) for c in choices)

    check.choices = choices  # type: ignore[attr-defined]  # for "did you mean" hints
    return check


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda x: x is None or check(x)


def closest(name: str, candidates: Sequence[str]) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)


def _bool_from_string(x: Any) -> Any:
    """'True'/'False' from the command line, for keys whose default is a string ('auto')."""
    if isinstance(x, str) and x.lower() in ("true", "false"):
        return x.lower() == "true"
    return x


@dataclasses.dataclass(frozen=True)
class Section:
    """One config section: its keys and the rules that involve several keys.

    Attributes:
      name: 'model', 'optimizer', ...; '' for the top level.
      keys: key name -> `Key`.
      rules: functions of the section returning an error message (or None) for rules that
        involve several keys.
      type_safe: ml_collections type safety. False for sections with keys that legitimately
        switch type ('auto' or a bool).
    """

    name: str
    keys: Mapping[str, Key]
    rules: tuple[Callable[[Mapping[str, Any]], str | None], ...] = ()
    type_safe: bool = True

    def path(self, key: str) -> str:
        return f"config.{self.name}.{key}" if self.name else f"config.{key}"

    def defaults(self) -> ml_collections.ConfigDict:
        """Every key with its default; None defaults become typed placeholders."""
        cfg = ml_collections.ConfigDict(type_safe=self.type_safe)
        for key, spec in self.keys.items():
            if spec.default is None and spec.kind is not None:
                cfg[key] = ml_collections.config_dict.placeholder(spec.kind)
            else:
                cfg[key] = spec.default
        return cfg

    def normalize(self, cfg: ml_collections.ConfigDict) -> None:
        """Converts command-line strings 'True'/'False' of bool-or-string keys in place."""
        for key, spec in self.keys.items():
            if key in cfg and isinstance(cfg[key], str) and spec.check(True):
                value = _bool_from_string(cfg[key])
                if value is not cfg[key]:
                    with cfg.ignore_type():
                        cfg[key] = value

    def validate(self, cfg: Mapping[str, Any], *, nested: Sequence[str] = ()) -> None:
        """Raises ConfigError naming the first bad key, its value and what is allowed."""
        present = [k for k in cfg if k not in nested]
        unknown = sorted(set(present) - set(self.keys))
        if unknown:
            key = unknown[0]
            near = closest(key, list(self.keys))
            hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else ""
            raise ConfigError(
                f"unknown config key {self.path(key)}{hint} "
                f"(keys of {'config.' + self.name if self.name else 'the top level'}: "
                f"{', '.join(sorted(self.keys))})"
            )
        missing = sorted(set(self.keys) - set(present))
        if missing:
            raise ConfigError(
                f"config is missing {', '.join(self.path(k) for k in missing)}; start config "
                "files from lmsgd.config.base_config()"
            )
        for key, spec in self.keys.items():
            value = cfg[key]
            if not spec.check(value):
                choices = [c for c in getattr(spec.check, "choices", ()) if isinstance(c, str)]
                near = closest(value, choices) if isinstance(value, str) else []
                hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
                raise ConfigError(
                    f"{self.path(key)}={value!r} is invalid{hint}; expected {spec.allowed}"
                )
        for rule in self.rules:
            message = rule(cfg)
            if message:
                raise ConfigError(message)
