"""Gradient all-reduce: time, algorithm and bus bandwidth per dtype, algorithm and fusion.

Times ``lmsgd.parallel.allreduce_mean`` (pre-scale, cast to the wire dtype, all-reduce,
rescale in float32; exactly what the train step runs) inside ``shard_map`` on float32
per-device gradients:

* gradient-sized: a model's parameter shapes (ResNet-50: 25,557,032 float32 values in 161
  tensors), fused into one flat buffer or one collective per tensor, for the 'flat' algorithm
  on a 1-D mesh and 'hierarchical' / 'two_dimensional' on a 2-D (hosts, local) mesh;
* a sweep of flat buffer sizes with the 'flat' algorithm;

each in float32, bfloat16 and float16. ``algbw = payload bytes / time`` (payload = elements x
wire-dtype bytes, NCCL's convention), ``busbw = algbw x 2 (n - 1) / n``. ``describe_collectives``
reports what the lowered program asks for and what XLA compiled (XLA:CPU, for one, promotes
bfloat16 all-reduces to float32). Prints a table and writes JSON to ``--results_dir``.
"""

from __future__ import annotations

import argparse
from typing import Any

from lmsgd.bench import common

DTYPES = ("float32", "bfloat16", "float16")
ALGORITHMS = ("flat", "hierarchical", "two_dimensional")
COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="parameter shapes of this model (default resnet50)"
    )
    parser.add_argument(
        "--sizes", default=None, help="comma-separated flat buffer sizes (elements) to sweep"
    )
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="wire dtypes")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--mesh_shape", default=None, help="2-D mesh, default '2,<devices/2>'")
    parser.add_argument("--reps", type=int, default=None, help="minimum timed calls per row")
    parser.add_argument(
        "--min_seconds", type=float, default=None, help="time each row at least this long"
    )
    common.add_common_arguments(parser)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        s = {"model": "cifar_resnet56", "sizes": [2**12, 2**16, 2**20], "reps": 3,
             "min_seconds": 0.1}  # fmt: skip
    else:
        s = {"model": "resnet50", "sizes": [2**k for k in range(10, 25, 2)], "reps": 5,
             "min_seconds": 0.5}  # fmt: skip
    if args.model is not None:
        s["model"] = args.model
    if args.sizes:
        s["sizes"] = [int(x) for x in args.sizes.split(",") if x.strip()]
    for k in ("reps", "min_seconds"):
        if getattr(args, k) is not None:
            s[k] = getattr(args, k)
    s["dtypes"] = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    s["algorithms"] = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    bad = [d for d in s["dtypes"] if d not in DTYPES] + [
        a for a in s["algorithms"] if a not in ALGORITHMS
    ]
    if bad:
        raise ValueError(f"unknown dtypes/algorithms {bad}; allowed {DTYPES} / {ALGORITHMS}")
    return s


def model_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a registered model (no allocation), keyed by '/'-joined path."""
    import flax

    from lmsgd.models import create_model
    from lmsgd.models.summary import abstract_variables

    params = abstract_variables(create_model(name), 224)["params"]
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def _collective_bytes(program) -> dict[str, Any]:
    from lmsgd.parallel import describe_collectives

    found = [c for c in describe_collectives(program) if c.op in COLLECTIVES]
    return {
        "bytes": sum(c.bytes for c in found),
        "count": len(found),
        "dtypes": sorted({c.dtype for c in found}),
        "ops": sorted({c.op for c in found}),
    }


def _measure(mesh, shapes, dtype: str, algorithm: str, fuse: bool, s: dict) -> dict[str, Any]:
    """Time allreduce_mean of per-device float32 gradients with these shapes."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lmsgd.parallel import allreduce_mean, data_axes

    axes = data_axes(mesh)
    n = mesh.devices.size
    spec = P(axes)

    def per_device(grads):
        local = jax.tree.map(lambda g: g[0], grads)
        return allreduce_mean(local, data_axes=axes, algorithm=algorithm, dtype=dtype, fuse=fuse)

    fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(spec,), out_specs=P()))

    grads = common.random_tree(shapes, 0, leading=n, sharding=NamedSharding(mesh, spec))
    lowered = fn.lower(grads)
    compiled = lowered.compile()
    times = common.time_calls(
        lambda: compiled(grads), warmup=1, reps=s["reps"], min_seconds=s["min_seconds"],
        max_reps=max(s["reps"], 50),
    )  # fmt: skip
    # Correctness: the mean over devices, to float32 round-off and the wire dtype's precision.
    out = compiled(grads)
    first = next(iter(shapes))
    expect = np.asarray(jax.device_get(grads[first]), np.float64).mean(0)
    tol = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}[dtype]
    if not np.allclose(np.asarray(out[first]), expect, atol=tol * 4, rtol=tol * 4):
        raise AssertionError(f"allreduce_mean {algorithm}/{dtype} gives a wrong mean")
    del out
    elements = int(sum(int(np.prod(sh)) for sh in shapes.values()))
    payload = elements * jnp.dtype(common_dtype(dtype)).itemsize
    t = common.median(times)
    algbw = payload / t
    return {
        "algorithm": algorithm,
        "fuse": fuse,
        "dtype": dtype,
        "tensors": len(shapes),
        "elements": elements,
        "payload_bytes": payload,
        "time_s_median": t,
        "time_s_min": min(times),
        "reps": len(times),
        "algbw_bytes_per_s": algbw,
        "busbw_bytes_per_s": algbw * 2 * (n - 1) / n,
        "lowered": _collective_bytes(lowered),
        "compiled": _collective_bytes(compiled),
    }


