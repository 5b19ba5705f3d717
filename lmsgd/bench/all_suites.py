"""Every suite in one process: step, allreduce, optimizer and input (``--quick``: each quick).

Runs the suites one after the other with their defaults (or their ``--quick`` settings),
prints each table and a summary of wall times, and writes each suite's JSON plus
``bench_all_<time>.json`` (the summary, with the path of each suite's record) to
``--results_dir``.
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

from lmsgd.bench import common

ORDER = ("step", "allreduce", "optimizer", "input")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suites", default=",".join(ORDER), help=f"comma-separated subset of {ORDER}"
    )
    common.add_common_arguments(parser)


def _suite_args(name: str, args: argparse.Namespace) -> argparse.Namespace:
    from lmsgd.bench import SUITES

    module = importlib.import_module(SUITES[name])
    parser = argparse.ArgumentParser(prog=f"lmsgd.bench {name}")
    module.add_arguments(parser)
    argv = ["--results_dir", args.results_dir]
    if args.quick:
        argv.append("--quick")
    if args.devices is not None and any("--devices" in a.option_strings for a in parser._actions):
        argv += ["--devices", str(args.devices)]
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lmsgd.bench import SUITES

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in ORDER]
    if unknown:
        raise ValueError(f"--suites has unknown {unknown}; allowed: {ORDER}")
    devices = common.setup_devices(args.devices)  # before any suite starts JAX
    start = time.perf_counter()
    summary: dict[str, Any] = {}
    for name in suites:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        record = importlib.import_module(SUITES[name]).run(_suite_args(name, args))
        summary[name] = {"wall_s": time.perf_counter() - t0, "json_path": record["json_path"]}
    total = time.perf_counter() - start
    record = common.new_record("all", devices, {"suites": suites, "quick": bool(args.quick)})
    record["results"] = summary
    record["wall_s"] = total
    print("\n=== all ===")
    rows = [[name, r["wall_s"], r["json_path"]] for name, r in summary.items()]
    print(common.table(rows + [["total", total, ""]], ["suite", "wall s", "json"]))
    record["json_path"] = common.write_record(record, args.results_dir, "all", args.json)
    return record
