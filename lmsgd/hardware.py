"""What a measurement ran on: the machine and the library versions, in one public place.

`hardware_info()` (CPU model, usable cores, memory, platform, nice level, load average and the
`versions()` of the numerical libraries) goes into every results file whose numbers depend on
the machine: experiments, benchmarks.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
from collections.abc import Sequence
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax")


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None where it is not installed)."""
    found: dict[str, str | None] = {}
    for pkg in packages:
        try:
            found[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy a shared machine was (timings depend on it)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def usable_cores() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def hardware_info() -> dict[str, Any]:
    """The machine (without initializing JAX): CPU, cores, memory, platform, load, versions."""
    return {
        "cpu": cpu_model(),
        "cpu_cores": usable_cores(),
        "memory_gb": memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_platforms": os.environ.get("JAX_PLATFORMS"),
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "load_average_at_start": load_average(),
        **versions(),
    }