def common_dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every row; print a table; write JSON; return the record."""
    devices = common.setup_devices(args.devices)
    from lmsgd.parallel import create_mesh

    n = len(devices)
    s = _settings(args)
    mesh_1d = create_mesh((n,), devices=devices)
    two_d = (
        tuple(int(x) for x in args.mesh_shape.split(","))
        if args.mesh_shape
        else (2, n // 2)
        if n >= 4 and n % 2 == 0
        else None
    )
    mesh_2d = create_mesh(two_d, devices=devices) if two_d else None
    shapes = model_shapes(s["model"])

    rows: list[dict[str, Any]] = []
    configs = []
    for algorithm in s["algorithms"]:
        if algorithm != "flat" and mesh_2d is None:
            continue
        for fuse in (True, False):
            if algorithm != "flat" and not fuse:
                continue  # per-tensor is shown for the flat algorithm only
            configs.append(("gradient", algorithm, fuse, shapes))
    for size in s["sizes"]:
        configs.append(("sweep", "flat", True, {"buffer": (size,)}))
    for kind, algorithm, fuse, shp in configs:
        mesh = mesh_1d if algorithm == "flat" else mesh_2d
        for dtype in s["dtypes"]:
            row = _measure(mesh, shp, dtype, algorithm, fuse, s)
            row["kind"] = kind
            row["mesh_shape"] = list(mesh.devices.shape)
            rows.append(row)
    # Time and bytes relative to float32 in the same configuration.
    for row in rows:
        ref = next((r for r in rows if r["dtype"] == "float32" and _same(r, row)), None)
        if ref is not None:
            row["time_vs_float32"] = row["time_s_median"] / ref["time_s_median"]
            row["lowered_bytes_vs_float32"] = row["lowered"]["bytes"] / ref["lowered"]["bytes"]
            row["compiled_bytes_vs_float32"] = row["compiled"]["bytes"] / ref["compiled"]["bytes"]
    config = {
        **s,
        "devices": n,
        "mesh_1d": [n],
        "mesh_2d": list(two_d) if two_d else None,
        "gradient_elements": int(sum(_prod(v) for v in shapes.values())),
        "gradient_tensors": len(shapes),
        "quick": bool(args.quick),
        "notes": "time includes allreduce_mean's pre-scaling, cast to the wire dtype and back "
        "and, fused, the concatenation into one buffer; bytes are result sizes per device of "
        "all-reduce/reduce-scatter/all-gather, summed over the program",
    }
    record = common.new_record("allreduce", devices, config)
    record["results"] = rows
    summary = {}
    for dtype in ("bfloat16", "float16"):
        row = next(
            (r for r in rows if r["kind"] == "gradient" and r["algorithm"] == "flat"
             and r["fuse"] and r["dtype"] == dtype),
            None,
        )  # fmt: skip
        if row is not None and "time_vs_float32" in row:
            summary[dtype] = {
                "time_vs_float32": row["time_vs_float32"],
                "lowered_bytes_vs_float32": row["lowered_bytes_vs_float32"],
                "compiled_bytes_vs_float32": row["compiled_bytes_vs_float32"],
            }
    record["gradient_flat_fused_vs_float32"] = summary
    print_table(record)
    record["json_path"] = common.write_record(record, args.results_dir, "allreduce", args.json)
    return record


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _same(a: dict, b: dict) -> bool:
    keys = ("kind", "algorithm", "fuse", "elements", "tensors")
    return all(a[k] == b[k] for k in keys)


def print_table(record: dict[str, Any]) -> None:
    c, hw = record["config"], record["hardware"]
    print(
        f"gradient all-reduce (lmsgd allreduce_mean), {c['devices']} x {hw['device_kind']} "
        f"({hw['platform']}); gradient = {c['model']} shapes, {c['gradient_elements']:,} "
        f"float32 values in {c['gradient_tensors']} tensors; 2-D mesh {c['mesh_2d']}"
    )
    rows = []
    for r in record["results"]:
        buffer = (
            f"{c['model']} {'fused' if r['fuse'] else 'per-tensor'}"
            if r["kind"] == "gradient"
            else f"flat {r['elements']:,}"
        )
        lo, co = r["lowered"], r["compiled"]
        rows.append(
            [
                buffer,
                r["algorithm"],
                r["dtype"],
                r["time_s_median"] * 1e3,
                r["algbw_bytes_per_s"] / 1e9,
                r["busbw_bytes_per_s"] / 1e9,
                r.get("time_vs_float32", float("nan")),
                f"{common.human_bytes(lo['bytes'])} {'/'.join(lo['dtypes'])} x{lo['count']}",
                f"{common.human_bytes(co['bytes'])} {'/'.join(co['dtypes'])} x{co['count']}",
            ]
        )
    print(
        common.table(
            rows,
            [
                "buffer",
                "algorithm",
                "dtype",
                "ms",
                "algbw GB/s",
                "busbw GB/s",
                "t/t_f32",
                "lowered collectives",
                "compiled collectives",
            ],
        )  # fmt: skip
    )
    for dtype, v in record["gradient_flat_fused_vs_float32"].items():
        print(
            f"{dtype} vs float32 ({c['model']}, flat, fused): time x{v['time_vs_float32']:.2f}, "
            f"bytes lowered x{v['lowered_bytes_vs_float32']:.2f}, compiled "
            f"x{v['compiled_bytes_vs_float32']:.2f}"
        )
