"""Train-step throughput: lmsgd's sharded step vs the usual plain-jit Flax data parallelism.

In one run, on synthetic on-device data (no I/O): compile time, steady-state step time
(median of individually synchronised steps after warm-up, the two variants alternating in
rounds), images/s (global and per device), model FLOPs per step from XLA's cost analysis of
the compiled per-device program, MFU against a peak measured in the same run (a large matmul
in the compute dtype on every device at once), peak device memory of the compiled step and
the collectives XLA compiled into it. "ours" is ``lmsgd.step.make_train_step`` with the paper's
optimizer (weight decay + rmsprop_warmup, slow start); "baseline" is
``lmsgd.bench.baseline`` (the Flax ImageNet example's step: per-device program, flax
nn.BatchNorm with moving averages, float32 gradient pmean, optax sgd with momentum), same
architecture, timed with its state donated ("baseline") and not donated
("baseline_nodonate", as the Flax ImageNet example runs), so ours is compared at equal
donation. Per variant it also reports minor page faults per step (``ru_minflt`` of
``resource.getrusage`` around the timed steps: on XLA:CPU, freshly mapped temporaries fault
page by page, a cost that depends on the host allocator, see docs/performance.md) and the
temporaries of the compiled step against the donated baseline's, in parameter-sized buffers.
Prints a table and writes JSON to ``--results_dir``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from lmsgd.bench import common

IMAGENET_TRAIN_IMAGES = 1_281_167
VARIANTS = {
    "ours": "lmsgd shard_map step: per-device BN stats, rmsprop_warmup, explicit all-reduce",
    "baseline": "Flax ImageNet example: per-device flax nn.BatchNorm (EMA), float32 gradient "
    "pmean, optax sgd momentum 0.9, state donated",
    "baseline_nodonate": "the same without donation (as the Flax ImageNet example)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="architecture (default resnet50)")
    parser.add_argument("--per_device_batch", type=int, default=None, help="default 32")
    parser.add_argument("--image_size", type=int, default=None, help="default 224")
    parser.add_argument("--num_classes", type=int, default=None, help="default 1000 (CIFAR 10)")
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--allreduce_dtype", default="float32", choices=("float32", "bfloat16", "float16")
    )
    parser.add_argument(
        "--allreduce_algorithm",
        default="flat",
        choices=("flat", "hierarchical", "two_dimensional"),
        help="non-flat ones run on a 2-D mesh (--mesh_shape, default (2, devices/2))",
    )
    parser.add_argument(
        "--allreduce_fuse",
        action="store_true",
        help="one flat gradient buffer (default: one all-reduce per tensor, combined by XLA)",
    )
    parser.add_argument("--mesh_shape", default=None, help="e.g. '2,4' (hosts,local)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant")
    parser.add_argument("--rounds", type=int, default=None, help="alternations ours/baseline")
    parser.add_argument(
        "--peak_matmul_size", type=int, default=None, help="N of the NxN peak matmul per device"
    )
    parser.add_argument(
        "--accumulation_steps",
        type=common.positive_int,
        default=1,
        help="ours runs K micro-batches of --per_device_batch per device per step (one "
        "all-reduce, one update); the baselines run one",
    )
    parser.add_argument(
        "--scan",
        action="store_true",
        help="keep the micro-batch loop rolled (lax.scan, the GPU/TPU program) on CPU too; "
        "by default CPU runs unroll it, micro-batches chained (XLA:CPU runs a loop body's "
        "backward convolutions ~20x slower)",
    )
    parser.add_argument(
        "--compile_rounds",
        type=common.positive_int,
        default=None,
        help="lower + compile every variant this many times, in alternating order (caches "
        "cleared between rounds); compile times are the fastest round's, as a slower round "
        "is the machine's noise, not the program's (default 2; 3 with --quick, whose "
        "compiles take seconds)",
    )
    parser.add_argument("--no_baseline", action="store_true", help="time our step only")
    parser.add_argument(
        "--target",
        default=None,
        help="compile ours and the baseline for a GPU or TPU target this host does not own "
        "(gpu:MODEL:GPUSxNODES, tpu:GEN:TOPOLOGY; lmsgd.bench.step_target): memory, kernels, "
        "bytes, exposed all-reduce share, no timing",
    )
    parser.add_argument(
        "--phases",
        default="warmup",
        help="with --target: ours in these phases, comma-separated, each against the same "
        "baseline: warmup (the paper's optimizer during the RMSprop warm-up, the step of a "
        "step that neither logs nor saves), warmup_norms (the same step with the gradient and "
        "parameter norms, taken on steps that log), sgd (after the hand-over to momentum SGD: "
        "no second optimizer buffer), momentum (optimizer.name='momentum'), warmup_remat "
        "(the warm-up step with model.remat=True)",
    )
    parser.add_argument(
        "--json", default=None, help="with --target: write the JSON here (default --results_dir)"
    )
    common.add_common_arguments(parser)


def _settings(args: argparse.Namespace, platform: str) -> dict[str, Any]:
    cpu = platform == "cpu"
    if args.quick:
        s = {"model": "cifar_resnet20", "per_device_batch": 8, "image_size": 32, "steps": 6,
             "warmup": 2, "rounds": 2}  # fmt: skip
    else:
        s = {"model": "resnet50", "per_device_batch": 32, "image_size": 224, "steps": 30,
             "warmup": 3, "rounds": 3}  # fmt: skip
    s["peak_matmul_size"] = (512 if args.quick else 1024) if cpu else 8192
    for k in list(s):
        if getattr(args, k, None) is not None:
            s[k] = getattr(args, k)
    s["rounds"] = max(1, min(s["rounds"], s["steps"]))
    return s


def _synthetic_batch(global_batch, image_size, num_classes, dtype, sharding):
    import jax
    import jax.numpy as jnp

    def gen(key):
        k1, k2 = jax.random.split(key)
        return {
            "image": jax.random.normal(k1, (global_batch, image_size, image_size, 3), dtype),
            "label": jax.random.randint(k2, (global_batch,), 0, num_classes, jnp.int32),
        }

    return jax.jit(gen, out_shardings=sharding)(jax.random.key(0))


def measure_peak(devices, size: int, dtype, min_seconds: float = 1.0) -> dict[str, float]:
    """FLOP/s of an NxN @ NxN matmul chain on every device at once (best of several runs).

    A chain of 4 dependent matmuls per call keeps dispatch overhead small; the result is the
    aggregate over all devices (what MFU divides by) and per device.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    n = len(devices)
    mesh = Mesh(np.asarray(devices), ("d",))
    chain = 4

    def per_device(a, b):
        x = a[0]
        for _ in range(chain):
            x = jnp.dot(x, b[0], preferred_element_type=dtype)
        return x[None]

    fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("d"), P("d")), out_specs=P("d")))
    sharding = NamedSharding(mesh, P("d"))
    key_a, key_b = jax.random.split(jax.random.key(1))
    a = jax.jit(lambda k: jax.random.normal(k, (n, size, size), dtype), out_shardings=sharding)(
        key_a
    )
    # Scaled so the chain neither overflows nor underflows.
    b = jax.jit(
        lambda k: (jax.random.normal(k, (n, size, size), jnp.float32) / math.sqrt(size)).astype(
            dtype
        ),
        out_shardings=sharding,
    )(key_b)
    compiled = fn.lower(a, b).compile()
    times = common.time_calls(
        lambda: compiled(a, b), warmup=1, reps=3, min_seconds=min_seconds, max_reps=20
    )
    best = min(times)
    flops_per_device = 2.0 * size**3 * chain
    cost = common.compiled_cost(compiled)["flops"]
    return {
        "matmul_size": size,
        "dtype": jnp.dtype(dtype).name,
        "flops_per_call_per_device": flops_per_device,
        "xla_flops_per_call_per_device": cost,
        "best_seconds": best,
        "peak_flops_per_s_total": flops_per_device * n / best,
        "peak_flops_per_s_per_device": flops_per_device / best,
    }


