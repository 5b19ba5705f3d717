"""One command for a GPU box: step throughput, memory vs the planner, all-reduce, training.

    python -m lmsgd.bench device            # <= 8 minutes on a GPU box; --quick: tiny, on CPU

Sections, each recorded on its own (a failure is one line in the JSON and the table, the
others still run) and skipped with a note when the time budget (``--budget_s``, default 480 s)
would be exceeded:

* ``train``: a 100-step synthetic run through ``lmsgd.train`` (``configs/synthetic_resnet50.py``,
  256 images per device) in a subprocess: images/s from its summary.json and metrics.jsonl.
  Runs first, while this process holds no device memory.
* ``step``: ours and the Flax-style baseline (``lmsgd.bench.baseline``, donated) at 256 and 32
  images per device, ResNet-50 224 px bfloat16, timed in this process by
  ``lmsgd.bench.step.measure``: images/s and MFU (against a matmul peak measured here).
* ``allreduce``: the gradient all-reduce of our compiled step at the larger batch: its dtype
  against the one asked for (``lmsgd.parallel.collectives``) and how it is scheduled among the
  backward pass (``lmsgd.plan.schedule``).
* ``memory``: our compiled step's memory per device next to the planner's figure
  (``lmsgd.plan.plan``) for this GPU model (``device_kind`` -> ``gpu:MODEL:Nx1``; an unknown
  model is reported, not an error; on CPU the planner compiles for ``cpu:N``).
* ``default_run``: ``configs/default.py`` (digits), time permitting.

``--quick`` runs the same path at tiny sizes (cifar_resnet8, 16 px, a few steps) on 8
simulated CPU devices. Writes ``bench_device_<time>.json`` to ``--results_dir`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from lmsgd.bench import common

BUDGET_S = 480.0
SECTIONS = ("step", "memory", "allreduce", "train", "default_run")  # the table's order

# Per mode: model, sizes and the seconds each section is expected to need at least (on an
# H100 / on 2 loaded CPU cores); a section starts only if it fits in what is left.
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "model": "resnet50", "image_size": 224, "per_device_batches": (256, 32),
        "dtype": "bfloat16", "allreduce_dtype": "bfloat16", "steps": 20, "warmup": 3,
        "rounds": 2, "train_steps": 100, "train_per_device": 256, "default_epochs": None,
        "need_s": {"train": 120, "step": 90, "memory": 90, "default_run": 60},
    },
    "quick": {
        "model": "cifar_resnet8", "image_size": 16, "per_device_batches": (4, 2),
        "dtype": "bfloat16", "allreduce_dtype": "bfloat16", "steps": 2, "warmup": 1,
        "rounds": 1, "train_steps": 10, "train_per_device": 4, "default_epochs": 1.0,
        "need_s": {"train": 10, "step": 10, "memory": 5, "default_run": 10},
    },
}  # fmt: skip

# jax's device_kind (the CUDA device name) -> the planner's GPU model (lmsgd.plan.hardware),
# first match wins. The SXM part is the default for a name without a form factor.
_GPU_MODELS: tuple[tuple[str, str], ...] = (
    (r"h200", "h200"),
    (r"h100.*(pcie|nvl)", "h100-pcie"),
    (r"h100", "h100"),
    (r"b200", "b200"),
    (r"a100", "a100"),
    (r"v100", "v100"),
    (r"p100.*pcie", "p100-pcie"),
    (r"p100", "p100"),
)
# The all-reduce dtype a config asks for, as compiled HLO spells it.
HLO_DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def planner_gpu_model(device_kind: str) -> str | None:
    """The planner's GPU model (`lmsgd.plan.hardware.HARDWARE` key) for a jax ``device_kind``
    such as "NVIDIA H100 80GB HBM3"; None when the planner has no such GPU."""
    kind = device_kind.lower()
    for pattern, model in _GPU_MODELS:
        if re.search(pattern, kind):
            return model
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget_s",
        type=float,
        default=BUDGET_S,
        help="wall-time budget in seconds; a section that would exceed it is skipped",
    )
    parser.add_argument(
        "--json", default=None, help="write the JSON here (default: --results_dir/bench_device_*)"
    )
    common.add_common_arguments(parser)


class _Budget:
    """Seconds left of the run's budget, counted from its start."""

    def __init__(self, total_s: float):
        self.total_s = total_s
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def _section(
    name: str, need_s: float, budget: _Budget, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Runs ``fn`` unless ``need_s`` seconds are not left: its dict plus ``status`` ("ok",
    "failed" with ``reason``, or "skipped" with ``reason``) and ``wall_s``."""
    if budget.left() < need_s:
        reason = (
            f"budget: {max(0.0, budget.left()):.0f} s left of {budget.total_s:.0f}, the "
            f"section needs about {need_s:.0f} s"
        )
        return {"status": "skipped", "reason": reason, "wall_s": 0.0}
    print(f"--- {name} ({budget.elapsed():.0f} s of {budget.total_s:.0f} used)", flush=True)
    t0 = time.perf_counter()
    try:
        out = {"status": "ok", **fn()}
    except Exception as e:  # one section's failure must not stop the others
        out = {"status": "failed", "reason": _one_line(e)}
    out["wall_s"] = time.perf_counter() - t0
    return out


def _step_args(s: dict[str, Any], per_device: int, args: argparse.Namespace):
    from lmsgd.bench import step

    parser = argparse.ArgumentParser()
    step.add_arguments(parser)
    argv = ["--model", s["model"], "--image_size", str(s["image_size"]),
            "--per_device_batch", str(per_device), "--dtype", s["dtype"],
            "--allreduce_dtype", s["allreduce_dtype"], "--compile_rounds", "1",
            "--steps", str(s["steps"]), "--warmup", str(s["warmup"]),
            "--rounds", str(s["rounds"])]  # fmt: skip
    if args.quick:
        argv.append("--quick")
    if args.devices is not None:
        argv += ["--devices", str(args.devices)]
    return parser.parse_args(argv)


_STEP_FIGURES = ("images_per_s", "images_per_s_per_device", "mfu", "step_s_median",
                 "lower_s", "compile_s", "memory_bytes_per_device", "final_loss",
                 "collectives_compiled", "collectives_lowered")  # fmt: skip


def _run_step(s, args, state: dict[str, Any]) -> dict[str, Any]:
    """Ours and the donated baseline at each per-device batch (`lmsgd.bench.step.measure`);
    keeps the first size's compiled step and settings in ``state`` for the later sections."""
    from lmsgd.bench import step

    out: dict[str, Any] = {"per_device_batch": {}}
    peak = None
    for per_device in s["per_device_batches"]:
        step_args = _step_args(s, per_device, args)
        try:
            record, compiled = step.measure(step_args, variants=["ours", "baseline"], peak=peak)
        except Exception as e:  # the other size may still work (e.g. memory at 256)
            out["per_device_batch"][str(per_device)] = {"status": "failed",
                                                        "reason": _one_line(e)}  # fmt: skip
            continue
        peak = record["peak"]
        out["peak"] = peak
        results = record["results"]
        out["per_device_batch"][str(per_device)] = {
            "status": "ok",
            "global_batch": record["config"]["global_batch"],
            **{v: {k: r[k] for k in _STEP_FIGURES} for v, r in results.items()},
            "ours_over_baseline_images_per_s": record["ours_over_baseline_images_per_s"],
        }
        if "compiled" not in state:
            state.update(compiled=compiled["ours"], record=record, step_args=step_args)
        del compiled
    if "compiled" not in state:  # say why (the first size's reason) in the one line
        b, first = next(iter(out["per_device_batch"].items()))
        raise RuntimeError(f"no batch size ran; {b}/dev: {first['reason']}")
    return out


def _run_allreduce(state: dict[str, Any]) -> dict[str, Any]:
    """The compiled gradient all-reduce of our step: dtype, bytes, and schedule overlap."""
    from lmsgd.parallel.collectives import describe_collectives, summarize_collectives
    from lmsgd.plan import schedule as schedule_lib

    if "compiled" not in state:
        raise RuntimeError("the step section did not compile our step")
    asked = state["step_args"].allreduce_dtype
    hlo = re.sub(r"/\*index=\d+\*/", "", state["compiled"].as_text())
    reduces = [c for c in describe_collectives(hlo) if c.op == "all-reduce"]
    by_dtype: dict[str, int] = {}
    for c in reduces:
        by_dtype[c.dtype] = by_dtype.get(c.dtype, 0) + c.bytes
    platform = state["record"]["hardware"]["platform"]
    lowered = state["record"]["results"]["ours"]["collectives_lowered"]
    if not by_dtype and state["record"]["config"]["devices"] == 1:
        # XLA drops an all-reduce over one device: nothing to schedule, not a failure
        return {"per_device_batch": state["record"]["config"]["per_device_batch"],
                "asked_dtype": asked, "expected_hlo_dtype": HLO_DTYPES[asked],
                "compiled_dtype": None, "compiled_bytes_by_dtype": {}, "matches": None,
                "lowered": lowered, "compiled": {}, "overlap": {},
                "note": "one device: XLA compiles no all-reduce (run on 2+ GPUs)"}  # fmt: skip
    if not by_dtype:
        raise RuntimeError("no all-reduce in the compiled step")
    dtype = max(by_dtype, key=by_dtype.get)  # the gradients carry nearly all the bytes
    sched = schedule_lib.parse_schedule(hlo)
    overlap = schedule_lib.summary(sched, schedule_lib.select(sched, "all-reduce", {dtype}))
    overlap.pop("buffers", None)
    return {
        "per_device_batch": state["record"]["config"]["per_device_batch"],
        "asked_dtype": asked,
        "expected_hlo_dtype": HLO_DTYPES[asked],
        "compiled_dtype": dtype,
        "compiled_bytes_by_dtype": by_dtype,
        "matches": dtype == HLO_DTYPES[asked],
        "lowered": lowered,
        "compiled": summarize_collectives(reduces),
        "overlap": overlap,
        "note": "XLA:CPU promotes 16-bit all-reduces to f32; GPUs keep them"
        if platform == "cpu"
        else "",
    }


def _run_memory(state: dict[str, Any], devices: list) -> dict[str, Any]:
    """Our compiled step's memory per device next to `lmsgd.plan.plan` for this GPU model."""
    from lmsgd.bench import step
    from lmsgd.plan import plan

    if "compiled" not in state:
        raise RuntimeError("the step section did not compile our step")
    record, step_args = state["record"], state["step_args"]
    kind, platform, n = devices[0].device_kind, devices[0].platform, len(devices)
    compiled_bytes = record["results"]["ours"]["memory_bytes_per_device"]
    out: dict[str, Any] = {
        "device_kind": kind,
        "per_device_batch": record["config"]["per_device_batch"],
        "compiled_bytes": compiled_bytes,
    }
    if platform == "cpu":
        model, target = None, f"cpu:{n}"
        out["note"] = f"no GPU: the planner compiled for {target}"
    else:
        model = planner_gpu_model(kind)
        if model is None:
            from lmsgd.plan.targets import GPU_MODELS

            note = f"unknown GPU {kind!r}: the planner has {', '.join(GPU_MODELS)}"
            out.update(planner_model=None, planner_bytes=None, note=note)
            return out
        target = f"gpu:{model}:{n}x1"
    config = step.ours_config(record["config"], step_args, record["config"]["global_batch"])
    p = plan(config, target)
    out.update(
        planner_model=model,
        planner_target=p.target,
        planner_compiled_for=p.compiled_for,
        planner_bytes=p.memory["peak_bytes"],
        planner_notes=p.notes,
        compiled_over_planner=compiled_bytes / p.memory["peak_bytes"],
    )
    if p.compiled_for == "cpu-proxy":
        out["note"] = "planner fell back to a CPU proxy compile (no deviceless XLA:GPU here)"
    return out


def _train_command(config: str, workdir: str, overrides: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "lmsgd.train", "--config", config, "--workdir", workdir,
            *(f"--config.{k}={v}" for k, v in overrides.items())]  # fmt: skip


def _run_train(config: str, overrides: dict[str, Any], budget: _Budget, reserve_s: float):
    """`lmsgd.train` in a subprocess (its own devices and memory), killed when only
    ``reserve_s`` of the budget would be left; figures from summary.json and metrics.jsonl."""
    timeout = budget.left() - reserve_s
    with tempfile.TemporaryDirectory(prefix="lmsgd_bench_device_") as tmp:
        workdir = os.path.join(tmp, "run")
        cmd = _train_command(config, workdir, overrides)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1, timeout))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"stopped after {timeout:.0f} s to keep the budget") from None
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip()]
            raise RuntimeError(f"exit {proc.returncode}: {lines[-1][:200] if lines else ''}")
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            train = [r for r in map(json.loads, f) if r.get("kind") == "train"]
    return {
        "command": " ".join(cmd[1:]),
        "steps": summary["step"],
        "global_batch": overrides["global_batch_size"],
        "images_per_s": summary["images_per_s"],
        "images_per_s_last_window": train[-1]["images_per_s"] if train else None,
        "compile_s": summary["compile_time_s"],
        "final_train_loss": summary["final_train_loss"],
        "eval_top1": summary.get("eval_top1"),
        "process_wall_s": wall,
    }


