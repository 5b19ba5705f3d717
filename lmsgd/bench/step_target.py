"""`bench step --target`: ours and the Flax-style baseline compiled by a GPU or TPU compiler
for a target this host does not own (deviceless, as `lmsgd.plan` does), at the same batch.

Compared per device per step: peak memory and temporaries (`memory_analysis()`), kernels of
the entry computation (XLA:GPU: cuDNN calls, fusions, ...; TPU: fusions and other ops),
FLOPs and bytes accessed (TPU: XLA's cost analysis; XLA:GPU has none: counted from the
program, `lmsgd.plan.schedule`), the all-reduces, and the exposed share of their time on the
compiled schedule's time line (`lmsgd.plan.estimate`, the planner's assumptions). Nothing
runs; no timings.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from lmsgd.bench import common


def _devices(target):
    from lmsgd.plan import gpu as gpu_lib
    from lmsgd.plan import targets as targets_lib

    if target.kind == "tpu":
        devices = targets_lib.tpu_devices(target)
        return targets_lib.with_devices(target, devices), devices
    if target.kind == "gpu":
        if not gpu_lib.plugin_available():
            raise targets_lib.PlanError(
                f"--target {target.spec} needs the CUDA plugin to compile for GPU here: pip "
                "install -c requirements/constraints.txt -e '.[plan]'"
            )
        return target, gpu_lib.gpu_devices(target)
    raise targets_lib.PlanError(f"--target {target.spec}: give a tpu: or gpu: target")


PHASES = {
    "warmup": "the paper's optimizer during the RMSprop warm-up (a step that neither logs nor "
    "saves: no norms)",
    "warmup_norms": "the same step with the gradient and parameter norms (steps that log)",
    "warmup_remat": "the warm-up step with model.remat=True (normalize + ReLU recomputed in "
    "the backward pass)",
    "sgd": "after the hand-over to momentum SGD: no second optimizer buffer",
    "momentum": "optimizer.name='momentum' (SGD with momentum throughout)",
    "warmup_flatten": "the warm-up step with allreduce.flatten=True (gradients all-reduced "
    "as vectors)",
}


def _ours(s, args, mesh, global_batch, phase="warmup_norms"):
    from lmsgd.config import base_config, validate_config
    from lmsgd.optim import without_rms_buffer
    from lmsgd.plan import compile as compile_lib

    config = base_config()
    config.update_from_flattened_dict(
        {"global_batch_size": global_batch, "num_epochs": 90.0, "eval_batch_size": None,
         "model.name": s["model"], "model.num_classes": s["num_classes"],
         "model.dtype": args.dtype, "model.width_multiplier": args.width_multiplier,
         "data.name": "synthetic", "data.image_size": s["image_size"],
         "data.num_classes": s["num_classes"], "data.num_train_examples": 1_281_167,
         "allreduce.dtype": args.allreduce_dtype, "allreduce.fuse": args.allreduce_fuse}
    )  # fmt: skip
    if phase == "momentum":
        config.optimizer.name = "momentum"
    if phase == "warmup_remat":
        config.model.remat = True
    if phase == "warmup_flatten":
        config.allreduce.flatten = True
    validate_config(config)
    setup = compile_lib.build_step(config, mesh, norms=phase == "warmup_norms")
    state = setup.state
    if phase == "sgd":
        state = state.replace(opt_state=without_rms_buffer(state.opt_state))
    return setup.step, state, setup.batch


def _baseline(s, args, mesh, global_batch, image_dtype=None):
    """The baseline's step, state and batch; `image_dtype`: that of ours' images (default
    `--dtype`), so both steps read the same input bytes."""
    import jax
    import jax.numpy as jnp

    from lmsgd.bench import baseline
    from lmsgd.parallel import batch_sharding

    model = baseline.create_baseline_model(
        s["model"], num_classes=s["num_classes"], dtype=args.dtype,
        width_multiplier=args.width_multiplier,
    )  # fmt: skip
    tx = baseline.baseline_optimizer(0.1)
    image_shape = (s["image_size"], s["image_size"], 3)
    state = baseline.abstract_baseline_state(model, tx, jax.random.key(0), image_shape, mesh)
    data = batch_sharding(mesh)
    batch = {
        "image": jax.ShapeDtypeStruct((global_batch, *image_shape),
                                      jnp.dtype(image_dtype or args.dtype), sharding=data),
        "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=data),
    }  # fmt: skip
    return baseline.make_baseline_train_step(model, tx, mesh, donate=True), state, batch


def _figures(compiled, target, hw, mesh, per_device_batch, dtype) -> dict[str, Any]:
    from lmsgd.parallel.collectives import describe_collectives
    from lmsgd.parallel.hlo_text import strip_index_comments
    from lmsgd.plan import estimate as estimate_lib
    from lmsgd.plan import gpu as gpu_lib
    from lmsgd.plan import schedule as schedule_lib

    mem = compiled.memory_analysis()
    hlo = strip_index_comments(compiled.as_text())
    sched = schedule_lib.parse_schedule(hlo)
    xla_cost = common.compiled_cost(compiled)
    cost = {"flops": xla_cost["flops"], "bytes accessed": xla_cost["bytes_accessed"]}
    if not cost["flops"]:  # XLA:GPU has no cost analysis: count from the program
        cost = {"flops": sched.total_flops, "bytes accessed": float(sched.bytes_accessed)}
    est = estimate_lib.estimate(
        flops=cost["flops"], bytes_accessed=cost["bytes accessed"],
        collectives=describe_collectives(hlo), hw=hw, compute_dtype=dtype,
        num_devices=target.num_devices, per_node=target.devices_per_node,
        topology=target.topology, global_batch=per_device_batch * target.num_devices,
        steps_per_epoch=1, total_steps=1, schedule=sched,
    )  # fmt: skip
    reduces = schedule_lib.select(sched, "all-reduce")
    return {
        "peak_bytes": int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                          - mem.alias_size_in_bytes + mem.temp_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "kernels": gpu_lib.kernel_counts(hlo),
        "flops": cost["flops"],
        "bytes_accessed": cost["bytes accessed"],
        "allreduce": schedule_lib.summary(sched, reduces),
        "comm_s": est.comm_s,
        "exposed_allreduce_share": 1.0 - est.overlap,
    }  # fmt: skip


def run_target(args: argparse.Namespace, settings) -> dict[str, Any]:
    """Compile both variants for `args.target`; print the comparison; write JSON."""
    import jax

    if not os.environ.get("JAX_PLATFORMS"):  # compile only: no local accelerator is needed
        jax.config.update("jax_platforms", "cpu")
    from lmsgd.plan import compile as compile_lib
    from lmsgd.plan import gpu as gpu_lib
    from lmsgd.plan.hardware import HARDWARE
    from lmsgd.plan.targets import parse_target

    target, devices = _devices(parse_target(args.target))
    hw = HARDWARE[target.hardware]
    if target.kind == "tpu" and len(devices) != math.prod(target.topology):
        from lmsgd.plan.planner import _split

        hw = _split(hw, len(devices) / math.prod(target.topology))
    mesh = compile_lib.make_mesh(devices, "flat", target.devices_per_node)
    s = settings(args, target.kind)
    s["num_classes"] = args.num_classes or (10 if s["model"].startswith("cifar") else 1000)
    global_batch = s["per_device_batch"] * len(devices)
    xla_flags = os.environ.get("XLA_FLAGS", "")
    options = gpu_lib.compiler_options(xla_flags) if target.kind == "gpu" else {}
    record = common.new_record("step_target", None, {
        "target": target.spec, "devices": len(devices), **s, "dtype": args.dtype,
        "allreduce_dtype": args.allreduce_dtype,
        "compiler_options": {k: str(v) for k, v in options.items()},
    })  # fmt: skip
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        raise ValueError(f"--phases {args.phases!r}: choose from {', '.join(PHASES)}")
    record["config"]["phases"] = {p: PHASES[p] for p in phases}
    results: dict[str, Any] = {}
    image_dtype = None
    for name in [*phases, "baseline"]:
        if name != "baseline":
            fn, state, batch = _ours(s, args, mesh, global_batch, name)
            image_dtype = batch["image"].dtype
        else:
            fn, state, batch = _baseline(s, args, mesh, global_batch, image_dtype)
        compiled = fn.lower(state, batch).compile(compiler_options=options or None)
        results[name] = _figures(compiled, target, hw, mesh, s["per_device_batch"], args.dtype)
        del compiled
    b = results["baseline"]

    def ratios_of(o):
        r = {
            key: (o[key] / b[key] if b[key] else float("nan"))
            for key in ("peak_bytes", "temp_bytes", "bytes_accessed", "flops",
                        "exposed_allreduce_share")
        }  # fmt: skip
        r["kernels"] = o["kernels"]["kernels"] / max(1, b["kernels"]["kernels"])
        r["allreduces"] = o["allreduce"]["count"] / max(1, b["allreduce"]["count"])
        return r

    ratios = {p: ratios_of(results[p]) for p in phases}
    record["results"] = {"ours": results[phases[0]], **results}
    record["image_dtype"] = str(image_dtype)  # both steps'
    record["ratios_ours_over_baseline"] = ratios[phases[0]]
    record["ratios_by_phase"] = ratios
    fmt_ratio = lambda x: f"{x:.3f}"
    rows = [
        ["peak memory", *(fmt_ratio(ratios[p]["peak_bytes"]) for p in phases),
         common.human_bytes(b["peak_bytes"])],
        ["temporaries", *(fmt_ratio(ratios[p]["temp_bytes"]) for p in phases),
         common.human_bytes(b["temp_bytes"])],
        ["GB accessed", *(fmt_ratio(ratios[p]["bytes_accessed"]) for p in phases),
         f"{b['bytes_accessed'] / 1e9:.2f}"],
        ["GFLOP", *(fmt_ratio(ratios[p]["flops"]) for p in phases), f"{b['flops'] / 1e9:.0f}"],
        ["kernels", *(fmt_ratio(ratios[p]["kernels"]) for p in phases),
         b["kernels"]["kernels"]],
        ["all-reduces", *(results[p]["allreduce"]["count"] for p in phases),
         b["allreduce"]["count"]],
        ["exposed all-reduce share (time line)",
         *(f"{results[p]['exposed_allreduce_share']:.3f}" for p in phases),
         f"{b['exposed_allreduce_share']:.3f}"],
    ]  # fmt: skip
    compiler = "by XLA:GPU" if target.kind == "gpu" else "by the TPU compiler"
    print(
        f"bench step --target {target.spec}: {len(devices)} devices, {s['model']} "
        f"{s['image_size']}px, {s['per_device_batch']} per device, {args.dtype} compute, "
        f"{image_dtype} images, compiled "
        f"{compiler} (per device)"
    )
    print(common.table(rows, ["ours / baseline", *phases, "baseline"]))
    common.write_record(record, args.results_dir, "step_target", args.json)
    return record
