"""Deviceless XLA:GPU: GPU target specs shipped with lmsgd, the devices they describe, and
what the compiled GPU program holds (cuDNN calls, fused kernels).

With the wheels `jax-cuda12-plugin` and `jax-cuda12-pjrt` installed (the `plan` extra; no
CUDA libraries or GPU needed) and JAX_PLATFORMS=cpu, `get_topology_desc(platform="cuda",
target_config=SPEC, topology="1xNODESxGPUS")` gives devices that XLA:GPU compiles for on
this machine. SPEC is an XLA `GpuTargetConfigProto` in text form, one per GPU model, from
openxla/xla `xla/backends/gpu/target_config/specs/` (`gpu_specs/README.md` names the
commit). Upstream specs carry fields newer than jaxlib's proto; `strip_fields` drops them
(the proto parser rejects unknown fields).
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter

from lmsgd.plan.targets import PlanError, Target

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_specs")

# Planner GPU model -> spec file. The P100 PCIe card (the paper's MN-1) has the SXM2 part's
# SMs, memory and compute capability at a lower clock: the compiler's choices are the same.
SPECS: dict[str, str] = {
    "p100": "p100.txtpb",
    "p100-pcie": "p100.txtpb",
    "p100-bigbasin": "p100.txtpb",
    "v100": "v100.txtpb",
    "a100": "a100_sxm_80.txtpb",
    "h100": "h100_sxm.txtpb",
    "h100-pcie": "h100_pcie.txtpb",
    "h200": "h200.txtpb",
    "b200": "b200.txtpb",
}

# GpuDeviceInfoProto fields added to XLA after jaxlib 0.10.2 (its parser rejects them).
NEWER_FIELDS = ("collective_memory_granularity", "mem_clock_ghz", "max_blocks_per_multiprocessor")


def strip_fields(text: str, fields=NEWER_FIELDS) -> str:
    """`text` (a text-format proto) without the scalar fields named in `fields`, at any depth.

    Only `name: value` lines are removed; a message field (`name {`) with that name is removed
    with its body.
    """
    out, skip_depth = [], 0
    names = "|".join(re.escape(f) for f in fields)
    scalar = re.compile(rf"^\s*({names})\s*:")
    message = re.compile(rf"^\s*({names})\s*\{{")
    for line in text.splitlines(keepends=True):
        if skip_depth:
            skip_depth += line.count("{") - line.count("}")
            continue
        if message.match(line):
            skip_depth = line.count("{") - line.count("}")
            continue
        if scalar.match(line):
            continue
        out.append(line)
    return "".join(out)


@functools.cache
def spec_text(model: str) -> str:
    """The target spec of a planner GPU model, with jaxlib-unknown fields removed."""
    if model not in SPECS:
        raise PlanError(f"no XLA:GPU target spec for {model!r}; allowed: {', '.join(SPECS)}")
    with open(os.path.join(SPEC_DIR, SPECS[model])) as f:
        return strip_fields(f.read())


def plugin_available() -> bool:
    """Whether the CUDA PJRT plugin (the deviceless GPU compiler) is installed."""
    try:
        import jax_plugins.xla_cuda12  # noqa: F401
    except ImportError:
        return False
    return True


def compiler_options(xla_flags: str = "") -> dict:
    """Compile options for a deviceless XLA:GPU compile: lmsgd's recommended GPU flags
    (`lmsgd.parallel.xla_flags`), and the CUDA directory of the `nvidia-cuda-nvcc-cu12` wheel
    (the `plan` extra) so that XLA:GPU finds a `ptxas` and `libdevice` for every target GPU
    without a CUDA install (a system CUDA 13 has dropped sm_60 / sm_70: P100, V100). Flags
    set in `xla_flags` (the user's XLA_FLAGS) are left to XLA."""
    from lmsgd.parallel.xla_flags import gpu_compiler_options

    options = dict(gpu_compiler_options(xla_flags))
    path = cuda_data_dir()
    if path and "xla_gpu_cuda_data_dir" not in xla_flags:
        options["xla_gpu_cuda_data_dir"] = path
    return options


def cuda_data_dir() -> str | None:
    """The `nvidia-cuda-nvcc-cu12` wheel's CUDA directory (bin/ptxas, nvvm/libdevice)."""
    try:
        import nvidia.cuda_nvcc as nvcc
    except ImportError:
        return None
    for path in getattr(nvcc, "__path__", []):
        if os.path.exists(os.path.join(path, "bin", "ptxas")):
            return path
    return None


def gpu_devices(target: Target) -> list:
    """The devices of a GPU cluster target, for XLA:GPU (no GPU needed), (node, id) order.

    Raises PlanError when the plugin is missing or rejects the spec.
    """
    from jax.experimental import topologies

    per_node, nodes = target.topology
    try:
        desc = topologies.get_topology_desc(
            platform="cuda",
            topology_name="",
            target_config=spec_text(target.hardware),
            topology=f"1x{nodes}x{per_node}",  # slices x nodes (processes) x GPUs per node
        )
    except Exception as e:  # the plugin raises JaxRuntimeError with its reason
        raise PlanError(
            f"--target {target.spec}: XLA:GPU rejects the target ({str(e).splitlines()[0][:200]})"
        ) from e
    return sorted(desc.devices, key=lambda d: (d.process_index, d.id))


_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]+)"')


def kernel_counts(hlo: str) -> dict[str, int]:
    """Kernels of a compiled XLA:GPU program's entry computation by kind: cuDNN convolutions
    (forward, backward-filter, backward-input, fused bias-activation), cuBLAS GEMMs, XLA
    fusions (each one generated kernel), and their total ("kernels")."""
    from lmsgd.plan.schedule import parse_module

    comps, entry = parse_module(hlo)
    counts: Counter = Counter()
    for ins in comps[entry]:
        if ins.op in _NO_KERNEL or ins.op.endswith("-done"):
            continue
        if ins.op == "custom-call":
            m = _CUSTOM_CALL.search(ins.attrs)
            name = m[1] if m else ""
            key = _CUDNN.get(name)
            if key is None and name.startswith("__cudnn"):
                key = "cudnn_other"
            if key is None and name.startswith("__cublas"):
                key = "cublas_gemm"
            counts[key or "custom_call_other"] += 1
        elif ins.op == "fusion":
            counts["fusions"] += 1
        else:
            counts["other"] += 1  # copies, collectives, unfused ops: one launch each
    counts["kernels"] = sum(counts.values())
    counts["cudnn"] = sum(v for k, v in counts.items() if k.startswith("cudnn_"))
    return dict(counts)


_CUDNN = {
    "__cudnn$convForward": "cudnn_conv_forward",
    "__cudnn$convBackwardFilter": "cudnn_conv_backward_filter",
    "__cudnn$convBackwardInput": "cudnn_conv_backward_input",
    "__cudnn$convBiasActivationForward": "cudnn_conv_bias_activation",
}
# Entry instructions that launch no kernel of their own.
_NO_KERNEL = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "opt-barrier",
              "partition-id", "replica-id", "after-all", "add-dependency"}  # fmt: skip
