"""The XLA:GPU flags lmsgd recommends, and applying them before JAX starts its GPU backend.

Why these (docs/planning.md, "Overlap"): lmsgd all-reduces its gradients per tensor and lets
XLA combine them. With one large bucket (the former 64 MiB threshold) the combined all-reduce
waits for the *last* gradient, so it is issued when 1.5% of the step's compute is left and the
communication is exposed after the backward pass. Buckets of 8 MiB are issued in reverse layer
order as the backward pass produces them: ResNet-50 on gpu:h100:8x16 at 32 images per GPU
(XLA:GPU's own schedule, `python -m lmsgd.plan`) then issues 84% of the gradient bytes before
the last backward convolution, in 12 all-reduces (64 MiB: 7 all-reduces, 0% in flight during
the backward pass). The latency-hiding scheduler makes them asynchronous and moves compute
between each start and done. Triton GEMMs off: a convnet's GEMMs go to cuBLAS/cuDNN (a common
setting for convnets on XLA:GPU; not measured here, no GPU has been available).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

GPU_XLA_FLAGS: dict[str, str] = {
    "xla_gpu_enable_latency_hiding_scheduler": "true",
    "xla_gpu_all_reduce_combine_threshold_bytes": str(8 * 2**20),
    "xla_gpu_enable_triton_gemm": "false",
}


def _typed(value: str) -> bool | int | str:
    if value in ("true", "false"):
        return value == "true"
    return int(value) if value.isdigit() else value


def gpu_compiler_options(xla_flags: str = "") -> dict[str, bool | int | str]:
    """`GPU_XLA_FLAGS` as `compile(compiler_options=...)` values (bools, ints), less those
    set in `xla_flags` (the user's XLA_FLAGS, which the compiler reads itself)."""
    user = {f.lstrip("-").split("=", 1)[0] for f in xla_flags.split()}
    return {k: _typed(v) for k, v in GPU_XLA_FLAGS.items() if k not in user}


def will_use_gpu(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether JAX is about to start a CUDA backend: JAX_PLATFORMS names it, or (unset) an
    NVIDIA driver is present. Decided without starting any backend."""
    platforms = environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return any(p in ("cuda", "gpu") for p in platforms.split(","))
    return os.path.exists("/proc/driver/nvidia/version")


def apply_gpu_xla_flags(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Appends `GPU_XLA_FLAGS` to XLA_FLAGS when JAX will run on GPU; flags the user set in
    XLA_FLAGS are left as they are. Call before JAX initialises its backends (XLA reads
    XLA_FLAGS once). Returns the flags added."""
    if not will_use_gpu(environ):
        return []
    current = environ.get("XLA_FLAGS", "")
    user = {f.lstrip("-").split("=", 1)[0] for f in current.split()}
    added = [f"--{k}={v}" for k, v in GPU_XLA_FLAGS.items() if k not in user]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def launcher_flags() -> str:
    """The flags as the launchers write them (launch/slurm_gpu.sbatch, launch/k8s)."""
    return " ".join(f"--{k}={v}" for k, v in GPU_XLA_FLAGS.items())
