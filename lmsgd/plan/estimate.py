"""Step time from the compiled program: a roofline for the device, a ring model for the links.

Per device per step:

    compute_s = FLOPs / (peak FLOP/s x compute_efficiency)
    memory_s  = bytes accessed / (HBM bandwidth x memory_efficiency)
    device_s  = max(compute_s, memory_s)                       (roofline: the slower bound)
    comm_s    = sum over the compiled collectives of
                  bytes x f(n) / (link bandwidth x link_efficiency) + latency x steps
                with f = 2(n-1)/n for all-reduce (ring: reduce-scatter + all-gather) and
                (n-1)/n for all-gather / reduce-scatter / all-to-all
    step_s    = device_s + (1 - overlap) x comm_s

overlap: by default measured from the compiled schedule (`lmsgd.plan.schedule.simulate`):
compute runs the scheduled instructions in order, each taking its FLOP share of device_s; the
link runs the collectives in issue order; a done waits for its collective. overlap = 1 -
(simulated step - device_s) / comm_s. `Assumptions.overlap` set to a number overrides it.

Which link: on a TPU slice every collective runs over ICI (a multi-dimensional ring on the
torus: latency steps 2 x sum(dim - 1)). On GPUs a group inside one node uses NVLink/PCIe; a
group that spans nodes is limited by the node's network (NCCL runs one ring per NIC, so a
node's GPUs together move the ring's traffic through all its NICs: bandwidth = min(per-GPU
fabric, node network)); a group with one GPU per node (the 'host' axis of the two-level
algorithms) shares the node's network with the node's other groups.
"""

from __future__ import annotations

import dataclasses
import math

from lmsgd.parallel import hlo_text
from lmsgd.parallel.collectives import Collective
from lmsgd.plan.hardware import Hardware


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """The model's free parameters (all dimensionless fractions or seconds).

    Attributes:
      compute_efficiency: achieved / peak FLOP/s of the device's compute (MXU / tensor
        cores) over the whole step, including the input pipeline's and framework's losses.
      memory_efficiency: achieved / peak HBM bandwidth.
      link_efficiency: achieved / peak link bandwidth in collectives.
      intra_latency_s: per ring step inside a node / over ICI, seconds.
      inter_latency_s: per ring step across nodes, seconds.
      overlap: fraction of communication hidden under computation; None (default): measured
        from the compiled schedule (0 when there is none).
      gpu_latency_steps: "ring" (2(n-1) latency steps per all-reduce: NCCL's rings, as in
        the paper) or "tree" (2 ceil(log2 n): NCCL's double binary trees since 2.4, and
        recursive halving/doubling); bandwidth terms are the same.
      calibrated_on: the published run `compute_efficiency` was fitted to, or "" (default).
    """

    compute_efficiency: float
    memory_efficiency: float = 0.8
    link_efficiency: float = 0.8
    intra_latency_s: float = 2e-6
    inter_latency_s: float = 5e-6
    overlap: float | None = None
    gpu_latency_steps: str = "tree"
    calibrated_on: str = ""


# One calibration per device family at most (docs/planning.md): P100 on the paper's run; the
# rest are defaults chosen before looking at the validation runs (typical ResNet-50 MFU).
_AKIBA = "akiba2017 (1,024 x P100, 90 epochs in 15 min)"
ASSUMPTIONS: dict[str, Assumptions] = {
    # 0.38 = 766.8 GFLOP / (9.3 TFLOP/s x (900 s / 3,510 steps - 39.8 ms of modelled
    # communication)): the paper's 15 minutes for 90 epochs on 1,024 P100s.
    "p100": Assumptions(0.38, gpu_latency_steps="ring", calibrated_on=_AKIBA),
    "p100-pcie": Assumptions(0.38, gpu_latency_steps="ring", calibrated_on=_AKIBA),
    # Goyal et al. reduce with recursive halving/doubling: log2(n) latency steps.
    "p100-bigbasin": Assumptions(0.38, calibrated_on=_AKIBA),
    "v100": Assumptions(0.35),
    "a100": Assumptions(0.35),
    "h100": Assumptions(0.35),
    "h100-pcie": Assumptions(0.35),
    "h200": Assumptions(0.35),
    "b200": Assumptions(0.35),
    "v3": Assumptions(0.45, intra_latency_s=1e-6),
    "v4": Assumptions(0.45, intra_latency_s=1e-6),
    "v5e": Assumptions(0.45, intra_latency_s=1e-6),
    "v5p": Assumptions(0.45, intra_latency_s=1e-6),
    "cpu": Assumptions(0.5, memory_efficiency=1.0, link_efficiency=1.0, intra_latency_s=1e-5),
}


@dataclasses.dataclass
class CollectiveCost:
    op: str
    dtype: str
    count: int
    bytes: int  # per device per step, summed over the instructions
    group_size: int
    link: str  # "ici", "intra-node", "inter-node", "host-memory"
    seconds: float


@dataclasses.dataclass
class Estimate:
    """Estimated time per step (per device = per step: all devices run in lockstep).

    All times in seconds. `scaling_efficiency` = one device's step time at the same
    per-device batch (no communication) / this step time.
    """

    peak_flops: float
    peak_name: str
    compute_s: float
    memory_s: float
    bound: str  # "compute" or "memory"
    comm_s: float
    step_s: float
    images_per_s: float  # global
    epoch_s: float
    run_s: float
    scaling_efficiency: float
    collectives: list[CollectiveCost]
    assumptions: Assumptions
    overlap: float = 0.0  # fraction of comm_s hidden under compute
    overlap_source: str = "assumed"  # "compiled schedule" or "assumed"