def _train_overrides(s: dict[str, Any], n: int, platform: str, quick: bool) -> dict[str, Any]:
    g = s["train_per_device"] * n
    out: dict[str, Any] = {"global_batch_size": g, "eval_batch_size": g,
                           "num_epochs": 1.0, "data.num_train_examples": s["train_steps"] * g,
                           "data.num_eval_examples": g,
                           "logging.every_steps": max(1, s["train_steps"] // 5)}  # fmt: skip
    if quick:
        out.update({"model.name": s["model"], "data.image_size": s["image_size"]})
    if platform == "cpu":
        out["num_cpu_devices"] = n
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the sections within the budget; prints a table; writes JSON; returns the record."""
    from lmsgd.parallel.xla_flags import apply_gpu_xla_flags

    budget = _Budget(args.budget_s)
    # This process and the training subprocesses share the GPUs: take memory as needed
    # rather than 75% up front. lmsgd's XLA:GPU flags, as `lmsgd.train` sets them, so that
    # the step is compiled as in training. Both before JAX starts its backends.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    flags_added = apply_gpu_xla_flags()
    devices = common.setup_devices(args.devices)
    n, platform = len(devices), devices[0].platform
    s = SETTINGS["quick" if args.quick else "full"]
    need = s["need_s"]
    child_env_note = {}
    if platform == "gpu" and args.devices is not None:  # the subprocesses see these GPUs only
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(d.id) for d in devices)
        child_env_note["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    sections: dict[str, dict[str, Any]] = {}
    state: dict[str, Any] = {}
    # Training first: it then has the devices' memory to itself. It leaves time for the step.
    sections["train"] = _section("train", need["train"], budget, lambda: _run_train(
        "synthetic_resnet50", _train_overrides(s, n, platform, args.quick), budget,
        reserve_s=need["step"] + need["memory"]))  # fmt: skip
    sections["step"] = _section("step", need["step"], budget, lambda: _run_step(s, args, state))
    sections["allreduce"] = _section("allreduce", 0, budget, lambda: _run_allreduce(state))
    sections["memory"] = _section("memory", need["memory"], budget,
                                  lambda: _run_memory(state, devices))  # fmt: skip
    state.clear()  # the compiled programs: let their buffers go before the last run
    default = {"num_cpu_devices": n} if platform == "cpu" else {}
    if s["default_epochs"]:
        default["num_epochs"] = s["default_epochs"]
    sections["default_run"] = _section("default_run", need["default_run"], budget,
        lambda: {**_run_train("default", {"global_batch_size": 256, **default}, budget, 0),
                 "global_batch": 256})  # fmt: skip
    record = common.new_record("device", devices, {
        "quick": bool(args.quick), "budget_s": args.budget_s,
        **{k: v for k, v in s.items() if k != "need_s"}, "section_need_s": need,
        "xla_flags_added": flags_added, "child_env": child_env_note,
        "xla_python_client_preallocate": os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"],
    })  # fmt: skip
    record["sections"] = {k: sections[k] for k in SECTIONS}
    record["wall_s"] = budget.elapsed()
    print_table(record)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2, default=str)
        print(f"wrote {args.json}")
        record["json_path"] = args.json
    else:
        record["json_path"] = common.write_record(record, args.results_dir, "device")
    return record


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _rows(name: str, r: dict[str, Any]) -> list[list[Any]]:
    """Table rows of one section: [section, figure, ours / value, baseline, note]."""
    if r["status"] != "ok":
        return [[name, r["status"].upper(), "", "", r["reason"]]]
    if name == "step":
        rows = []
        for b, x in r["per_device_batch"].items():
            if x["status"] != "ok":
                rows.append([f"step {b}/dev", "FAILED", "", "", x["reason"]])
                continue
            o, base = x["ours"], x["baseline"]
            ratio = f"ours/baseline {x['ours_over_baseline_images_per_s']:.2f}x"
            rows += [
                [f"step {b}/dev", "images/s", o["images_per_s"], base["images_per_s"], ratio],
                [f"step {b}/dev", "MFU", _pct(o["mfu"]), _pct(base["mfu"]), ""],
                [f"step {b}/dev", "compiled memory/dev",
                 common.human_bytes(o["memory_bytes_per_device"]),
                 common.human_bytes(base["memory_bytes_per_device"]), ""],
            ]  # fmt: skip
        return rows
    if name == "memory":
        planner = r.get("planner_bytes")
        label = f"vs planner {r.get('planner_target', '')} ({r.get('planner_compiled_for', '')})"
        return [[f"memory {r['per_device_batch']}/dev", label if planner else "vs planner",
                 common.human_bytes(r["compiled_bytes"]),
                 common.human_bytes(planner) if planner else "n/a",
                 (f"compiled/planner {r['compiled_over_planner']:.2f}x; " if planner else "")
                 + r.get("note", "")]]  # fmt: skip
    if name == "allreduce" and r["compiled_dtype"] is None:
        return [[name, f"dtype (asked {r['asked_dtype']})", "none", "", r["note"]]]
    if name == "allreduce":
        o = r["overlap"]
        verdict = r["note"] or ("as asked" if r["matches"] else "NOT as asked")
        return [
            [f"allreduce {r['per_device_batch']}/dev", f"dtype (asked {r['asked_dtype']})",
             r["compiled_dtype"], "", verdict],
            ["allreduce", "count / async", f"{o['count']} / {o['async']}", "",
             common.human_bytes(o["bytes"])],
            ["allreduce", "issued before backward end", _pct(o["issued_before_compute_end"]), "",
             f"compute after start {_pct(o['compute_after_start'])}"],
        ]  # fmt: skip
    label = f"{r['steps']} steps, batch {r['global_batch']}"
    # synthetic labels are noise: top-1 means something for the digits run only
    top1 = f"; eval top-1 {_pct(r['eval_top1'])}" if name == "default_run" else ""
    return [[name, "images/s", r["images_per_s"], "", f"{label}; compile {r['compile_s']:.0f} s"
             f"; last window {r['images_per_s_last_window'] or 0:,.0f}/s{top1}"]]  # fmt: skip


def print_table(record: dict[str, Any]) -> None:
    c, hw = record["config"], record["hardware"]
    print(
        f"\nbench device: {hw['device_count']} x {hw['device_kind']} ({hw['platform']}), "
        f"{c['model']} {c['image_size']}px {c['dtype']}, all-reduce {c['allreduce_dtype']}; "
        f"{record['wall_s']:.0f} s of a {c['budget_s']:.0f} s budget"
    )
    rows = [row for name in SECTIONS for row in _rows(name, record["sections"][name])]
    # common.table right-aligns; the free-text note goes after it, left-aligned
    cells = [[c if c != "" else "-" for c in r[:-1]] for r in rows]  # keeps columns aligned
    lines = common.table(cells, ["section", "figure", "ours / value", "baseline"]).splitlines()
    notes = ["note", "----", *(str(r[-1]) for r in rows)]
    print("\n".join(f"{line}  {note}".rstrip() for line, note in zip(lines, notes)))