def _collectives_brief(summary: dict[str, dict[str, int]]) -> str:
    parts = []
    for key in sorted(summary):
        if not key.startswith(("all-reduce", "reduce-scatter", "all-gather")):
            continue
        v = summary[key]
        parts.append(f"{key} x{v['count']} {common.human_bytes(v['bytes'])}")
    return "; ".join(parts) or "none"


def ours_config(s: dict[str, Any], args: argparse.Namespace, global_batch: int):
    """The validated training config of "ours" at ``global_batch`` images per micro-batch
    (x ``args.accumulation_steps`` per step): synthetic ImageNet-sized data, the paper's
    optimizer, the all-reduce of ``args``. ``lmsgd.bench.device`` plans the same config."""
    from lmsgd.config import base_config, validate_config

    k = args.accumulation_steps
    config = base_config()
    config.update_from_flattened_dict(
        {"global_batch_size": global_batch * k, "accumulation_steps": k, "num_epochs": 90.0,
         "model.name": s["model"], "model.num_classes": s["num_classes"],
         "model.dtype": args.dtype, "model.width_multiplier": args.width_multiplier,
         "data.name": "synthetic", "data.image_size": s["image_size"],
         "data.num_classes": s["num_classes"],
         "data.num_train_examples": IMAGENET_TRAIN_IMAGES,
         "allreduce.algorithm": args.allreduce_algorithm,
         "allreduce.dtype": args.allreduce_dtype, "allreduce.fuse": args.allreduce_fuse}
    )  # fmt: skip
    validate_config(config)
    return config


