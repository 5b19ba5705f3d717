"""What `--target` names: a TPU slice, a GPU cluster or simulated CPU devices.

    tpu:GEN:TOPOLOGY   e.g. tpu:v5p:8x8x16 (1,024 chips), tpu:v4:4x4x4, tpu:v5e:16x16 — any
                       topology libtpu's `get_topology_desc` accepts
    gpu:MODEL:GxN      G GPUs per node x N nodes, e.g. gpu:h100:8x128 (MODEL from the hardware
                       table: p100, p100-pcie, p100-bigbasin, v100, a100, h100, h100-pcie,
                       h200, b200); compiled by XLA:GPU for the model's target spec
                       (lmsgd.plan.gpu)
    cpu:N              N simulated devices on this machine (what `--measure` runs on)

plus the aliases in `ALIASES` (Cloud TPU accelerator types such as v5p-2048, and the clusters
of published runs such as `akiba2017`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from lmsgd.plan.hardware import HARDWARE


class PlanError(ValueError):
    """A user error: printed as one line by the command line, no traceback."""


# Cloud TPU accelerator types count TensorCores for v4/v5p (2 per chip) and chips for v5e.
ALIASES: dict[str, str] = {
    "v4-8": "tpu:v4:2x2x1",
    "v4-32": "tpu:v4:2x2x4",
    "v4-128": "tpu:v4:4x4x4",
    "v4-512": "tpu:v4:4x8x8",
    "v4-2048": "tpu:v4:8x8x16",
    "v5p-8": "tpu:v5p:2x2x1",
    "v5p-128": "tpu:v5p:4x4x4",
    "v5p-512": "tpu:v5p:4x8x8",
    "v5p-2048": "tpu:v5p:8x8x16",
    "v5e-8": "tpu:v5e:2x4",
    "v5e-64": "tpu:v5e:8x8",
    "v5e-256": "tpu:v5e:16x16",
    # Clusters of published runs (docs/planning.md's validation table).
    "akiba2017": "gpu:p100-pcie:8x128",  # MN-1: 128 nodes x 8 P100 PCIe, 2 x FDR IB per node
    "goyal2017": "gpu:p100-bigbasin:8x32",  # 32 Big Basin servers x 8 P100 SXM2, 50 GbE
}
TPU_GENERATIONS = tuple(k for k, h in HARDWARE.items() if h.kind == "tpu")
GPU_MODELS = tuple(k for k, h in HARDWARE.items() if h.kind == "gpu")
ALLOWED = (
    f"tpu:GEN:TOPOLOGY (GEN one of {', '.join(TPU_GENERATIONS)}; e.g. tpu:v5p:8x8x16), "
    f"gpu:MODEL:GPUSxNODES (MODEL one of {', '.join(GPU_MODELS)}; e.g. gpu:h100:8x128), "
    f"cpu:N, or an alias: {', '.join(ALIASES)}"
)


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed `--target`.

    Attributes:
      spec: the canonical spelling (`tpu:v5p:8x8x16`).
      kind: "tpu", "gpu" or "cpu".
      hardware: key into `HARDWARE` ("cpu" for cpu targets).
      topology: TPU topology dims (chips), or (gpus per node, nodes) for GPUs, or (N,).
      num_devices: devices JAX will see (TPU: as libtpu reports them; v3/v4 topologies may
        report one device per TensorCore).
      devices_per_node: devices per host / server (the fast-fabric domain for GPUs).
    """

    spec: str
    kind: str
    hardware: str
    topology: tuple[int, ...]
    num_devices: int
    devices_per_node: int

    @property
    def num_nodes(self) -> int:
        return max(1, self.num_devices // self.devices_per_node)


def _dims(text: str, what: str, original: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(x\d+)*", text):
        raise PlanError(
            f"--target {original!r}: {what} {text!r} is not like 8x8x16; allowed: {ALLOWED}"
        )
    dims = tuple(int(d) for d in text.split("x"))
    if any(d < 1 for d in dims):
        raise PlanError(f"--target {original!r}: {what} dimensions must be positive")
    return dims


def parse_target(text: str) -> Target:
    """Parses a `--target` value; raises PlanError naming the bad part and what is allowed.

    TPU targets only parse here; their device count is filled in by `tpu_devices` (libtpu).
    """
    original = text
    text = ALIASES.get(text.strip().lower(), text.strip().lower())
    parts = text.split(":")
    kind = parts[0]
    if kind == "cpu" and len(parts) == 2:
        (n,) = _dims(parts[1], "device count", original)
        return Target(f"cpu:{n}", "cpu", "cpu", (n,), n, n)
    if kind == "gpu" and len(parts) == 3:
        if parts[1] not in GPU_MODELS:
            raise PlanError(
                f"--target {original!r}: unknown GPU {parts[1]!r}; allowed: {', '.join(GPU_MODELS)}"
            )
        dims = _dims(parts[2], "GPUsxNODES", original)
        if len(dims) != 2:
            raise PlanError(f"--target {original!r}: give GPUS_PER_NODExNODES, e.g. 8x128")
        per_node, nodes = dims
        return Target(f"gpu:{parts[1]}:{per_node}x{nodes}", "gpu", parts[1], dims,
                      per_node * nodes, per_node)  # fmt: skip
    if kind == "tpu" and len(parts) == 3:
        if parts[1] not in TPU_GENERATIONS:
            raise PlanError(
                f"--target {original!r}: unknown TPU generation {parts[1]!r}; allowed: "
                f"{', '.join(TPU_GENERATIONS)}"
            )
        dims = _dims(parts[2], "topology", original)
        chips = math.prod(dims)
        per_host = min(chips, HARDWARE[parts[1]].devices_per_node)
        return Target(f"tpu:{parts[1]}:{parts[2]}", "tpu", parts[1], dims, chips, per_host)
    raise PlanError(f"unknown --target {original!r}; allowed: {ALLOWED}")


def tpu_devices(target: Target) -> list:
    """The devices of a TPU topology from libtpu (no TPU needed), in (process, id) order.

    Raises PlanError saying what to install when libtpu is missing, and naming the topology
    when libtpu rejects it.
    """
    # We only compile: several planner processes (pytest workers) may load libtpu at once,
    # and a stale lock file from an earlier process must not fail this one.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise PlanError(
            f"--target {target.spec} needs libtpu to compile for TPU on this host: "
            "pip install -c requirements/constraints.txt -e '.[plan]' (or 'jax[tpu]')"
        ) from e
    from jax.experimental import topologies

    gen, shape = target.spec.split(":")[1:]
    try:
        desc = topologies.get_topology_desc(topology_name=f"{gen}:{shape}", platform="tpu")
    except Exception as e:  # libtpu raises XlaRuntimeError / ValueError with its reason
        raise PlanError(
            f"--target {target.spec}: libtpu rejects topology {gen}:{shape} "
            f"({str(e).splitlines()[0][:200]}); use a Cloud TPU slice shape, e.g. 2x2x1, 4x4x4"
        ) from e
    return sorted(desc.devices, key=lambda d: (d.process_index, d.id))


def with_devices(target: Target, devices: list) -> Target:
    """The target with its device and host counts as libtpu reports them."""
    processes = len({d.process_index for d in devices})
    return dataclasses.replace(
        target, num_devices=len(devices), devices_per_node=max(1, len(devices) // processes)
    )
