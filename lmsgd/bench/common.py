"""Shared helpers of the JAX benchmark suites: devices, timing, environment record, output.

Kept free of TensorFlow (the ``input`` suite has its own) so that importing a JAX suite is
cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lmsgd import hardware as hardware_lib

DEFAULT_CPU_DEVICES = 8


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--devices, --results_dir, --quick: every JAX suite has them."""
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help=f"devices to use (default: all; on CPU {DEFAULT_CPU_DEVICES} simulated devices, "
        "set with jax_num_cpu_devices before JAX starts)",
    )
    parser.add_argument("--results_dir", default="./results", help="JSON output folder")
    if "--json" not in parser._option_string_actions:
        parser.add_argument(
            "--json", default=None, help="write the JSON to this file instead of --results_dir"
        )
    parser.add_argument("--quick", action="store_true", help="smallest useful setting")


def setup_devices(requested: int | None) -> list:
    """The first ``requested`` devices of the default backend (all of them if None).

    Before JAX's backends start, asks for ``requested`` (default 8) simulated CPU devices; this
    affects only the CPU backend, so it is harmless on GPU/TPU. If the backends are already up
    (in-process tests, ``all``), uses what is there and fails if there are too few.
    """
    import jax

    # JAX refuses the setting once its backends are up: then use what is there.
    with contextlib.suppress(RuntimeError):
        jax.config.update("jax_num_cpu_devices", max(requested or DEFAULT_CPU_DEVICES, 1))
    devices = jax.devices()
    if requested is None:
        return list(devices)
    if requested > len(devices):
        raise ValueError(
            f"--devices={requested} but JAX has {len(devices)} {devices[0].platform} devices "
            "(on CPU the count is fixed when JAX starts: pass --devices on a fresh process)"
        )
    return list(devices[:requested])


def cores() -> int:
    return hardware_lib.usable_cores() or 1


def hardware(devices: Sequence[Any] | None = None) -> dict[str, Any]:
    """Host CPU and memory (`lmsgd.hardware`, the one probe), and the accelerator (platform,
    kind, count) the suite ran on."""
    mem_gb = hardware_lib.memory_gb()
    load = hardware_lib.load_average()
    out: dict[str, Any] = {
        "cpu": hardware_lib.cpu_model(),
        "cores_available": cores(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": int(mem_gb * 2**30) if mem_gb else None,
        "os": platform.platform(),
        "machine": platform.machine(),
        # Other processes compete for the cores on shared machines: keep the load with the data.
        "load_average_1m": load[0] if load else None,
    }
    if devices:
        import jax

        out.update(
            {
                "platform": devices[0].platform,
                "device_kind": devices[0].device_kind,
                "device_count": len(devices),
                "devices_available": jax.device_count(),
                "process_count": jax.process_count(),
            }
        )
    return out


def versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Versions of Python and the packages that decide performance (no imports needed)."""
    found = hardware_lib.versions(("jax", "jaxlib", "flax", "optax", "numpy", "lmsgd", *extra))
    return {"python": platform.python_version(),
            **{k: v or "not installed" for k, v in found.items()}}  # fmt: skip


def block(tree: Any) -> Any:
    import jax

    return jax.block_until_ready(tree)


def time_calls(
    fn: Callable[[], Any], *, warmup: int, reps: int, min_seconds: float = 0.0, max_reps=None
) -> list[float]:
    """Seconds per call of ``fn`` (each call synchronised with block_until_ready).

    Runs ``warmup`` untimed calls, then at least ``reps`` timed ones, more (up to
    ``max_reps``) while their total is below ``min_seconds``.
    """
    for _ in range(warmup):
        block(fn())
    times: list[float] = []
    limit = max_reps if max_reps is not None else max(reps, 1)
    while len(times) < reps or (sum(times) < min_seconds and len(times) < limit):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return times


def minor_page_faults() -> int:
    """Minor page faults of this process so far (``ru_minflt``; all threads, XLA's included).

    On XLA:CPU a program's temporaries are allocated per call; buffers above glibc's mmap
    threshold are fresh mappings that fault page by page on first touch (docs/performance.md).
    """
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is one `error:` line from argparse)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def compiled_cost(compiled: Any) -> dict[str, float]:
    """XLA's cost analysis of a compiled program (per device for SPMD programs)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per computation
        analysis = analysis[0]
    analysis = analysis or {}
    return {
        "flops": float(analysis.get("flops", 0.0)),
        "bytes_accessed": float(analysis.get("bytes accessed", 0.0)),
    }


def compiled_memory(compiled: Any) -> dict[str, int]:
    """Device memory of a compiled program, per device, from ``compiled.memory_analysis()``.

    ``total_bytes`` = argument + output + temp - alias (donated inputs reused as outputs
    count once): every buffer the program holds, an upper bound of its live memory.
    ``xla_peak_bytes`` is XLA's own peak where the backend reports one (XLA:CPU's leaves out
    the temporaries, so it is not used as the headline figure).
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    out = {
        k: int(getattr(stats, f"{k}_size_in_bytes", 0) or 0)
        for k in ("argument", "output", "temp", "alias", "generated_code")
    }
    out["total_bytes"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    out["xla_peak_bytes"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    return out


def write_record(
    record: dict[str, Any], results_dir: str, suite: str, path: str | None = None
) -> str:
    """Writes ``record`` as JSON to ``path`` (``--json``) or else to
    ``results_dir/bench_<suite>_<time>.json``; returns the path."""
    if path is None:
        os.makedirs(results_dir, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        path = os.path.join(results_dir, f"bench_{suite}_{stamp}.json")
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=_jsonable)
    print(f"wrote {path}")
    return path


def write_json(record: dict[str, Any], path: str) -> str:
    """Writes ``record`` as JSON to ``path`` (folders made as needed); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2, default=_jsonable)
        f.write("\n")
    print(f"wrote {path}")
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def new_record(suite: str, devices: Sequence[Any] | None, config: dict[str, Any]) -> dict:
    return {
        "suite": suite,
        "command": " ".join(["python -m lmsgd.bench", *sys.argv[1:]]),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(),
        "hardware": hardware(devices),
        "versions": versions(),
        "config": config,
    }


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if x == 0 or not math.isfinite(x):
            return f"{x:g}"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 1:
            return f"{x:.2f}"
        return f"{x:.3g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def random_tree(
    shapes: dict[str, tuple[int, ...]],
    seed: int,
    scale: float = 1.0,
    *,
    leading: int | None = None,
    sharding: Any = None,
) -> dict[str, Any]:
    """N(0, scale^2) float32 arrays of the given shapes, made on device by one jitted call.

    One random draw for all leaves, then slices (a draw per leaf would cost a compilation per
    shape); the compiled generator is cached per shapes/layout, so new seeds cost no compile.
    ``leading`` prepends an axis (one slice per device, with ``sharding`` splitting it).
    """
    import jax

    make = _random_tree_fn(tuple((k, tuple(v)) for k, v in shapes.items()), leading, sharding)
    return make(jax.random.key(seed), scale)