def _build(variant: str, s: dict, args, mesh, n: int):
    """(jitted step, state, batch) for one variant."""
    import jax
    import jax.numpy as jnp

    from lmsgd.bench import baseline
    from lmsgd.data import get_dataset_info
    from lmsgd.models import count_params
    from lmsgd.optim import create_optimizer, default_optimizer_config
    from lmsgd.parallel import batch_sharding
    from lmsgd.run import assemble
    from lmsgd.step import make_train_step

    global_batch = s["per_device_batch"] * n
    steps_per_epoch = max(1, math.ceil(IMAGENET_TRAIN_IMAGES / global_batch))
    image_shape = (s["image_size"], s["image_size"], 3)
    rng = jax.random.key(0)
    tx, schedules = create_optimizer(
        default_optimizer_config(),
        global_batch_size=global_batch,
        steps_per_epoch=steps_per_epoch,
        num_epochs=90,
    )
    batch = _synthetic_batch(
        global_batch, s["image_size"], s["num_classes"], jnp.dtype(args.dtype),
        batch_sharding(mesh),
    )  # fmt: skip
    if variant == "ours":  # through the driver's own set-up (lmsgd.run)
        k = args.accumulation_steps
        config = ours_config(s, args, global_batch)
        run = assemble(config, mesh, get_dataset_info(config.data))
        state, fn = run.init_state(), run.train_step()
        if args.scan:
            ar = config.allreduce
            fn = make_train_step(
                run.model, run.tx, mesh, schedules=run.schedules,
                allreduce_algorithm=ar.algorithm, allreduce_dtype=ar.dtype,
                allreduce_fuse=ar.fuse, accumulation_steps=k, unroll=False,
            )  # fmt: skip
        batch = _synthetic_batch(
            global_batch * k, s["image_size"], s["num_classes"], jnp.dtype(args.dtype),
            batch_sharding(mesh),
        )  # fmt: skip
    else:  # baseline, baseline_nodonate
        model = baseline.create_baseline_model(
            s["model"], num_classes=s["num_classes"], dtype=args.dtype,
            width_multiplier=args.width_multiplier,
        )  # fmt: skip
        # Same learning-rate schedule object as ours, stock SGD with momentum.
        btx = baseline.baseline_optimizer(schedules["learning_rate"])
        state = baseline.create_baseline_state(model, btx, rng, image_shape, mesh)
        fn = baseline.make_baseline_train_step(model, btx, mesh, donate=variant == "baseline")
    return fn, state, batch, count_params(state.params), batch["label"].shape[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Compile and time each variant; print a table; write JSON; return the record."""
    if getattr(args, "target", None):  # compile only, for a deviceless GPU / TPU target
        from lmsgd.bench.step_target import run_target

        return run_target(args, _settings)
    record, _ = measure(args)
    print_table(record)
    record["json_path"] = common.write_record(record, args.results_dir, "step", args.json)
    return record


def measure(
    args: argparse.Namespace,
    *,
    variants: list[str] | None = None,
    peak: dict[str, float] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compile and time each variant on this host's devices: ``(record, compiled)``.

    ``record`` is what ``run`` prints and writes; ``compiled`` maps each variant to its
    compiled step (``jax.stages.Compiled``: its HLO, memory). ``variants`` (default: ours and
    both baselines, ours alone with ``--no_baseline``) must start with "ours"; ``peak`` reuses
    an earlier `measure_peak` of the same devices and dtype instead of measuring again.
    """
    devices = common.setup_devices(args.devices)
    import jax
    import jax.numpy as jnp

    from lmsgd.parallel import create_mesh, describe_collectives, summarize_collectives

    n = len(devices)
    s = _settings(args, devices[0].platform)
    s["num_classes"] = args.num_classes or (10 if s["model"].startswith("cifar") else 1000)
    if args.allreduce_algorithm != "flat":
        shape = (
            tuple(int(x) for x in args.mesh_shape.split(",")) if args.mesh_shape else (2, n // 2)
        )
    else:
        shape = tuple(int(x) for x in args.mesh_shape.split(",")) if args.mesh_shape else (n,)
    mesh = create_mesh(shape, devices=devices)
    global_batch = s["per_device_batch"] * n
    if variants is None:
        variants = ["ours"] if args.no_baseline else ["ours", "baseline", "baseline_nodonate"]

    built: dict[str, dict[str, Any]] = {}
    # the micro-batch loop stays a lax.scan with --scan or off CPU (lmsgd.run)
    rolled = args.scan or devices[0].platform != "cpu"
    for v in variants:
        fn, state, batch, num_params, images_per_step = _build(v, s, args, mesh, n)
        built[v] = {"fn": fn, "state": state, "batch": batch, "num_params": num_params,
                    "images_per_step": images_per_step}  # fmt: skip
    # Compile times alternate in order over rounds: whichever variant compiles first in a
    # process also pays for warming up XLA and for whatever else starts with it. Every
    # compile starts from cleared caches: the two baselines trace the same model and
    # optimizer, and the second of them would otherwise lower from the first's traces.
    compile_rounds = args.compile_rounds or (3 if args.quick else 2)
    compile_times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for round_ in range(compile_rounds):
        for v in variants if round_ % 2 == 0 else variants[::-1]:
            jax.clear_caches()
            fn = built[v]["fn"]
            num_params, images_per_step = built[v]["num_params"], built[v]["images_per_step"]
            t0 = time.perf_counter()
            lowered = fn.lower(built[v]["state"], built[v]["batch"])
            t1 = time.perf_counter()
            compiled = lowered.compile()
            t2 = time.perf_counter()
            compile_times[v].append((t1 - t0, t2 - t1))
            if round_:
                continue
            collectives = describe_collectives(compiled)
            built[v].update({
                "compiled": compiled, "times": [],
                "images_per_step": images_per_step,
                "minor_faults": 0,
                "result": {
                    "description": VARIANTS[v],
                    "num_params": num_params,
                    # XLA counts a rolled micro-batch loop body once: x K (see lmsgd.run)
                    "cost_per_device": {
                        key: value * (args.accumulation_steps if v == "ours" and rolled else 1)
                        for key, value in common.compiled_cost(compiled).items()
                    },
                    "memory_per_device": common.compiled_memory(compiled),
                    "collectives_compiled": summarize_collectives(collectives),
                    "collectives_lowered": summarize_collectives(describe_collectives(lowered)),
                },
            })  # fmt: skip
    for v in variants:
        fastest = min(compile_times[v], key=sum)
        built[v]["result"].update(
            lower_s=fastest[0],
            compile_s=fastest[1],
            compile_rounds_s=[[lo, co] for lo, co in compile_times[v]],
        )
    if len({b["result"]["num_params"] for b in built.values()}) != 1:
        raise AssertionError(
            f"baseline and ours differ in parameters: "
            f"{ {v: b['result']['num_params'] for v, b in built.items()} }"
        )

    def one_step(b):
        b["state"], metrics = b["compiled"](b["state"], b["batch"])
        b["metrics"] = metrics
        return b["state"], metrics

    for b in built.values():  # warm-up
        for _ in range(s["warmup"]):
            common.block(one_step(b))
    per_round = [s["steps"] // s["rounds"] + (r < s["steps"] % s["rounds"])
                 for r in range(s["rounds"])]  # fmt: skip
    for r, count in enumerate(per_round):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            b = built[v]
            faults = common.minor_page_faults()
            b["times"] += common.time_calls(lambda b=b: one_step(b), warmup=0, reps=count)
            b["minor_faults"] += common.minor_page_faults() - faults

    compute_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    if peak is None:
        peak = measure_peak(
            devices, s["peak_matmul_size"], compute_dtype, min_seconds=0.2 if args.quick else 1.0
        )
    # float32 parameters: a "parameter-sized buffer" (a gradient, one optimizer state buffer).
    param_bytes = 4 * built["ours"]["result"]["num_params"]
    results = {}
    for v, b in built.items():
        r = b["result"]
        times = sorted(b["times"])
        step_s = common.median(times)
        loss = float(b["metrics"]["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"{v}: loss is {loss}")
        flops_dev = r["cost_per_device"]["flops"]
        r.update(
            {
                "step_s_median": step_s,
                "step_s_min": times[0],
                "step_s_max": times[-1],
                "step_s_all": times,
                "images_per_step": b["images_per_step"],
                "images_per_s": b["images_per_step"] / step_s,
                "images_per_s_per_device": b["images_per_step"] / step_s / n,
                "model_flops_per_step_per_device": flops_dev,
                "model_flops_per_step_global": flops_dev * n,
                "achieved_flops_per_s_global": flops_dev * n / step_s,
                "mfu": flops_dev * n / step_s / peak["peak_flops_per_s_total"],
                "images_per_s_best": b["images_per_step"] / times[0],
                "memory_bytes_per_device": r["memory_per_device"].get("total_bytes", 0),
                "temp_bytes_per_device": r["memory_per_device"].get("temp", 0),
                "temp_param_buffers": r["memory_per_device"].get("temp", 0) / param_bytes,
                "minor_faults_per_step": b["minor_faults"] / len(times),
                "final_loss": loss,
            }
        )
        results[v] = r
    config = {
        **s,
        "devices": n,
        "mesh_shape": list(mesh.devices.shape),
        "global_batch": global_batch,
        "accumulation_steps": args.accumulation_steps,
        "compile_rounds": compile_rounds,
        "micro_batch_loop": "scan" if args.scan or args.accumulation_steps == 1 else "unrolled",
        "dtype": args.dtype,
        "allreduce_dtype": args.allreduce_dtype,
        "allreduce_algorithm": args.allreduce_algorithm,
        "allreduce_fuse": args.allreduce_fuse,
        "width_multiplier": args.width_multiplier,
        "quick": bool(args.quick),
        "flops_note": "XLA cost analysis of the compiled per-device (SPMD-partitioned) program "
        "of one whole train step (forward, backward, optimizer); global = per device x devices",
        "mfu_note": "global model FLOP/s over the peak of a matmul chain run on all devices "
        "at once in the compute dtype, measured in this run",
        "memory_note": "per device, from compiled.memory_analysis(): argument + output + "
        "temp - alias (donated state counted once)",
        "timing_note": "step time: median of individually synchronised steps; images_per_s "
        "from the median, images_per_s_best from the fastest step",
    }
    record = common.new_record("step", devices, config)
    record["peak"] = peak
    record["results"] = results
    if "baseline" in results:
        record["ours_over_baseline_images_per_s"] = (
            results["ours"]["images_per_s"] / results["baseline"]["images_per_s"]
        )
        record["ours_over_baseline_memory"] = results["ours"]["memory_bytes_per_device"] / max(
            1, results["baseline"]["memory_bytes_per_device"]
        )
        ours, base = results["ours"], results["baseline"]
        record["param_bytes"] = param_bytes
        # Targets of issue 16: temporaries <= the donated baseline's + one parameter-sized
        # buffer; compile (lower + compile) <= 1.2x the baseline's.
        record["ours_minus_baseline_temp_param_buffers"] = (
            ours["temp_bytes_per_device"] - base["temp_bytes_per_device"]
        ) / param_bytes
        record["ours_over_baseline_compile"] = (ours["lower_s"] + ours["compile_s"]) / (
            base["lower_s"] + base["compile_s"]
        )
    return record, {v: b["compiled"] for v, b in built.items()}


def print_table(record: dict[str, Any]) -> None:
    c, hw, peak = record["config"], record["hardware"], record["peak"]
    print(
        f"train step, {c['model']} {c['image_size']}x{c['image_size']} {c['dtype']}, "
        f"{c['devices']} x {hw['device_kind']} ({hw['platform']}, mesh {c['mesh_shape']}), "
        f"per-device batch {c['per_device_batch']} (global {c['global_batch']}), all-reduce "
        f"{c['allreduce_algorithm']}/{c['allreduce_dtype']}, {c['steps']} timed steps"
    )
    print(
        f"peak: {peak['matmul_size']}^2 {peak['dtype']} matmul on all devices at once: "
        f"{peak['peak_flops_per_s_total'] / 1e12:.3g} TFLOP/s total, "
        f"{peak['peak_flops_per_s_per_device'] / 1e12:.3g} per device"
    )
    rows = []
    for v, r in record["results"].items():
        rows.append(
            [
                v,
                r["lower_s"] + r["compile_s"],
                r["step_s_median"] * 1e3,
                r["images_per_s"],
                r["images_per_s_best"],
                r["images_per_s_per_device"],
                r["model_flops_per_step_per_device"] / 1e9,
                r["achieved_flops_per_s_global"] / 1e12,
                f"{100 * r['mfu']:.1f}%",
                common.human_bytes(r["memory_bytes_per_device"]),
                common.human_bytes(r["temp_bytes_per_device"]),
                r["temp_param_buffers"],
                common.human_bytes(r["cost_per_device"]["bytes_accessed"]),
                r["minor_faults_per_step"],
            ]
        )
    print(
        common.table(
            rows,
            [
                "variant",
                "compile s",
                "step ms",
                "images/s",
                "best img/s",
                "img/s/dev",
                "GFLOP/step/dev",
                "TFLOP/s",
                "MFU",
                "mem/dev",
                "temp/dev",
                "temp/params",
                "bytes accessed/dev",
                "minflt/step",
            ],
        )  # fmt: skip
    )
    for v, r in record["results"].items():
        print(f"  {v}: {r['description']}")
        print(f"    compiled collectives: {_collectives_brief(r['collectives_compiled'])}")
    if "ours_over_baseline_images_per_s" in record:
        print(
            f"ours / baseline: {record['ours_over_baseline_images_per_s']:.2f}x images/s, "
            f"{record['ours_over_baseline_memory']:.2f}x memory per device, "
            f"{record['ours_over_baseline_compile']:.2f}x compile time (lower + compile, "
            f"fastest of {record['config']['compile_rounds']} alternating rounds)"
        )
        print(
            "temporaries per device, ours - donated baseline: "
            f"{record['ours_minus_baseline_temp_param_buffers']:+.2f} parameter-sized buffers "
            f"({common.human_bytes(record['param_bytes'])} each); temp/params = temporaries "
            "over parameter bytes; minflt/step = minor page faults per timed step (whole "
            "process, getrusage)"
        )
