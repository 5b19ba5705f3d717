"""Host CPUs needed to feed the planned step, per training input path.

A host must decode and augment ``global batch / step time / hosts`` images per second. Each
input path's rate per CPU comes from a `python -m lmsgd.bench input` results JSON: by
default the committed one (``input_rates.json`` next to this module, measured on the
machine its ``hardware`` record names); ``--input_rates FILE`` reads one measured on the
user's own hosts. CPUs are logical CPUs as the OS counts them (``os.cpu_count()``: hardware
threads on a server, vCPUs on a cloud VM), the unit the benchmark divides by.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

DEFAULT_RATES = os.path.join(os.path.dirname(__file__), "input_rates.json")


@dataclasses.dataclass(frozen=True)
class Rates:
    """Images/s per CPU of each input path, and where they were measured."""

    per_cpu: dict[str, float]
    source: str  # the file and the machine it was measured on


def load_rates(path: str | None = None) -> Rates:
    """The per-CPU rates of a `bench input` JSON (default: the committed one)."""
    path = path or DEFAULT_RATES
    with open(path) as f:
        record = json.load(f)
    try:
        per_cpu = {k: float(r["images_per_s_per_core"]) for k, r in record["results"].items()}
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a `python -m lmsgd.bench input` results JSON") from e
    hw, c = record.get("hardware", {}), record.get("config", {})
    where = f"{hw.get('cores_available', '?')} CPUs of {hw.get('cpu') or 'an unnamed CPU'}"
    what = f"{c.get('image_size', '?')} px {c.get('dtype', '?')}"
    name = "the committed bench input results" if path == DEFAULT_RATES else path
    return Rates(per_cpu, f"{name} ({what}, {where}, {record.get('time_utc', '')[:10]})")


def host_cpus(kind: str, hw: Mapping[str, Any], devices_per_node: int) -> int | None:
    """Logical CPUs of one host of the target: a TPU host VM's (one per host, whatever its
    chips), a GPU server's scaled from the hardware's `devices_per_node` GPUs to the
    target's, or this machine's for cpu targets. None when the table does not know it."""
    if kind == "cpu":
        return os.cpu_count()
    cpus = hw.get("host_cpus")
    if not cpus:
        return None
    if kind == "tpu":
        return int(cpus)
    return int(cpus * devices_per_node // hw["devices_per_node"])


def feed(
    images_per_s: float, num_hosts: int, host_cpus: int | None, rates: Rates
) -> dict[str, Any]:
    """Per path: CPUs per host needed for ``images_per_s`` (global) over ``num_hosts``, and
    whether the host has them.

    cpus_needed = images_per_s / num_hosts / images_per_s_per_cpu.
    """
    per_host = images_per_s / max(1, num_hosts)
    paths = {}
    for name, rate in rates.per_cpu.items():
        need = per_host / rate if rate > 0 else math.inf
        paths[name] = {
            "images_per_s_per_cpu": rate,
            "cpus_needed": need,
            "enough": None if host_cpus is None else need <= host_cpus,
        }
    return {
        "images_per_s_per_host": per_host,
        "host_cpus": host_cpus,
        "rates_source": rates.source,
        "paths": paths,
    }


def format_feed(f: Mapping[str, Any], host_description: str | None) -> list[str]:
    """The plan's section on host CPUs, as lines."""
    cpus = f["host_cpus"]
    lines = [
        "",
        f"host CPUs to feed the step (rates per logical CPU: {f['rates_source']})",
        f"  {f['images_per_s_per_host']:,.0f} images/s per host; "
        + (
            f"a host has {cpus:,} logical CPUs ({host_description})"
            if cpus
            else "this target's host CPU count is not known"
        ),
        f"  {'path':<18}{'img/s/CPU':>10}{'CPUs needed':>13}",
    ]
    for name, p in f["paths"].items():
        verdict = "" if p["enough"] is None else ("  ok" if p["enough"] else "  TOO FEW CPUs")
        lines.append(
            f"  {name:<18}{p['images_per_s_per_cpu']:>10.1f}{p['cpus_needed']:>13,.1f}{verdict}"
        )
    short = [n for n, p in f["paths"].items() if p["enough"] is False]
    if short and cpus:
        lines.append(
            f"  the host's {cpus:,} CPUs cannot feed the step with: {', '.join(short)}"
            + (
                ""
                if len(short) < len(f["paths"])
                else " (no measured path does: decode on the accelerators, or cache decoded images)"
            )
        )
    return lines
