"""The planner's answer as a human-readable table (JSON comes from `Plan.to_json`)."""

from __future__ import annotations

from lmsgd.plan import input_feed
from lmsgd.plan.planner import Plan

GiB = 2**30


def format_seconds(seconds: float) -> str:
    """Seconds as '1.23 ms', '4.5 s', '12.3 min' or '2.1 h'."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


_t = format_seconds  # short, for the report lines below


def _b(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def format_plan(p: Plan) -> str:
    """Sections (1)-(5) of the plan: run, memory, cost, collectives, time."""
    hw, e, m, a = p.hardware, p.estimate, p.memory, p.estimate.assumptions
    exact = {
        "tpu": "compiled by the TPU compiler",
        "gpu": "compiled by XLA:GPU, deviceless, for XLA's target spec",
        "cpu": "compiled for CPU",
        "cpu-proxy": "FALLBACK: compiled for CPU as a proxy, see note",
    }[p.compiled_for]
    lines = [
        f"plan for {p.target}: {hw['description']} ({exact})",
        "",
        "run",
        f"  devices {p.num_devices:,}   processes {p.num_processes:,}   mesh {p.mesh}",
        f"  global batch {p.global_batch:,} = {p.num_devices:,} x {p.per_device_batch} per "
        f"device; accumulation steps {p.accumulation_steps}; BN span {p.bn_span} images",
        f"  {p.steps_per_epoch:,} steps/epoch x {p.num_epochs:g} epochs = "
        f"{p.total_steps:,} steps; {p.num_params:,} parameters",
        "",
        "memory per device (compiled program)",
        f"  arguments {_b(m['argument_bytes'])}  outputs {_b(m['output_bytes'])}  "
        f"temporaries {_b(m['temp_bytes'])}  aliased {_b(m['alias_bytes'])}",
        f"  peak {_b(m['peak_bytes'])} of {_b(m['capacity_bytes'])}: "
        + ("FITS" if p.fits else "DOES NOT FIT")
        + f" ({100 * m['peak_bytes'] / m['capacity_bytes']:.1f}%)",
    ]
    if p.max_per_device_batch is not None:
        lines.append(f"  largest per-device batch that fits: ~{p.max_per_device_batch}")
    lines += [
        "",
        "cost per device per step ("
        + (
            "XLA cost analysis"
            if p.flops_source == "xla cost analysis"
            else "counted from the compiled program: conv/dot FLOPs, kernels' operand + result "
            "bytes; XLA:GPU gives no cost analysis"
        )
        + ")",
        f"  {p.flops / 1e9:,.1f} GFLOP   {p.bytes_accessed / 1e9:,.2f} GB accessed   "
        f"{p.flops_per_image / 1e9:.2f} GFLOP per image (forward + backward + update)",
        "",
        "collectives per device per step (as compiled)",
        f"  {'op':<18}{'dtype':<7}{'count':>6}{'bytes':>16}{'group':>7}",
    ]
    for c in p.collectives:
        lines.append(
            f"  {c['op']:<18}{c['dtype']:<7}{c['count']:>6}{c['bytes']:>16,}{c['group_size']:>7}"
        )
    if p.kernels:
        k = p.kernels
        lines.append(
            f"  kernels {k.get('kernels', 0):,}: cuDNN convolutions {k.get('cudnn', 0)} "
            f"(forward {k.get('cudnn_conv_forward', 0)}, backward-filter "
            f"{k.get('cudnn_conv_backward_filter', 0)}, backward-input "
            f"{k.get('cudnn_conv_backward_input', 0)}, fused bias-activation "
            f"{k.get('cudnn_conv_bias_activation', 0)}), fusions {k.get('fusions', 0):,}, "
            f"cuBLAS {k.get('cublas_gemm', 0)}"
        )
    if p.overlap:
        o = p.overlap
        lines.append(
            f"  gradient all-reduce in the schedule: {o['count']} buffers ({o['async']} async); "
            f"{100 * o['issued_before_backward_end']:.0f}% of bytes issued before the last "
            f"backward convolution, {100 * o['in_flight_during_backward']:.0f}% with compute "
            f"between start and done; hidden on the time line {100 * o['timeline_overlap']:.0f}%"
        )
    if p.xla_flags:
        lines.append("  compiled with " + " ".join(f"--{k}={v}" for k, v in p.xla_flags.items()))
    lines += [
        f"  gradient all-reduce ({p.allreduce['dtype']}, {p.allreduce['algorithm']}): "
        f"{p.gradient_allreduce_bytes:,} bytes = "
        f"{p.gradient_allreduce_bytes / max(1, p.num_params):.3f} bytes x {p.num_params:,} "
        "parameters"
        + ("" if p.allreduce["algorithm"] == "flat" else " (all-reduce instructions only)"),
        "",
        f"estimated time (ESTIMATE: compute efficiency {a.compute_efficiency:g}"
        + (f", calibrated on {a.calibrated_on}" if a.calibrated_on else ", uncalibrated default")
        + f"; memory {a.memory_efficiency:g}; links {a.link_efficiency:g}; "
        f"overlap {e.overlap:.2f} from the {e.overlap_source})",
        f"  compute {_t(e.compute_s)} (peak {e.peak_flops / 1e12:.3g} TFLOP/s {e.peak_name})  "
        f"memory {_t(e.memory_s)} -> {e.bound}-bound",
    ]
    for c in e.collectives:
        lines.append(
            f"  {c.op} {c.dtype} x{c.count} over {c.link} (group {c.group_size}): {_t(c.seconds)}"
        )
    lines += [
        f"  communication {_t(e.comm_s)} ({100 * (1 - e.overlap):.0f}% exposed)",
        f"  step {_t(e.step_s)}   {e.images_per_s:,.0f} images/s   epoch {_t(e.epoch_s)}   "
        f"run ({p.num_epochs:g} epochs) {_t(e.run_s)}",
        f"  scaling efficiency vs one device {100 * e.scaling_efficiency:.1f}%",
    ]
    if p.measured_step_s is not None:
        lines.append(
            f"  measured here: step {_t(p.measured_step_s)} vs estimate {_t(e.step_s)} "
            f"(estimate / measured = {e.step_s / p.measured_step_s:.2f})"
        )
    if p.input_feed:
        lines += input_feed.format_feed(p.input_feed, p.input_feed.get("host_description"))
    lines.append(f"  compile time {p.compile_s:.1f} s")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)