@functools.lru_cache(maxsize=16)
def _random_tree_fn(items, leading, sharding):
    import jax
    import jax.numpy as jnp

    sizes = [math.prod(shape) for _, shape in items]
    total = sum(sizes)
    lead = () if leading is None else (leading,)

    def make(key, scale):
        flat = scale * jax.random.normal(key, (*lead, total), jnp.float32)
        out, start = {}, 0
        for (name, shape), size in zip(items, sizes):
            out[name] = flat[..., start : start + size].reshape(*lead, *shape)
            start += size
        return out

    return jax.jit(make, out_shardings=sharding)


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}  # fmt: skip
_ARRAY = re.compile(r"\b(\w+)\[([\d,]*)\]")


def _array_bytes(shapes: str) -> int:
    """Bytes of every array in an HLO shape string (a tuple counts all its elements), by the
    logical dimensions: tile padding and memory-space annotations are ignored."""
    total = 0
    for dtype, dims in _ARRAY.findall(shapes):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def fusion_traffic(hlo_text: str) -> dict[str, Any]:
    """Memory traffic of a compiled program's top-level fused kernels, read from its HLO.

    Counts, for every fusion of the entry computation, the logical bytes of its operands
    (each read once) and of its outputs (each written once). That is what the kernels move
    when each streams its operands once, the figure to hold against a floor. XLA's cost
    analysis is not that figure on every backend: the TPU compiler's adds tile padding (a
    64-element vector occupies an (8, 128) tile) and its own prefetch copies into on-chip
    memory. Returns ``{'fusions', 'outputs_per_fusion' (sorted list), 'bytes'}``.
    """
    from lmsgd.parallel.hlo_text import strip_index_comments

    text = strip_index_comments(hlo_text)
    entry = next((c for c in re.split(r"\n(?=\S)", text) if c.startswith("ENTRY")), "")
    defined: dict[str, str] = {}
    fusions = []
    for line in entry.splitlines():
        m = re.match(r"\s*(?:ROOT )?(%\S+) = (\([^=]*?\)|\S+) (\S+?)\((.*?)\)(?:,|$)", line)
        if not m:
            continue
        name, shape, op, operands = m.groups()
        defined[name] = shape
        if op == "fusion":
            fusions.append((shape, re.findall(r"%[\w.\-]+", operands)))
    moved = 0
    outputs = []
    for shape, operands in fusions:
        moved += _array_bytes(shape) + sum(_array_bytes(defined.get(o, "")) for o in operands)
        outputs.append(len(_ARRAY.findall(shape)))
    return {"fusions": len(fusions), "outputs_per_fusion": sorted(outputs), "bytes": moved}
