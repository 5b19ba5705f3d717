"""`plan(config, target)`: compile the real step for a target and estimate what it costs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from lmsgd import layout as layout_lib
from lmsgd.parallel.collectives import Collective, describe_collectives, summarize_collectives
from lmsgd.plan import compile as compile_lib
from lmsgd.plan import estimate as estimate_lib
from lmsgd.plan import gpu as gpu_lib
from lmsgd.plan import input_feed
from lmsgd.plan import schedule as schedule_lib
from lmsgd.plan import targets as targets_lib
from lmsgd.plan.hardware import HARDWARE, Hardware, cpu_hardware

log = logging.getLogger(__name__)

# Without the CUDA plugin, GPU targets fall back to a CPU compile: this many simulated
# devices stand in, each with the target's per-device batch.
GPU_PROXY_DEVICES = 8


@dataclasses.dataclass
class Plan:
    """The planner's answer. Sizes per device per step unless named global / per run.

    Attributes:
      target, hardware: what was planned for.
      compiled_for: "tpu" (libtpu's compiler: the real program), "gpu" (XLA:GPU's own
        compiler, deviceless, for the target's spec: the real program), "cpu" (cpu targets)
        or "cpu-proxy" (GPU targets without the CUDA plugin: the per-device program compiled
        for CPU, a labelled fallback estimate).
      num_devices, num_processes, mesh: the run's layout (processes: TPU hosts / GPU nodes).
      global_batch, per_device_batch, accumulation_steps, bn_span: images.
      steps_per_epoch, total_steps, num_epochs: optimizer steps / epochs of the run.
      num_params: trainable parameters.
      memory: bytes per device: arguments, outputs, temporaries, aliased, peak, capacity.
      fits: peak <= the device's memory.
      max_per_device_batch: largest per-device batch that fits (with --max_batch), else None.
      flops, bytes_accessed: one device's program per step, from `flops_source`: XLA's cost
        analysis (TPU, CPU) or, where XLA:GPU has none, counted from the compiled program
        (convolution and dot FLOPs from their shapes; bytes as the kernels' operands and
        results).
      flops_per_image: flops / per-device batch (the whole train step, per image).
      collectives: compiled collectives summed by (op, dtype): count, bytes per device per step.
      gradient_allreduce_bytes: bytes the all-reduces of the gradient dtype move per device
        per step (the collectives whose dtype is allreduce.dtype, or u32 = packed 16-bit).
      estimate: `estimate.Estimate` (times in seconds).
      compile_s: wall time of lower + compile.
      measured_step_s: with --measure, the mean measured step time on this machine.
      notes: caveats (proxy compiles, dtype promotion).
      flops_source: "xla cost analysis" or "hlo count".
      kernels: GPU programs: kernels of the step by kind (cuDNN convolutions, fusions, ...).
      overlap: the gradient all-reduce in the compiled schedule: count, bytes, async count,
        `issued_before_backward_end` (bytes share started before the last convolution / dot),
        `in_flight_during_backward` (... with compute between its start and done),
        `compute_after_start`, and `timeline_overlap` (the estimate's hidden share).
      xla_flags: compiler options the step was compiled with (GPU: lmsgd's recommended
        flags, less those set in XLA_FLAGS).
      input_feed: host CPUs needed per host to feed the estimated step, per input path
        (`lmsgd.plan.input_feed.feed`), with the rates' source and the host's CPU count.
      run_measured: with --workdir, that run's measured step
        (`lmsgd.plan.run_metrics.measured_step`), else empty.
    """

    target: str
    hardware: dict[str, Any]
    compiled_for: str
    num_devices: int
    num_processes: int
    mesh: dict[str, int]
    global_batch: int
    per_device_batch: int
    accumulation_steps: int
    bn_span: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: float
    num_params: int
    allreduce: dict[str, Any]
    memory: dict[str, int]
    fits: bool
    max_per_device_batch: int | None
    flops: float
    bytes_accessed: float
    flops_per_image: float
    collectives: list[dict[str, Any]]
    gradient_allreduce_bytes: int
    estimate: estimate_lib.Estimate
    compile_s: float
    measured_step_s: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    flops_source: str = "xla cost analysis"
    kernels: dict[str, int] = dataclasses.field(default_factory=dict)
    overlap: dict[str, Any] = dataclasses.field(default_factory=dict)
    xla_flags: dict[str, str] = dataclasses.field(default_factory=dict)
    input_feed: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_measured: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)


def _cpu_devices(n: int) -> list:
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise targets_lib.PlanError(
            f"--target cpu:{n} needs {n} CPU devices but JAX has {len(devices)}; the command "
            "line sets the count itself, a library caller must call "
            f"jax.config.update('jax_num_cpu_devices', {n}) before JAX initializes"
        )
    return devices[:n]


def _gradient_dtypes(allreduce_dtype: str) -> set[str]:
    # TPU packs pairs of 16-bit values into u32 words for its all-reduce.
    return {"float16": {"f16", "u32"}, "bfloat16": {"bf16", "u32"}, "float32": {"f32"}}[
        allreduce_dtype
    ]


def _proxy_collectives(
    found: list[Collective],
    mesh: jax.sharding.Mesh,
    target: targets_lib.Target,
    ar_dtype: str,
    algorithm: str,
) -> tuple[list[Collective], list[str]]:
    """Collectives of the CPU proxy program, with groups and shard sizes mapped onto the GPU
    target (the proxy's 'local' axis has fewer devices than a node)."""
    notes = []
    sizes = dict(mesh.shape)
    out = []
    for c in found:
        if c.group_size in (0, mesh.devices.size):
            n = target.num_devices
        elif len(sizes) == 2 and c.group_size == sizes.get("local"):
            n = target.devices_per_node
        elif len(sizes) == 2 and c.group_size == sizes.get("host"):
            n = target.num_nodes
        else:
            n = c.group_size
        dtype, nbytes = c.dtype, c.bytes
        sharded = c.op == "reduce-scatter" or (
            c.op == "all-reduce" and c.group_size == sizes.get("host")
        )
        if len(sizes) == 2 and algorithm == "two_dimensional" and sharded:
            # two_dimensional moves 1/local of the buffer across nodes: rescale the shard.
            nbytes = nbytes * sizes["local"] // target.devices_per_node
        if ar_dtype == "bfloat16" and c.dtype == "f32" and c.op == "all-reduce":
            # XLA:CPU promotes bfloat16 reductions to float32; GPUs keep bfloat16.
            dtype, nbytes = "bf16", nbytes // 2
        groups = (
            "" if n == c.group_size else f"[{target.num_devices // n},{n}]<=[{target.num_devices}]"
        )
        if len(sizes) == 2 and n == target.num_nodes and n != target.num_devices:
            groups = f"[{target.devices_per_node},{n}]<=[{target.num_devices}]T(1,0)"
        out.append(dataclasses.replace(c, dtype=dtype, bytes=nbytes, group_size=n,
                                       replica_groups=groups or c.replica_groups))  # fmt: skip
    if ar_dtype == "bfloat16":
        notes.append("bfloat16 all-reduces counted at 2 bytes (XLA:CPU compiles them as f32)")
    return out, notes


def _prepare(config, target: targets_lib.Target, force_proxy: bool = False):
    """(target with real device counts, hardware, mesh, config to compile, notes)."""
    ar = config.allreduce
    if target.kind == "tpu":
        devices = targets_lib.tpu_devices(target)
        target = targets_lib.with_devices(target, devices)
        chips = int(np.prod(target.topology))
        hw = HARDWARE[target.hardware]
        per_chip = len(devices) / chips
        if per_chip != 1:  # v3 (and libtpu's v4 descriptions) expose one device per core
            hw = _split(hw, per_chip)
        mesh = compile_lib.make_mesh(devices, ar.algorithm, target.devices_per_node)
        return target, hw, mesh, config, []
    if target.kind == "cpu":
        devices = _cpu_devices(target.num_devices)
        mesh = compile_lib.make_mesh(devices, ar.algorithm, target.devices_per_node)
        return target, cpu_hardware(target.num_devices), mesh, config, []
    if gpu_lib.plugin_available() and not force_proxy:  # XLA:GPU itself, for the spec
        devices = gpu_lib.gpu_devices(target)
        mesh = compile_lib.make_mesh(devices, ar.algorithm, target.devices_per_node)
        return target, HARDWARE[target.hardware], mesh, config, []
    # Fallback without the CUDA plugin: a CPU proxy with the target's per-device batch.
    n = target.num_devices
    if config.global_batch_size % n:
        raise targets_lib.PlanError(
            f"global_batch_size={config.global_batch_size} is not a multiple of the {n} GPUs "
            f"of --target {target.spec}"
        )
    k = min(GPU_PROXY_DEVICES, len(jax.devices("cpu")), n)
    devices = jax.devices("cpu")[:k]
    proxy = config.copy_and_resolve_references()
    proxy.global_batch_size = config.global_batch_size // n * k
    local = 2 if k >= 4 else 1
    mesh = compile_lib.make_mesh(devices, ar.algorithm, k // local)
    notes = [
        f"FALLBACK (CUDA plugin not installed): the per-device program compiled for CPU on {k} "
        "simulated devices; FLOPs, bytes and memory are XLA:CPU's, times use the GPU's "
        "published peaks. For XLA:GPU's own figures: pip install -c "
        "requirements/constraints.txt -e '.[plan]'"
    ]
    return target, HARDWARE[target.hardware], mesh, proxy, notes


def _split(hw: Hardware, per_chip: float) -> Hardware:
    """Per-core figures when JAX exposes each TensorCore of a chip as a device."""
    return dataclasses.replace(
        hw,
        description=f"{hw.description}, 1/{per_chip:g} chip per device (one TensorCore)",
        peak_flops={k: v / per_chip for k, v in hw.peak_flops.items()},
        hbm_bytes=hw.hbm_bytes / per_chip,
        hbm_bandwidth=hw.hbm_bandwidth / per_chip,
        intra_bandwidth=hw.intra_bandwidth / per_chip,
    )


def _compile_with_batch(config, mesh, per_device: int, options=None) -> compile_lib.CompiledStep:
    cfg = config.copy_and_resolve_references()
    cfg.global_batch_size = per_device * mesh.devices.size
    cfg.eval_batch_size = None
    return compile_lib.compile_step(compile_lib.build_step(cfg, mesh), options)


def _max_batch(config, mesh, start: int, capacity: float, peak_at_start: int, options=None) -> int:
    """Largest per-device batch whose compiled program fits `capacity` bytes (to ~6%).

    Memory is close to affine in the batch (state + batch x activations), so two compiles
    give a line and its crossing with the capacity a guess; compiles then bisect around it.
    """

    def fits(b: int) -> bool:
        try:
            return _compile_with_batch(config, mesh, b, options).peak_bytes <= capacity
        except ValueError:  # e.g. a global batch larger than the dataset: treat as the limit
            return False

    twice = _compile_with_batch(config, mesh, 2 * start, options).peak_bytes
    slope = (twice - peak_at_start) / start
    if slope <= 0:
        return start
    guess = max(1, int(start + (capacity - peak_at_start) / slope))
    lo, hi = (guess, None) if fits(guess) else (0, guess)
    if hi is None:  # the guess fits: look a little further up
        up = guess + max(1, guess // 16)
        if not fits(up):
            return guess
        lo, hi = up, up * 2
        while fits(hi):
            lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _measure(setup: compile_lib.StepSetup, steps: int) -> float:
    """Mean seconds per step of `steps` steps on the mesh's (local) devices, synthetic data."""
    from lmsgd.step import create_train_state

    state = create_train_state(
        setup.model, setup.tx, jax.random.key(0), setup.image_shape, setup.mesh
    )
    batch_size = setup.batch["image"].shape[0]
    rng = np.random.default_rng(0)
    batch = {
        "image": jax.device_put(
            # Pixels 0..255 in the wire dtype, as the pipelines send them.
            rng.integers(0, 256, setup.batch["image"].shape).astype(setup.batch["image"].dtype),
            setup.batch["image"].sharding,
        ),
        "label": jax.device_put(
            rng.integers(0, setup.num_classes, batch_size).astype(np.int32),
            setup.batch["label"].sharding,
        ),
    }
    state, metrics = setup.step(state, batch)  # compile + warm-up
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = setup.step(state, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - t0) / steps


def plan(
    config,
    target: str,
    *,
    max_batch: bool = False,
    measure_steps: int = 0,
    dump_hlo: str | None = None,
    assumptions: estimate_lib.Assumptions | None = None,
    input_rates: str | None = None,
) -> Plan:
    """Compiles `config`'s train step for `target` and estimates its memory and time.

    Args:
      config: a validated training config (`lmsgd.config`).
      target: see `lmsgd.plan.targets` (e.g. "tpu:v5p:8x8x16", "gpu:h100:8x128", "cpu:8").
      max_batch: also find the largest per-device batch that fits (one compile per probe).
      measure_steps: with a cpu target, also run this many steps here and time them.
      dump_hlo: directory to write the compiled program into.
      assumptions: efficiency factors; default `estimate.ASSUMPTIONS[hardware]`.
      input_rates: a `bench input` results JSON with the input paths' images/s per CPU
        (default: the committed one, `lmsgd/plan/input_rates.json`).
    Raises:
      PlanError: a user error (unknown target, batch not divisible, libtpu missing).
    """
    parsed = targets_lib.parse_target(target)
    if measure_steps and parsed.kind != "cpu":
        raise targets_lib.PlanError(
            f"--measure runs on this machine's devices: use --target cpu:N, not {parsed.spec}"
        )
    # 'auto' all-reduce: the algorithm the driver would pick on the target's nodes (one node:
    # flat, as the planner's 2-D mesh follows the nodes).
    algorithm, _ = layout_lib.resolve_algorithm(
        config.allreduce.algorithm, config.allreduce.dtype, None, parsed.num_devices,
        parsed.num_nodes,
    )  # fmt: skip
    if config.allreduce.algorithm == layout_lib.AUTO and parsed.num_nodes == 1:
        algorithm = "flat"
    if algorithm != config.allreduce.algorithm:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.allreduce.algorithm, config.allreduce.mesh_shape = algorithm, None
    parsed, hw, mesh, compile_cfg, notes = _prepare(config, parsed)
    n = parsed.num_devices
    if config.global_batch_size % n:
        raise targets_lib.PlanError(
            f"global_batch_size={config.global_batch_size} must be a multiple of the {n} "
            f"devices of --target {parsed.spec}; e.g. {n * max(1, config.global_batch_size // n)}"
        )
    compile_cfg = compile_cfg.copy_and_resolve_references()
    compile_cfg.eval_batch_size = None  # only the train step is compiled: no eval constraint
    try:
        setup = compile_lib.build_step(compile_cfg, mesh)
    except ValueError as e:
        raise targets_lib.PlanError(str(e)) from e
    on_gpu = parsed.kind == "gpu" and mesh.devices.flat[0].platform != "cpu"
    options = gpu_lib.compiler_options(os.environ.get("XLA_FLAGS", "")) if on_gpu else {}
    try:
        compiled = compile_lib.compile_step(setup, options)
    except jax.errors.JaxRuntimeError as e:
        if not on_gpu:
            raise
        # e.g. no ptxas for this GPU on this host: say so, and fall back to the proxy
        reason = str(e).splitlines()[0][:160]
        parsed, hw, mesh, compile_cfg, notes = _prepare(config, parsed, force_proxy=True)
        notes[0] = notes[0].replace(
            "CUDA plugin not installed", f"XLA:GPU could not compile here: {reason}"
        )
        compile_cfg = compile_cfg.copy_and_resolve_references()
        compile_cfg.eval_batch_size = None
        setup, on_gpu, options = compile_lib.build_step(compile_cfg, mesh), False, {}
        compiled = compile_lib.compile_step(setup)
    found = describe_collectives(compiled.hlo)
    proxy = parsed.kind == "gpu" and not on_gpu
    sched = schedule_lib.parse_schedule(compiled.hlo) if not proxy else None
    if proxy:
        found, more = _proxy_collectives(
            found, mesh, parsed, config.allreduce.dtype, config.allreduce.algorithm
        )
        notes += more
    real_steps_per_epoch = setup.steps_per_epoch
    real_total = setup.total_steps
    if proxy:  # the proxy's global batch differs; epochs follow the target's
        from lmsgd.data.info import steps_per_epoch as spe

        info = compile_lib.dataset_info(config.data)
        real_steps_per_epoch = spe(info, config.global_batch_size)
        real_total = max(1, int(np.ceil(config.num_epochs * real_steps_per_epoch)))
    group = config.model.bn_group_size
    bn_span = config.model.bn_virtual_batch_size or (
        setup.per_device_batch // setup.accumulation_steps * (group or n)
    )
    est = estimate_lib.estimate(
        flops=compiled.flops,
        bytes_accessed=compiled.bytes_accessed,
        collectives=found,
        hw=hw,
        compute_dtype=config.model.dtype,
        num_devices=n,
        per_node=parsed.devices_per_node,
        topology=parsed.topology,
        global_batch=config.global_batch_size,
        steps_per_epoch=real_steps_per_epoch,
        total_steps=real_total,
        assumptions=assumptions,
        schedule=sched if setup.cost_factor == 1 else None,  # a rolled loop hides its order
    )
    fits = compiled.peak_bytes <= hw.hbm_bytes
    table_hw = HARDWARE.get(parsed.hardware, hw).as_dict()  # the host's CPUs: per chip, not core
    feed = input_feed.feed(
        est.images_per_s,
        parsed.num_nodes if parsed.kind != "cpu" else 1,
        input_feed.host_cpus(parsed.kind, table_hw, parsed.devices_per_node),
        input_feed.load_rates(input_rates),
    )
    feed["host_description"] = (
        "this machine" if parsed.kind == "cpu" else table_hw.get("host_description") or None
    )
    best = None
    if max_batch:
        best = _max_batch(
            compile_cfg,
            mesh,
            setup.per_device_batch,
            hw.hbm_bytes,
            compiled.peak_bytes,
            options,
        )
    measured = _measure(setup, measure_steps) if measure_steps else None
    grad_dtypes = _gradient_dtypes(config.allreduce.dtype)
    if dump_hlo:
        os.makedirs(dump_hlo, exist_ok=True)
        name = parsed.spec.replace(":", "_")
        with open(os.path.join(dump_hlo, f"train_step.{name}.hlo.txt"), "w") as f:
            f.write(compiled.hlo)
    group_sizes = {f"{c.op}/{c.dtype}": c.group_size for c in reversed(found)}  # first one's
    summary = [
        {"op": key.split("/")[0], "dtype": key.split("/")[1], "count": totals["count"],
         "bytes": totals["bytes"], "group_size": group_sizes[key]}
        for key, totals in summarize_collectives(found).items()
    ]  # fmt: skip
    processes = parsed.num_nodes if parsed.kind != "cpu" else 1
    return Plan(
        target=parsed.spec,
        hardware=hw.as_dict(),
        compiled_for="cpu-proxy" if proxy else parsed.kind,
        num_devices=n,
        num_processes=processes,
        mesh=_gpu_mesh(config, parsed) if proxy else dict(mesh.shape),
        global_batch=config.global_batch_size,
        per_device_batch=setup.per_device_batch,
        accumulation_steps=setup.accumulation_steps,
        bn_span=bn_span,
        steps_per_epoch=real_steps_per_epoch,
        total_steps=real_total,
        num_epochs=float(config.num_epochs),
        num_params=setup.num_params,
        allreduce={k: config.allreduce[k] for k in ("dtype", "algorithm", "fuse")},
        memory={
            "argument_bytes": compiled.argument_bytes,
            "output_bytes": compiled.output_bytes,
            "temp_bytes": compiled.temp_bytes,
            "alias_bytes": compiled.alias_bytes,
            "peak_bytes": compiled.peak_bytes,
            "capacity_bytes": int(hw.hbm_bytes),
        },
        fits=fits,
        max_per_device_batch=best,
        flops=compiled.flops,
        bytes_accessed=compiled.bytes_accessed,
        flops_per_image=compiled.flops / max(1, setup.per_device_batch),
        collectives=summary,
        gradient_allreduce_bytes=sum(
            c.bytes for c in found if c.op == "all-reduce" and c.dtype in grad_dtypes
        ),
        estimate=est,
        compile_s=compiled.compile_s,
        measured_step_s=measured,
        notes=notes,
        flops_source=compiled.flops_source,
        kernels=gpu_lib.kernel_counts(compiled.hlo) if on_gpu else {},
        overlap=_overlap_summary(sched, grad_dtypes, est) if sched else {},
        xla_flags={k: str(v).lower() for k, v in options.items()},
        input_feed=feed,
    )


def _overlap_summary(sched, grad_dtypes: set[str], est) -> dict[str, Any]:
    """The gradient all-reduce in the compiled schedule (see `Plan.overlap`)."""
    grads = schedule_lib.select(sched, "all-reduce", grad_dtypes)
    out = schedule_lib.summary(sched, grads)
    total = sum(c.bytes for c in grads) or 1
    out["issued_before_backward_end"] = out.pop("issued_before_compute_end")
    out["in_flight_during_backward"] = (
        sum(c.bytes for c in grads if c.is_async and sum(sched.flops[c.start + 1 : c.done]) > 0)
        / total
    )
    out["timeline_overlap"] = est.overlap
    return out


def _gpu_mesh(config, target: targets_lib.Target) -> dict[str, int]:
    if config.allreduce.algorithm == "flat":
        return {"data": target.num_devices}
    return {"host": target.num_nodes, "local": target.devices_per_node}
