"""The command line shared by `lmsgd.train` and `lmsgd.evaluate`.

`--config FILE[:ARG]` (an ml_collections config file, or the name of a shipped config:
`lmsgd.config_files`) with `--config.key=value` overrides and `--workdir DIR`. A user error
(a bad key or value, a missing file or dataset, a locked or incompatible workdir, a diverged
run, a full disk) prints one `error:` line naming the value and what is allowed and exits
non-zero, without a traceback; `--verbose` or `LMSGD_DEBUG=1` shows it. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from lmsgd import schema
from lmsgd.errors import ConfigError, UserError

log = logging.getLogger("lmsgd")

EXIT_USAGE = 2  # the command line or the config is wrong
EXIT_FAILED = 1  # the run could not go on (data, workdir, divergence, disk)


def _debug(argv: Sequence[str]) -> bool:
    return "--verbose" in argv or os.environ.get("LMSGD_DEBUG", "") not in ("", "0")


def _config_source(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load(spec: str) -> ml_collections.ConfigDict:
    """Loads `file.py[:arg]` as the flag does, with a one-line error for a bad file."""
    from lmsgd.config import load_config_file

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (give --config default or a path)")
    try:
        return load_config_file(path, arg=arg or None)
    except Exception as e:  # the user's file: any error in it is theirs
        where = ""
        tb = e.__traceback__
        while tb is not None:
            if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
                where = f" line {tb.tb_lineno}"
            tb = tb.tb_next
        if isinstance(e, SyntaxError):
            where = f" line {e.lineno}"
        raise ConfigError(
            f"config file {path!r} failed to load ({type(e).__name__}{where}: {e})"
        ) from e


def _explain_override(
    config: ml_collections.ConfigDict, argv: Sequence[str], err: Exception
) -> str:
    """Names the override that failed: unknown keys with the closest valid names."""
    from lmsgd.config import where_it_went

    for a in argv:
        if not a.startswith("--config."):
            continue
        path, _, value = a[len("--config.") :].partition("=")
        node: Any = config
        for depth, part in enumerate(path.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                homes = where_it_went(path)
                if homes:  # a key that moved: name its new place (docs/optimizer.md)
                    kind = (
                        "a recipe's own section" if path.startswith("optimizer.") else "a section"
                    )
                    return f"config key config.{path} belongs to {kind}: {' or '.join(homes)}"
                keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                where = ".".join(path.split(".")[:depth])
                near = schema.closest(part, keys)
                hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
                return (
                    f"unknown config key config.{path}{hint} (keys of "
                    f"config{'.' + where if where else ''}: {', '.join(sorted(keys))})"
                )
            node = node[part]
        if isinstance(node, ml_collections.ConfigDict):  # a value for a whole section
            keys = sorted(node.keys())
            homes = where_it_went(path)  # `optimizer.momentum`: also a key of other recipes
            also = f"; a key of this name is in {', '.join(homes)}" if homes else ""
            return (
                f"config.{path} is a section, not a value (keys: {', '.join(keys)}): set "
                f"--config.{path}.{keys[0]}={value}{also}"
            )
    text = str(err).split("\n")[0]
    return f"bad command-line override: {text}"


def parse(
    argv: Sequence[str],
    define_extra: Callable[[Any], None] | None = None,
    *,
    require_workdir: bool = True,
) -> tuple[ml_collections.ConfigDict, Any]:
    """Parses `--config`, its overrides, `--workdir` and extra flags into (config, flags).

    Raises ConfigError for every mistake on the command line.
    """

    from lmsgd.config_files import resolve_argv

    # `--config default` names a shipped config; config_flags loads paths, so resolve it first.
    argv = resolve_argv(argv)
    # config_flags finds the override flags (--config.a.b=...) in sys.argv when the config
    # flag is defined: define and parse with `argv` in sys.argv.
    saved_argv, sys.argv = sys.argv, list(argv)
    try:
        return _parse(argv, define_extra, require_workdir)
    finally:
        sys.argv = saved_argv


def _parse(
    argv: Sequence[str], define_extra: Callable[[Any], None] | None, require_workdir: bool
) -> tuple[ml_collections.ConfigDict, Any]:
    from absl import flags
    from ml_collections import config_flags

    from lmsgd.config import validate_config

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "Config file; override keys with --config.key=value", flag_values=fv,
        lock_config=True,
    )  # fmt: skip
    flags.DEFINE_string("workdir", None, "Run directory (or gs:// bucket).", flag_values=fv)
    flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors.", flag_values=fv)
    if define_extra:
        define_extra(fv)
    spec = _config_source(argv[1:])
    if spec is None:
        raise ConfigError("--config is required (e.g. --config default or configs/default.py)")
    config = _load(spec)  # a bad file fails here, with its line
    try:
        rest = fv(list(argv))
    except Exception as e:
        raise ConfigError(_explain_override(config, argv[1:], e)) from e
    if len(rest) > 1:
        raise ConfigError(f"unexpected arguments {rest[1:]}; flags are --name=value")
    if require_workdir and not fv.workdir:
        raise ConfigError("--workdir is required (the run's directory)")
    validate_config(fv.config)
    return fv.config, fv


def key_table() -> dict[str, Any]:
    """Every config key as a dotted path (`model.bn_span`, `optimizer.lars.eps`) -> its
    `schema.Key`, from the schema tables that build `base_config()`."""
    from lmsgd.config import SECTIONS, TOP

    table: dict[str, Any] = dict(TOP.keys)
    for name, section in SECTIONS.items():
        table.update({f"{name}.{key}": spec for key, spec in section.keys.items()})
    return table


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _type_name(spec: Any) -> str:
    if spec.default is None:
        return f"{spec.kind.__name__ if spec.kind else 'any'} or None"
    return type(spec.default).__name__


def format_keys(config: ml_collections.ConfigDict) -> str:
    """`--help_keys`: one line per key of `config`: path = value (type): meaning."""
    table = key_table()
    lines = []
    for path, value in _flatten(config).items():
        spec = table.get(path)
        doc = spec.doc if spec else "(not in the schema)"
        kind = _type_name(spec) if spec else type(value).__name__
        lines.append(f"config.{path} = {value!r} ({kind}): {doc}")
    return "\n".join(lines)


def usage(prog: str, extra: Callable[[Any], None] | None = None) -> str:
    """`--help`: the command's usage and its flags (with the module docstring's first line)."""
    import importlib

    from absl import flags

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module = main if spec is not None and spec.name == prog else importlib.import_module(prog)
    doc = module.__doc__ or ""
    fv = flags.FlagValues()
    flags.DEFINE_string("config", None, "Config file or shipped name (required); override "
                        "keys with --config.KEY=VALUE", flag_values=fv)  # fmt: skip
    flags.DEFINE_string("workdir", None, "Run directory (or gs:// bucket) (required).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors.", flag_values=fv)
    if extra:
        extra(fv)
    rows = [f"  --{name}: {fv[name].help}" for name in fv]
    return "\n".join([
        f"usage: python -m {prog} --config CONFIG[:ARG] --workdir DIR [--config.KEY=VALUE ...]",
        "",
        doc.strip().split("\n\n")[0],
        "",
        "flags:",
        *rows,
        "  --help_keys: list every key of --config (default: default) with its value, type "
        "and meaning",
        "",
        "Shipped configs: " + ", ".join(_shipped()),
    ])  # fmt: skip


def _shipped() -> list[str]:
    from lmsgd import config_files

    return sorted(config_files.shipped_names())


def _orbax_filter(record: logging.LogRecord) -> bool:
    from lmsgd.checkpointing import logged_by_orbax

    if not logged_by_orbax(record):
        return True
    if record.levelno >= logging.ERROR and not _debug(sys.argv):
        # Its background threads log the error we report in one line with a traceback each.
        record.exc_info, record.exc_text = None, None
    return record.levelno >= logging.WARNING


def _setup_logging() -> None:
    """lmsgd's INFO lines (the console: `lmsgd.console`) on stderr, one format; libraries that
    log through absl (orbax's save steps) only from WARNING."""
    from absl import logging as absl_logging

    from lmsgd.console import BarAwareFilter

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_orbax_filter)
    handler.addFilter(BarAwareFilter())  # a progress bar drawn in place ends first
    for name, level in (("lmsgd", logging.INFO), ("absl", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(level)
    absl_logging.set_verbosity(absl_logging.WARNING)


def run_command(
    prog: str,
    argv: Sequence[str] | None,
    fn: Callable[[ml_collections.ConfigDict, Any], dict[str, Any]],
    define_extra: Callable[[Any], None] | None = None,
) -> int:
    """Parses the command line, runs `fn(config, flags)`, prints its result as JSON.

    Returns the exit code: 0, EXIT_USAGE for config/command-line errors, EXIT_FAILED for
    other user errors (data, workdir, divergence, full disk).
    """
    from lmsgd.workdir import as_disk_full

    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage(prog, define_extra))
        return 0
    if "--help_keys" in argv[1:]:
        return _print_keys(prog, argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _setup_logging()
    debug = _debug(argv)
    workdir = None
    try:
        config, flags = parse(argv, define_extra)
        workdir = flags.workdir
        result = fn(config, flags)
    except UserError as e:
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAILED
    except Exception as e:
        full = as_disk_full(e, workdir or ".")
        if full is None or debug:
            raise
        print(f"{prog}: error: {full}", file=sys.stderr)
        return EXIT_FAILED
    # One line, for scripts (the run's full summary is in the workdir).
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}))
    return 0


def _print_keys(prog: str, argv: Sequence[str]) -> int:
    """`--help_keys`: the keys of `--config` (with its overrides applied) or of the default."""
    from lmsgd.config_files import resolve_argv

    argv = [a for a in argv if a != "--help_keys"]
    if _config_source(argv[1:]) is None:
        argv.append("--config=default")
    try:
        spec = _config_source(resolve_argv(argv)[1:])
        print(format_keys(_load(spec or "")))
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0
