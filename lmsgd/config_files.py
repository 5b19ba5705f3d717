"""Where `--config` finds its file: a path, or the name of a config shipped with lmsgd.

The repository's top-level `configs/` folder is the one place configs are written. A pip
install (wheel or git URL) carries it as the package `lmsgd.configs` (pyproject.toml maps the
folder there), so from any directory

    python -m lmsgd.train --config default --workdir DIR          # = configs/default.py
    python -m lmsgd.train --config cifar10_large_batch/f_paper:quick --workdir DIR

work as `--config configs/default.py` does inside a checkout. A path that exists always wins.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from lmsgd.errors import ConfigError

_PACKAGE = pathlib.Path(__file__).resolve().parent


def config_dir() -> pathlib.Path | None:
    """The shipped configs: `lmsgd/configs` in an installed wheel, `configs/` beside the
    package in a checkout (editable installs and PYTHONPATH); None if neither is there."""
    for folder in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if (folder / "default.py").is_file():
            return folder
    return None


def shipped_names() -> list[str]:
    """Names of the shipped configs (`default`, `cifar10_large_batch/f_paper`, ...)."""
    folder = config_dir()
    if folder is None:
        return []
    return sorted(
        str(p.relative_to(folder).with_suffix(""))
        for p in folder.rglob("*.py")
        if p.name != "__init__.py"
    )


def resolve(spec: str) -> str:
    """`file.py[:arg]` -> an existing file's path, keeping `:arg`.

    `spec` is used as given when it names a file; otherwise it is looked up among the shipped
    configs, with or without `.py` and a leading `configs/`. Raises ConfigError naming the
    shipped configs when neither finds it.
    """
    path, sep, arg = spec.partition(":")
    if os.path.isfile(path):
        return spec
    folder = config_dir()
    name = path.removeprefix("configs/").removeprefix("./configs/")
    if folder is not None:
        for candidate in (folder / name, folder / f"{name}.py"):
            if candidate.is_file() and candidate.name != "__init__.py":
                return f"{candidate}{sep}{arg}"
    shipped = ", ".join(shipped_names()) or "none found"
    raise ConfigError(
        f"config file {path!r} not found: give a path to a config file, or the name of a "
        f"shipped config ({shipped})"
    )


def resolve_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with the value of `--config` (either `--config=X` or `--config X`) resolved."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + resolve(a.split("=", 1)[1])
            break
        if a == "--config" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
            break
    return out
