"""CLI: ``python -m lmsgd.bench <suite> [options]`` (``--help`` per suite)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from lmsgd.bench import SUITES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lmsgd.bench", description="lmsgd benchmarks (one suite per run)."
    )
    sub = parser.add_subparsers(dest="suite", required=True, metavar="suite")
    for name, module_name in SUITES.items():
        module = importlib.import_module(module_name)
        suite_parser = sub.add_parser(
            name, help=(module.__doc__ or "").strip().splitlines()[0], description=module.__doc__
        )
        module.add_arguments(suite_parser)
        suite_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` (default sys.argv[1:]), run the suite, return its result dict."""
    args = build_parser().parse_args(argv)
    return args._module.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
