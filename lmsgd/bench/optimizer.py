"""Optimizer update: time and state bytes of rmsprop_warmup vs stock optax compositions.

For a model's parameter shapes (default ResNet-50, 25,557,032 float32 values), times one
jitted update (``tx.update`` + ``optax.apply_updates``, parameters and state donated) of:

* ``rmsprop_warmup``: lmsgd's fused transformation (docs/recipe.md s.1) as the optimizer factory
  builds it; also with its default ``saturate=True`` and compiled with the eta = 0 limit;
* ``stock_rmsprop_warmup``: the same update composed from stock optax parts
  (``scale_by_schedule``, ``scale_by_rms``, ``trace``, ``scale_by_learning_rate``; the only
  glue is a two-line "sum of two branches" combinator optax lacks). Before timing, the run
  checks that it produces the same parameters as ``rmsprop_warmup`` over steps that cross the
  RMSprop -> SGD hand-over and learning-rate changes;
* ``rmsprop_warmup_wd`` and ``stock_rmsprop_warmup_wd``: the two with the paper's weight decay
  (1e-4 on kernels): inside ``rmsprop_warmup``, and as ``optax.add_decayed_weights`` before
  the stock composition (also checked equal);
* ``sgd_momentum``: ``optax.sgd(momentum=0.9)``, the plain baseline.

State bytes are reported against parameter bytes; ``rmsprop_warmup`` must hold exactly two
parameter-sized buffers (m and Delta) plus a step counter. Memory traffic is XLA's cost
analysis ("bytes accessed") per parameter, of ``tx.update`` alone and of the timed update
(``+ apply_updates``), next to its floor: every state buffer and the gradient read once, every
state buffer and the step (or the parameters) written once, e.g. 24 and 28 bytes per float32
parameter for the two buffers of RMSprop warm-up (28 and 28 with weight decay, which reads the
parameter). Compile time is that of the timed update, fastest of two rounds in opposite
orders. Prints a table and writes JSON to ``--results_dir``.

With ``--target tpu:<version>:<topology>`` nothing is timed: every update is compiled for one
chip of that TPU slice through libtpu (no TPU needed) and the compiled kernels' own traffic
is held against the same floor (XLA:CPU has one output per loop, so its 36 bytes for the
three outputs of RMSprop warm-up are not what an accelerator runs).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from typing import Any

from lmsgd.bench import common

# Schedules of the equivalence check: 1 step per "epoch", so a few steps cover the whole
# hand-over (alpha_sgd from 0.5 e^-1.5 to 1 at step 5) and three learning rates.
CHECK_STEPS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet50", help="parameter shapes of this model")
    parser.add_argument("--reps", type=int, default=None, help="minimum timed updates")
    parser.add_argument("--min_seconds", type=float, default=None)
    parser.add_argument(
        "--rounds", type=int, default=3, help="optimizers alternate in this many timed rounds"
    )
    parser.add_argument("--check_steps", type=int, default=CHECK_STEPS)
    parser.add_argument(
        "--target",
        default=None,
        help="compile (not run) every update for one chip of this accelerator, e.g. "
        "'tpu:v5p:2x2x1' (needs libtpu, `pip install -e .[plan]`; no TPU needed), and report "
        "its fused kernels' traffic against the floor instead of timing on this machine",
    )
    common.add_common_arguments(parser)


def _sum_of(*transforms):
    """Glue optax lacks: every transform sees the same input; their outputs are added."""
    import jax
    import optax

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None):
        outs, states = zip(*(t.update(updates, s, params) for t, s in zip(transforms, state)))
        return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *outs), tuple(states)

    return optax.GradientTransformation(init, update)


def stock_rmsprop_warmup(
    learning_rate, alpha_sgd, rmsprop_learning_rate, momentum=0.9, decay=0.99, eps=1e-8
):
    """RMSprop warm-up from stock optax parts (all arguments schedules; learning_rate > 0).

    ``direction = alpha g + (1 - alpha) eta_rms / eta * g / (sqrt(m) + eps)``,
    ``trace = mu trace + direction`` (= -Delta), update ``= -eta * trace`` (= eta Delta).
    """
    import optax

    rms_coefficient = lambda c: (1.0 - alpha_sgd(c)) * rmsprop_learning_rate(c) / learning_rate(c)
    return optax.chain(
        _sum_of(
            optax.scale_by_schedule(alpha_sgd),
            optax.chain(
                optax.scale_by_rms(decay=decay, eps=eps, initial_scale=0.0, eps_in_sqrt=False),
                optax.scale_by_schedule(rms_coefficient),
            ),
        ),
        optax.trace(decay=momentum),
        optax.scale_by_learning_rate(learning_rate),
    )


def optimizers(steps_per_epoch: float = 1.0) -> dict[str, Any]:
    """name -> (optax transformation, description), sharing the same schedules."""
    import optax

    from lmsgd.optim import (
        alpha_sgd_schedule,
        multi_dim_mask,
        rmsprop_warmup,
        schedule_reaches_zero,
        slow_start_schedule,
    )

    lr = slow_start_schedule(1.6, steps_per_epoch, boundaries=(2, 4, 6))
    alpha = alpha_sgd_schedule(steps_per_epoch, beta_center=3.0, beta_period=4.0)
    eta_rms = lambda c: 3e-4
    # As create_optimizer builds it: the slow-start rate is never 0, so no eta = 0 limit, and
    # no saturation of huge gradients (the train step refuses those steps by their norm).
    can_be_zero = schedule_reaches_zero(lr, int(8 * steps_per_epoch))
    ours = functools.partial(
        rmsprop_warmup, lr, alpha, rmsprop_learning_rate=3e-4,
        learning_rate_can_be_zero=can_be_zero, saturate=False,
    )  # fmt: skip
    decay = functools.partial(optax.add_decayed_weights, WEIGHT_DECAY, mask=multi_dim_mask)
    return {
        "rmsprop_warmup": (
            ours(),
            "lmsgd.optim.rmsprop_warmup as create_optimizer builds it (slow start)",
        ),
        "rmsprop_warmup_saturated": (
            ours(saturate=True),
            "the same with saturate=True (the transformation's default)",
        ),
        "rmsprop_warmup_eta0": (
            ours(learning_rate_can_be_zero=True),
            "rmsprop_warmup compiled with the eta = 0 limit (schedules that reach 0)",
        ),
        "stock_rmsprop_warmup": (
            stock_rmsprop_warmup(lr, alpha, eta_rms),
            "same update from optax scale_by_schedule/scale_by_rms/trace/scale_by_lr",
        ),
        "rmsprop_warmup_wd": (
            ours(weight_decay=WEIGHT_DECAY, weight_decay_mask=multi_dim_mask),
            "rmsprop_warmup with the paper's weight decay inside (the factory's whole chain)",
        ),
        "stock_rmsprop_warmup_wd": (
            optax.chain(decay(), stock_rmsprop_warmup(lr, alpha, eta_rms)),
            "optax.add_decayed_weights, then the stock composition",
        ),
        "sgd_momentum": (optax.sgd(lr, momentum=0.9), "optax.sgd(momentum=0.9) baseline"),
    }


# The paper's L2 weight decay (docs/recipe.md s.4), on kernels only as multi_dim_mask selects.
WEIGHT_DECAY = 1e-4
# Pairs compared in the summary: ours, its stock-optax equivalent.
PAIRS = {"": ("rmsprop_warmup", "stock_rmsprop_warmup"),
         "_wd": ("rmsprop_warmup_wd", "stock_rmsprop_warmup_wd")}  # fmt: skip


def traffic_floor(
    state_buffers: int, param_bytes: int = 4, reads_params: float = 0.0
) -> dict[str, float]:
    """Fewest bytes per parameter an update can move: read the gradient and each state buffer,
    write each state buffer and the step (``update``); with ``apply_updates`` also read the
    parameter, and write the parameter instead of the step (``update_and_apply``). Weight
    decay makes the update read the parameter too, for the fraction ``reads_params`` of the
    parameters that decay (the same bytes with ``apply_updates``, which reads it anyway)."""
    reads = (1 + state_buffers + reads_params) * param_bytes
    update = reads + (state_buffers + 1) * param_bytes
    return {"update": update, "update_and_apply": update + (1 - reads_params) * param_bytes}


def decayed_fraction(name: str, shapes) -> float:
    """Fraction of the parameters whose update reads them for weight decay: the kernels
    (``multi_dim_mask``) for the ``_wd`` optimizers, none for the others."""
    if name not in PAIRS["_wd"]:
        return 0.0
    sizes = [(math.prod(s), len(s) > 1) for s in shapes.values()]
    return sum(n for n, decays in sizes if decays) / sum(n for n, _ in sizes)


def check_equivalence(shapes, steps: int = CHECK_STEPS, rtol: float = 1e-5) -> dict[str, Any]:
    """Runs each pair of ``PAIRS`` (rmsprop_warmup and its stock-optax composition, without and
    with weight decay) side by side; raises if they differ.

    Gradients change every step (fresh noise times a per-tensor scale spread over 1e-3..1e1,
    so RMSprop's normalization matters). Returns the largest difference of the updates,
    relative to the largest update of that step, per pair.
    """
    opts = optimizers()
    worst = {}
    for suffix, (a, b) in PAIRS.items():
        worst[f"max_relative_update_difference{suffix}"], param_diff = _compare(
            opts[a][0], opts[b][0], f"{b} differs from {a}", shapes, steps, rtol
        )
        worst[f"max_abs_param_difference{suffix}"] = param_diff
    return {"steps": steps, **worst, "rtol": rtol}


def _compare(a_tx, b_tx, what: str, shapes, steps: int, rtol: float) -> tuple[float, float]:
    """Largest relative update difference over ``steps`` and the final parameter difference."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    params = common.random_tree(shapes, 0, 0.05)
    scales = {n: 10.0 ** (4 * i / max(1, len(shapes) - 1) - 3) for i, n in enumerate(shapes)}

    @jax.jit
    def both(params_a, params_b, sa, sb, g):
        ua, sa = a_tx.update(g, sa, params_a)
        ub, sb = b_tx.update(g, sb, params_b)
        diff = jnp.max(jnp.stack([
            jnp.max(jnp.abs(ua[n] - ub[n])) / (jnp.max(jnp.abs(ua[n])) + 1e-30) for n in shapes
        ]))  # fmt: skip
        new_a = jax.tree.map(jnp.add, params_a, ua)
        return new_a, jax.tree.map(jnp.add, params_b, ub), sa, sb, diff

    rng = np.random.default_rng(1)
    sa, sb = a_tx.init(params), b_tx.init(params)
    pa, pb = params, params
    worst = 0.0
    for step in range(steps):
        g = {n: rng.standard_normal(shape, np.float32) * np.float32(scales[n])
             for n, shape in shapes.items()}  # fmt: skip
        pa, pb, sa, sb, diff = both(pa, pb, sa, sb, g)
        worst = max(worst, float(diff))
        if not float(diff) <= rtol:
            raise AssertionError(
                f"{what} at step {step}: max relative difference of updates "
                f"{float(diff):.3g} > {rtol}"
            )
    param_diff = max(float(np.max(np.abs(np.asarray(pa[n]) - np.asarray(pb[n])))) for n in shapes)
    return worst, param_diff


def state_bytes(opt_state, params) -> dict[str, Any]:
    """Bytes of an optimizer state, and how many parameter-sized buffers it holds."""
    import jax

    nbytes = lambda x: x.size * x.dtype.itemsize  # arrays and jax.ShapeDtypeStruct alike
    param_leaves = jax.tree.leaves(params)
    param_bytes = sum(nbytes(x) for x in param_leaves)
    leaves = jax.tree.leaves(opt_state)
    total = sum(nbytes(x) for x in leaves)
    scalar = [x for x in leaves if x.ndim == 0]
    array_bytes = total - sum(nbytes(x) for x in scalar)
    # A parameter-sized buffer: a sub-tree with the parameters' structure and shapes.
    buffers = 0

    def count(node):
        nonlocal buffers
        same = jax.tree.structure(node) == jax.tree.structure(params) and all(
            a.shape == b.shape for a, b in zip(jax.tree.leaves(node), param_leaves)
        )
        if same:
            buffers += 1
            return
        children = (
            list(node) if isinstance(node, (tuple, list))
            else list(node.values()) if isinstance(node, dict) else []
        )  # fmt: skip
        for child in children:
            count(child)

    count(opt_state)
    return {
        "param_bytes": param_bytes,
        "state_bytes": total,
        "state_over_param_bytes": total / param_bytes,
        "array_state_over_param_bytes": array_bytes / param_bytes,
        "param_sized_buffers": buffers,
        "scalar_leaves": len(scalar),
        "scalar_bytes": total - array_bytes,
    }


def _compile_update(tx, params, opt_state, grads) -> tuple[Any, float]:
    """The timed update (``tx.update`` + ``apply_updates``, params and state donated),
    compiled, and the seconds lower + compile took."""
    import jax
    import optax

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    t0 = time.perf_counter()
    compiled = jax.jit(update, donate_argnums=(0, 1)).lower(params, opt_state, grads).compile()
    return compiled, time.perf_counter() - t0


def run_for_target(args: argparse.Namespace) -> dict[str, Any]:
    """Compile every update for one chip of ``args.target`` and read its fused kernels.

    XLA:CPU compiles one output per loop, so an update with three outputs cannot reach its
    floor there; the TPU (and GPU) compiler fuses sibling loops into multi-output kernels.
    This compiles, without the accelerator, what such a chip would run, and counts the bytes
    its kernels read and write (``common.fusion_traffic``) against the same floor."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from lmsgd.bench.allreduce import model_shapes
    from lmsgd.plan import targets as targets_lib

    try:  # a bad target, an unknown topology or no libtpu: one line, not a traceback
        target = targets_lib.parse_target(args.target)
        if target.kind != "tpu":
            raise targets_lib.PlanError(
                f"--target {args.target!r}: only TPU targets compile here (libtpu); a GPU "
                "compiles only on a GPU host, where the timed benchmark runs instead"
            )
        device = targets_lib.tpu_devices(target)[0]
    except targets_lib.PlanError as e:
        raise SystemExit(f"error: {e}") from None
    replicated = NamedSharding(Mesh([device], ("d",)), P())
    shapes = model_shapes(args.model)
    elements = sum(math.prod(s) for s in shapes.values())
    on_chip = lambda tree: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree
    )
    params = on_chip({k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()})
    results = {}
    for name, (tx, description) in optimizers().items():
        opt_state = on_chip(jax.eval_shape(tx.init, params))
        info = state_bytes(opt_state, params)
        floor = traffic_floor(
            info["param_sized_buffers"], reads_params=decayed_fraction(name, shapes)
        )
        update_only = jax.jit(tx.update).lower(params, opt_state, params).compile()
        compiled, compile_s = _compile_update(tx, params, opt_state, params)
        row = {"description": description, "compile_s": compile_s, **info}
        for key, program in (("update", update_only), ("update_and_apply", compiled)):
            traffic = common.fusion_traffic(program.as_text())
            row[key] = {
                "fusions": traffic["fusions"],
                "outputs_per_fusion": traffic["outputs_per_fusion"],
                "fused_bytes_per_param": traffic["bytes"] / elements,
                "floor_bytes_per_param": floor[key],
                "over_floor": traffic["bytes"] / elements / floor[key],
                "xla_bytes_per_param": common.compiled_cost(program)["bytes_accessed"] / elements,
            }
        results[name] = row
    config = {
        "model": args.model,
        "param_elements": elements,
        "param_tensors": len(shapes),
        "target": target.spec,
        "device_kind": device.device_kind,
        "notes": "compiled with libtpu for one chip of the target, not run; fused bytes: "
        "logical bytes of every top-level fusion's operands and outputs (lmsgd.bench.common."
        "fusion_traffic); xla: the TPU compiler's cost analysis (adds tile padding and "
        "prefetch copies)",
    }
    record = common.new_record("optimizer", [], config)
    record["results"] = results
    record["summary"] = {
        f"fused_bytes_over_floor_{key}{suffix}": results[PAIRS[suffix][0]][key]["over_floor"]
        for suffix in PAIRS
        for key in ("update", "update_and_apply")
    }
    print_target_table(record)
    record["json_path"] = common.write_record(record, args.results_dir, "optimizer", args.json)
    return record


def print_target_table(record: dict[str, Any]) -> None:
    c = record["config"]
    print(
        f"optimizer update compiled for one {c['device_kind']} chip ({c['target']}, not run), "
        f"{c['model']} shapes ({c['param_elements']:,} float32 in {c['param_tensors']} tensors)"
    )
    rows = []
    for name, r in record["results"].items():
        u, a = r["update"], r["update_and_apply"]
        outputs = sorted(set(a["outputs_per_fusion"]))
        rows.append([
            name, a["fusions"], "/".join(str(o) for o in outputs),
            f"{u['fused_bytes_per_param']:.2f} / {u['floor_bytes_per_param']:.2f}",
            f"{a['fused_bytes_per_param']:.2f} / {a['floor_bytes_per_param']:.2f}",
            a["over_floor"], f"{u['xla_bytes_per_param']:.1f} / {a['xla_bytes_per_param']:.1f}",
        ])  # fmt: skip
    header = [
        "optimizer", "kernels (+apply)", "outputs/kernel", "fused B/param update / floor",
        "+apply / floor", "+apply over floor", "XLA cost B/param update / +apply",
    ]  # fmt: skip
    print(common.table(rows, header))
    print(
        "fused B/param: bytes the compiled kernels read and write (each operand read once, "
        "each output written once, logical sizes) per parameter; floor: as in the timed "
        "table; XLA cost: the TPU compiler's own figure, which adds tile padding of small "
        "vectors and its prefetch copies into on-chip memory"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check equivalence, time every optimizer; print a table; write JSON; return it.
    With ``--target``, compile for that accelerator instead (:func:`run_for_target`)."""
    if args.target:
        return run_for_target(args)
    devices = common.setup_devices(args.devices)
    import jax

    from lmsgd.bench.allreduce import model_shapes

    reps = args.reps or (6 if args.quick else 30)
    rounds = max(1, min(args.rounds, reps))
    min_seconds = args.min_seconds if args.min_seconds is not None else (
        0.5 if args.quick else 3.0
    )  # fmt: skip
    shapes = model_shapes(args.model)
    equivalence = check_equivalence(shapes, steps=args.check_steps)

    grads = common.random_tree(shapes, 2, 1e-2)
    elements = sum(math.prod(s) for s in shapes.values())
    results, calls = {}, {}
    for name, (tx, description) in optimizers().items():
        params = common.random_tree(shapes, 0, 0.05)
        opt_state = jax.jit(tx.init)(params)
        info = state_bytes(opt_state, params)
        compiled, compile_s = _compile_update(tx, params, opt_state, grads)
        # tx.update alone: the figure comparable with the update's own floor.
        update_only = jax.jit(tx.update).lower(grads, opt_state, params).compile()
        update_cost = common.compiled_cost(update_only)
        update_memory = common.compiled_memory(update_only)
        del update_only
        box = {"p": params, "s": opt_state}

        def call(box=box, compiled=compiled):
            box["p"], box["s"] = compiled(box["p"], box["s"], grads)
            return box["p"]

        calls[name] = (call, box)
        cost = common.compiled_cost(compiled)
        results[name] = {
            "description": description,
            **info,
            "xla_bytes_accessed": cost["bytes_accessed"],
            "xla_flops": cost["flops"],
            "memory": common.compiled_memory(compiled),
            "update_only_bytes_accessed": update_cost["bytes_accessed"],
            "update_only_temp_bytes": update_memory.get("temp", 0),
            "bytes_per_param_update": update_cost["bytes_accessed"] / elements,
            "bytes_per_param_update_and_apply": cost["bytes_accessed"] / elements,
            "floor_bytes_per_param": traffic_floor(
                info["param_sized_buffers"], reads_params=decayed_fraction(name, shapes)
            ),
            "compile_s": [compile_s],
        }
        del params, opt_state
    # Compile time: a second round in reverse order (caches cleared), the fastest one counts,
    # so that no optimizer is always the first compiled in the process.
    for name, (tx, _) in reversed(list(optimizers().items())):
        jax.clear_caches()
        abstract = jax.eval_shape(lambda tx=tx: (grads, tx.init(grads)))  # params are grad-like
        results[name]["compile_s"].append(_compile_update(tx, *abstract, grads)[1])
        results[name]["compile_s_min"] = min(results[name]["compile_s"])
    # Alternating rounds: load from other processes on a shared machine hits every optimizer
    # alike, so the ratios hold even where absolute times drift.
    times: dict[str, list[float]] = {name: [] for name in calls}
    faults = dict.fromkeys(calls, 0)
    for round_ in range(rounds):
        for name, (call, _) in calls.items():
            if round_ == 0:
                for _ in range(2):  # warm-up, outside the page-fault count
                    common.block(call())
            before = common.minor_page_faults()
            times[name] += common.time_calls(
                call,
                warmup=0,
                reps=max(1, reps // rounds),
                min_seconds=min_seconds / rounds,
                max_reps=max(reps, 200),
            )
            faults[name] += common.minor_page_faults() - before
    for name, (_, box) in calls.items():
        if not all(bool(jax.numpy.isfinite(x).all()) for x in jax.tree.leaves(box["p"])):
            raise FloatingPointError(f"{name}: non-finite parameters")
        t = common.median(times[name])
        results[name].update(
            update_s_median=t,
            update_s_min=min(times[name]),
            reps=len(times[name]),
            effective_bytes_per_s=results[name]["xla_bytes_accessed"] / t,
            minor_page_faults_per_update=faults[name] / len(times[name]),
        )
    del calls
    rw = results["rmsprop_warmup"]
    if rw["param_sized_buffers"] != 2 or rw["array_state_over_param_bytes"] != 2.0:
        raise AssertionError(
            f"rmsprop_warmup state is not exactly two parameter-sized buffers: {rw}"
        )
    for r in results.values():
        r["time_vs_rmsprop_warmup"] = r["update_s_median"] / rw["update_s_median"]
    summary = {}
    for suffix, (a, b) in PAIRS.items():
        ours, stock = results[a], results[b]
        summary.update({
            f"time_rmsprop_warmup_over_stock{suffix}":
                ours["update_s_median"] / stock["update_s_median"],
            f"bytes_rmsprop_warmup_over_stock{suffix}":
                ours["xla_bytes_accessed"] / stock["xla_bytes_accessed"],
            f"compile_rmsprop_warmup_over_stock{suffix}":
                ours["compile_s_min"] / stock["compile_s_min"],
            f"bytes_update_over_floor{suffix}":
                ours["bytes_per_param_update"] / ours["floor_bytes_per_param"]["update"],
        })  # fmt: skip
    config = {
        "model": args.model,
        "param_elements": elements,
        "param_tensors": len(shapes),
        "param_dtype": "float32",
        "reps": reps,
        "rounds": rounds,
        "min_seconds": min_seconds,
        "quick": bool(args.quick),
        "device": str(jax.devices()[0]),
        "notes": "one update = tx.update + optax.apply_updates, jitted, params and state "
        "donated, on one device; optimizers alternate in `rounds` timed rounds; schedules: "
        "slow_start(1.6, boundaries 2/4/6 steps), alpha_sgd(beta_center=3, beta_period=4 steps)",
    }
    record = common.new_record("optimizer", devices[:1], config)
    record["equivalence"] = equivalence
    record["results"] = results
    record["summary"] = summary
    print_table(record)
    record["json_path"] = common.write_record(record, args.results_dir, "optimizer", args.json)
    return record


def print_table(record: dict[str, Any]) -> None:
    c, hw, eq = record["config"], record["hardware"], record["equivalence"]
    print(
        f"optimizer update, {c['model']} shapes ({c['param_elements']:,} float32 in "
        f"{c['param_tensors']} tensors), one {hw['device_kind']} ({hw['platform']})"
    )
    rows = []
    for name, r in record["results"].items():
        rows.append(
            [
                name,
                r["compile_s_min"],
                r["update_s_median"] * 1e3,
                r["time_vs_rmsprop_warmup"],
                f"{r['bytes_per_param_update']:.0f} / {r['floor_bytes_per_param']['update']:.1f}",
                f"{r['bytes_per_param_update_and_apply']:.0f} / "
                f"{r['floor_bytes_per_param']['update_and_apply']:.1f}",
                r["effective_bytes_per_s"] / 1e9,
                common.human_bytes(r["state_bytes"]),
                r["state_over_param_bytes"],
                r["param_sized_buffers"],
                r["scalar_leaves"],
                common.human_bytes(r["update_only_temp_bytes"]),
                common.human_bytes(r["memory"].get("temp", 0)),
                r["minor_page_faults_per_update"],
            ]
        )
    print(
        common.table(
            rows,
            [
                "optimizer",
                "compile s",
                "update ms",
                "vs ours",
                "B/param update / floor",
                "+apply / floor",
                "GB/s (XLA bytes)",
                "state",
                "state/params",
                "param-sized bufs",
                "scalars",
                "temp update",
                "temp +apply",
                "minflt/update",
            ],
        )  # fmt: skip
    )
    print(
        "compile s: lower + compile of the timed update, fastest of 2 rounds in opposite "
        "orders; B/param: XLA cost analysis bytes accessed per parameter of tx.update alone "
        "and of the timed update (+ optax.apply_updates, donated); floor: read gradient and "
        "state (and parameters), write state and step (or parameters) once; minflt/update: "
        "minor page faults per timed update (getrusage)"
    )
    for suffix, (a, b) in PAIRS.items():
        print(
            f"{b} == {a} over {eq['steps']} steps: max relative update difference "
            f"{eq['max_relative_update_difference' + suffix]:.2g} (tolerance {eq['rtol']:g}), "
            f"max |param difference| {eq['max_abs_param_difference' + suffix]:.2g}"
        )
    sm = record["summary"]
    for suffix, (a, b) in PAIRS.items():
        print(
            f"{a} / {b}: {sm['time_rmsprop_warmup_over_stock' + suffix]:.3f}x time, "
            f"{sm['bytes_rmsprop_warmup_over_stock' + suffix]:.3f}x bytes (update + apply), "
            f"{sm['compile_rmsprop_warmup_over_stock' + suffix]:.2f}x compile; update alone "
            f"{sm['bytes_update_over_floor' + suffix]:.2f}x its floor"
        )