def _first_group(groups: str) -> list[int] | None:
    """The devices of the first replica group, in any form XLA prints (None: all devices)."""
    found = hlo_text.replica_groups(groups) if groups else None
    return found[0] if found else None


def _link_for(c: Collective, hw: Hardware, num_devices: int, per_node: int) -> str:
    if hw.kind == "tpu":
        return "ici"
    if hw.kind == "cpu":
        return "host-memory"
    n = c.group_size or num_devices
    if num_devices <= per_node:
        return "intra-node"
    members = _first_group(c.replica_groups)
    if members is not None:
        same_node = len({m // per_node for m in members}) == 1
    else:  # no groups in the text: consecutive devices
        same_node = n <= per_node
    if same_node:
        return "intra-node"
    return "inter-node" if n >= num_devices else "inter-node-shared"


def collective_seconds(
    c: Collective,
    hw: Hardware,
    a: Assumptions,
    *,
    num_devices: int,
    per_node: int,
    topology: tuple[int, ...],
) -> tuple[str, float]:
    """(link, seconds) of one compiled collective on the target (see the module docstring)."""
    n = c.group_size or num_devices
    if n <= 1:
        return "none", 0.0
    factor = 2 * (n - 1) / n if c.op == "all-reduce" else (n - 1) / n
    link = _link_for(c, hw, num_devices, per_node)
    if link == "ici":
        bw, lat = hw.intra_bandwidth, a.intra_latency_s
        # A ring per torus dimension; a group smaller than the slice, a ring over it.
        steps = 2 * sum(d - 1 for d in topology) if n == num_devices else 2 * (n - 1)
    elif link in ("intra-node", "host-memory"):
        bw, lat, steps = hw.intra_bandwidth, a.intra_latency_s, 2 * (n - 1)
    elif link == "inter-node":
        bw, lat, steps = min(hw.intra_bandwidth, hw.inter_bandwidth), a.inter_latency_s, 2 * (n - 1)
    else:  # one device per node: the node's network is shared by its per_node groups
        bw, lat, steps = hw.inter_bandwidth / per_node, a.inter_latency_s, 2 * (n - 1)
    if link != "ici" and a.gpu_latency_steps == "tree":
        steps = 2 * math.ceil(math.log2(n))
    if c.op != "all-reduce":
        steps //= 2
    return link, c.bytes * factor / (bw * a.link_efficiency) + lat * steps


def estimate(
    *,
    flops: float,
    bytes_accessed: float,
    collectives: list[Collective],
    hw: Hardware,
    compute_dtype: str,
    num_devices: int,
    per_node: int,
    topology: tuple[int, ...],
    global_batch: int,
    steps_per_epoch: int,
    total_steps: int,
    assumptions: Assumptions | None = None,
    schedule=None,
) -> Estimate:
    """Step, epoch and run time from per-device FLOPs, bytes and the compiled collectives;
    with `schedule` (`lmsgd.plan.schedule.Schedule` of the same program) the overlap of
    communication and compute is read from it."""
    a = assumptions or ASSUMPTIONS[hw.name]
    peak, peak_name = hw.peak_for(compute_dtype)
    compute_s = flops / (peak * a.compute_efficiency)
    memory_s = bytes_accessed / (hw.hbm_bandwidth * a.memory_efficiency)
    device_s = max(compute_s, memory_s)
    grouped: dict[tuple, CollectiveCost] = {}
    for c in collectives:
        link, seconds = collective_seconds(
            c, hw, a, num_devices=num_devices, per_node=per_node, topology=topology
        )
        key = (c.op, c.dtype, c.group_size, link)
        entry = grouped.setdefault(key, CollectiveCost(c.op, c.dtype, 0, 0, c.group_size, link, 0))
        entry.count += 1
        entry.bytes += c.bytes
        entry.seconds += seconds
    comm_s = sum(e.seconds for e in grouped.values())
    overlap, source = (a.overlap, "assumed") if a.overlap is not None else (0.0, "assumed")
    if a.overlap is None and schedule is not None and comm_s > 0:
        overlap = _schedule_overlap(schedule, device_s, hw, a, num_devices, per_node, topology)
        source = "compiled schedule"
    step_s = device_s + (1 - overlap) * comm_s
    return Estimate(
        peak_flops=peak,
        peak_name=peak_name,
        compute_s=compute_s,
        memory_s=memory_s,
        bound="compute" if compute_s >= memory_s else "memory",
        comm_s=comm_s,
        step_s=step_s,
        images_per_s=global_batch / step_s,
        epoch_s=step_s * steps_per_epoch,
        run_s=step_s * total_steps,
        scaling_efficiency=device_s / step_s,
        collectives=list(grouped.values()),
        assumptions=a,
        overlap=overlap,
        overlap_source=source,
    )


def _schedule_overlap(schedule, device_s, hw, a, num_devices, per_node, topology) -> float:
    """Hidden fraction of the communication on the schedule's time line (module docstring)."""
    from lmsgd.plan.schedule import simulate

    seconds = {}
    for c in schedule.collectives:
        probe = Collective(c.op, c.dtypes[0] if c.dtypes else "f32", 0, c.bytes,
                           hlo_text.group_size(c.replica_groups),
                           c.replica_groups)  # fmt: skip
        seconds[c.name] = collective_seconds(
            probe, hw, a, num_devices=num_devices, per_node=per_node, topology=topology
        )[1]
    return simulate(schedule, device_s, seconds).overlap
