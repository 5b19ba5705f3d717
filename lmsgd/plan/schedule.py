"""Read a compiled program's schedule: where each collective is issued among the compute.

A compiled module with ``is_scheduled=true`` prints its entry computation in execution order.
From that order this module takes, per entry instruction, the convolution and dot FLOPs it
runs (itself, or inside the fusions / calls it makes), and the collectives with the position
of their start and done (an asynchronous ``all-reduce-start`` / ``all-reduce-done`` pair, or a
synchronous collective whose start and done are the same instruction).

Two measures of overlap come from it:

- `issued_before_compute_end`: the share of a collective's bytes whose start is issued before
  the last convolution / dot of the step (for a train step: the last backward convolution).
  What can overlap at all.
- `simulate`: a timeline. Compute runs the instructions in schedule order, each taking its
  share of FLOPs of the step's compute time; the network runs the collectives one at a time
  in issue order, each starting when issued and the link is free; a ``done`` waits for its
  collective; a synchronous collective stalls compute. ``exposed_s`` is the time the step
  takes beyond its compute; ``overlap = 1 - exposed_s / comm_s`` replaces a fixed guess in
  the planner's estimate.

Written by hand: neither jax nor XLA exposes a scheduled-HLO reader in Python.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence

from lmsgd.parallel.collectives import _BYTES, COLLECTIVE_OPS
from lmsgd.parallel.hlo_text import (
    Instruction,
    async_result_shape,
    parse_module,
    replica_groups_text,
)

_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|branch_computations|async_execution_thread)="
    r"(\{[^}]*\}|%[\w.\-]+)"
)
_CONV_TARGETS = ("__cudnn$conv", "__cudnn$convForward", "__cudnn$convBackwardFilter",
                 "__cudnn$convBackwardInput", "__cudnn$convBiasActivationForward")  # fmt: skip
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul")
# Entry instructions that move no data through memory of their own.
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "opt-barrier",
               "partition-id", "replica-id", "after-all", "add-dependency", "while",
               "conditional", "call", "async-start", "async-done"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ScheduledCollective:
    """One collective of the entry computation.

    `start` and `done` are positions in the entry's schedule (equal for a synchronous one);
    `bytes` of the result on one device (all dtypes of a combined collective together).
    """

    name: str
    op: str
    dtypes: tuple[str, ...]
    bytes: int
    start: int
    done: int
    is_async: bool
    replica_groups: str


@dataclasses.dataclass
class Schedule:
    """The entry computation's order: FLOPs per instruction and the collectives in it."""

    flops: list[float]  # convolution + dot FLOPs per entry instruction
    compute_kinds: list[str]  # "conv", "dot" or "" per entry instruction
    collectives: list[ScheduledCollective]
    traffic: list[int] = dataclasses.field(default_factory=list)  # bytes read + written

    @property
    def bytes_accessed(self) -> int:
        """Memory traffic of the entry's kernels: each reads its operands and writes its
        result once (fusion keeps the rest on chip; a lower bound where caches miss)."""
        return int(sum(self.traffic))

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops))

    @property
    def last_compute(self) -> int:
        """Position of the last instruction that runs a convolution or dot (-1: none)."""
        for i in range(len(self.flops) - 1, -1, -1):
            if self.flops[i] > 0:
                return i
        return -1


def _dims(shape: str) -> list[list[int]]:
    return [[int(d) for d in dims.split(",") if d] for _, dims in _SHAPE.findall(shape)]


def _nbytes(shape: str) -> tuple[int, tuple[str, ...]]:
    total, dtypes = 0, []
    for dtype, dims in _SHAPE.findall(shape):
        total += math.prod(int(d) for d in dims.split(",") if d) * _BYTES.get(dtype, 4)
        if dtype not in dtypes:
            dtypes.append(dtype)
    return total, tuple(dtypes)


def _conv_flops(ins: Instruction, shapes: dict[str, str]) -> float:
    """2 x (forward) output elements x (kernel elements / kernel output features): each output
    element of a convolution multiplies-and-adds over its window and input features.

    An HLO `convolution` is counted as written (a backward pass expressed as a convolution
    counts its own window). A cuDNN call keeps the *forward* convolution's `dim_labels`, so
    its forward output and kernel are found by kind: forward (result, operand 1), backward
    input (operand 0 = output gradient, operand 1), backward filter (operand 1 = output
    gradient, result = kernel gradient); the three then count the same multiply-adds.
    """
    labels = re.search(r"dim_labels=[0-9a-z]+_([0-9a-z]+)->", ins.attrs)
    target = re.search(r'custom_call_target="([^"]+)"', ins.attrs)
    if not labels or len(ins.operands) < 2:
        return 0.0
    operand = [_dims(shapes.get(name, "")) for name in ins.operands[:2]]
    result = _dims(ins.shape)
    kind = target[1] if target else ""
    if kind == "__cudnn$convBackwardInput":
        out, kernel = operand[0], operand[1]
    elif kind == "__cudnn$convBackwardFilter":
        out, kernel = operand[1], result
    else:
        out, kernel = result, operand[1]
    if not out or not kernel or len(kernel[0]) != len(labels[1]):
        return 0.0
    kernel = kernel[0]
    groups = re.search(r"batch_group_count=(\d+)", ins.attrs)
    per_output = math.prod(kernel) / kernel[labels[1].index("o")]
    return 2.0 * math.prod(out[0]) * per_output / (int(groups[1]) if groups else 1)


def _dot_flops(ins: Instruction, shapes: dict[str, str]) -> float:
    """2 x output elements x contracted elements (the lhs's contracting dimensions)."""
    if not ins.operands or ins.operands[0] not in shapes:
        return 0.0
    lhs = _dims(shapes[ins.operands[0]])
    out = _dims(ins.shape)
    if not lhs or not out:
        return 0.0
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
    if m:
        contracting = [int(d) for d in m[1].split(",") if d]
    else:  # cuBLAS custom calls carry the dimension numbers in their backend config
        m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.attrs)
        contracting = [int(d) for d in re.findall(r"\d+", m[1])] if m else []
    return 2.0 * math.prod(out[0]) * math.prod(lhs[0][d] for d in contracting)


def _compute_kind(ins: Instruction) -> str:
    if ins.op == "convolution":
        return "conv"
    if ins.op == "dot":
        return "dot"
    if ins.op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', ins.attrs)
        if target and target[1] in _CONV_TARGETS:
            return "conv"
        if target and target[1] in _GEMM_TARGETS:
            return "dot"
    return ""


def _called(ins: Instruction) -> list[str]:
    names = []
    for group in _CALLED.findall(ins.attrs):
        names += re.findall(r"%?([\w.\-]+)", group)
    return names


def module_flops(comps: dict[str, list[Instruction]]) -> tuple[dict[str, float], dict[str, str]]:
    """(FLOPs of convolutions and dots per computation, including what it calls; the kind of
    compute each computation runs: "conv" if any convolution, else "dot", else "")."""
    shapes = {ins.name: ins.shape for body in comps.values() for ins in body}
    memo: dict[str, float] = {}
    kinds: dict[str, str] = {}

    def visit(name: str, stack: frozenset = frozenset()) -> float:
        if name in memo:
            return memo[name]
        if name not in comps or name in stack:
            return 0.0
        total, kind = 0.0, ""
        for ins in comps[name]:
            k = _compute_kind(ins)
            if k == "conv":
                total += _conv_flops(ins, shapes)
            elif k == "dot":
                total += _dot_flops(ins, shapes)
            for callee in _called(ins):
                total += visit(callee, stack | {name})
                k = k or kinds.get(callee, "")
            if k == "conv" or (k == "dot" and kind == ""):
                kind = k
        memo[name], kinds[name] = total, kind
        return total

    for name in comps:
        visit(name)
    return memo, kinds


# Entry instructions that run a collective of the computation they call: XLA:GPU wraps
# reduce-scatter and all-to-all in async-start, and from jax 0.11 on runs small all-reduces
# as Triton fusions (fusion-start / fusion-done, kind __triton_collective).
_WRAPPERS = ("async-start", "fusion-start", "fusion")


def _wrapped_collective(ins: Instruction, comps) -> Instruction | None:
    """The collective a wrapper instruction (`_WRAPPERS`) runs, from the computation it calls."""
    if ins.op not in _WRAPPERS:
        return None
    for callee in _called(ins):
        for inner in comps.get(callee, []):
            if inner.op.removesuffix("-start") in COLLECTIVE_OPS:
                return inner
    return None


def _collective_at(ins: Instruction, comps) -> tuple[str, Instruction] | None:
    """(collective op, the instruction with its replica groups) of an entry instruction that
    starts or runs a collective, else None."""
    base = ins.op.removesuffix("-start")
    if base in COLLECTIVE_OPS:
        return base, ins
    inner = _wrapped_collective(ins, comps)
    if inner is not None:
        return inner.op.removesuffix("-start"), inner
    return None


def parse_schedule(text: str) -> Schedule:
    """The entry computation's schedule of a compiled module's HLO text (see the module doc)."""
    comps, entry = parse_module(text)
    shapes = {ins.name: ins.shape for body in comps.values() for ins in body}
    flops_of, kinds = module_flops(comps)
    body = comps[entry]
    position = {ins.name: i for i, ins in enumerate(body)}
    flops, compute_kinds, found, traffic = [], [], [], []
    starts: dict[str, tuple[int, Instruction, str, Instruction]] = {}
    for i, ins in enumerate(body):
        collective = _collective_at(ins, comps)
        kind = _compute_kind(ins)
        f = _conv_flops(ins, shapes) if kind == "conv" else 0.0
        f = _dot_flops(ins, shapes) if kind == "dot" else f
        for callee in _called(ins):
            if collective is not None or ins.op.endswith("-start"):
                continue  # a collective's reduction computation
            f += flops_of.get(callee, 0.0)
            kind = kind or kinds.get(callee, "")
        flops.append(f)
        compute_kinds.append(kind)
        moves = ins.op not in _NO_TRAFFIC and not ins.op.endswith(("-done", "-start"))
        traffic.append(
            _nbytes(ins.shape)[0] + sum(_nbytes(shapes.get(o, ""))[0] for o in ins.operands)
            if moves and collective is None
            else 0
        )
        if collective is not None and ins.op.endswith("-start"):
            starts[ins.name] = (i, ins, *collective)
        elif collective is not None:  # synchronous: start and done are this instruction
            nbytes, dtypes = _nbytes(ins.shape)
            found.append(_collective(ins, collective, nbytes, dtypes, i, i, False))
        elif ins.op.endswith("-done") and ins.operands and ins.operands[0] in starts:
            s, start_ins, op, source = starts.pop(ins.operands[0])
            nbytes, dtypes = _nbytes(ins.shape)  # the done's shape: the result alone
            is_async = '"is_sync":true' not in start_ins.attrs
            found.append(_collective(start_ins, (op, source), nbytes, dtypes, s, i, is_async))
    for name, (s, ins, op, source) in starts.items():  # a start whose done was not found
        nbytes, dtypes = _nbytes(async_result_shape(ins, None))
        found.append(_collective(ins, (op, source), nbytes, dtypes, s, position[name], False))
    found.sort(key=lambda c: c.start)
    return Schedule(flops, compute_kinds, found, traffic)


def _collective(ins, collective, nbytes, dtypes, start, done, is_async) -> ScheduledCollective:
    op, source = collective
    groups = replica_groups_text(source.attrs)
    return ScheduledCollective(ins.name, op, dtypes, nbytes, start, done, is_async, groups)


def select(
    schedule: Schedule, op: str = "all-reduce", dtypes: Iterable[str] | None = None
) -> list[ScheduledCollective]:
    """The schedule's collectives of kind `op` with any of `dtypes` (None: all)."""
    keep = None if dtypes is None else set(dtypes)
    return [
        c
        for c in schedule.collectives
        if c.op == op and (keep is None or keep.intersection(c.dtypes))
    ]


def issued_before_compute_end(
    schedule: Schedule, collectives: Sequence[ScheduledCollective]
) -> float:
    """Share of `collectives`' bytes issued (started, asynchronously) before the schedule's
    last convolution / dot; 1.0 when there are none."""
    total = sum(c.bytes for c in collectives)
    if not total:
        return 1.0
    last = schedule.last_compute
    early = sum(c.bytes for c in collectives if c.is_async and c.start < last)
    return early / total


def compute_after(schedule: Schedule, collectives: Sequence[ScheduledCollective]) -> float:
    """Bytes-weighted share of the step's compute FLOPs scheduled between each collective's
    start and its done (what the compiler left to hide it under)."""
    total = sum(c.bytes for c in collectives)
    if not total or not schedule.total_flops:
        return 0.0
    share = 0.0
    for c in collectives:
        between = sum(schedule.flops[c.start + 1 : c.done]) if c.is_async else 0.0
        share += c.bytes * between / schedule.total_flops
    return share / total


@dataclasses.dataclass(frozen=True)
class Timeline:
    """`simulate`'s answer, seconds: the step, its compute, the communication, and the part
    of the communication the step waits for."""

    step_s: float
    compute_s: float
    comm_s: float
    exposed_s: float

    @property
    def overlap(self) -> float:
        """Fraction of the communication hidden under compute (1.0 without communication)."""
        if self.comm_s <= 0:
            return 1.0
        return min(1.0, max(0.0, 1.0 - self.exposed_s / self.comm_s))


def simulate(schedule: Schedule, compute_s: float, comm_seconds: dict[str, float]) -> Timeline:
    """The step's time line (see the module docstring).

    Args:
      schedule: from `parse_schedule`.
      compute_s: the step's compute time; each instruction takes its share of the FLOPs.
      comm_seconds: seconds of each collective by name (collectives not named take none).
    """
    total = schedule.total_flops
    n = len(schedule.flops)
    per = [compute_s * f / total if total else 0.0 for f in schedule.flops]
    if not total and n:
        per = [compute_s / n] * n
    starting: dict[int, list[ScheduledCollective]] = {}
    ending: dict[int, list[ScheduledCollective]] = {}
    for c in schedule.collectives:
        starting.setdefault(c.start, []).append(c)
        ending.setdefault(c.done, []).append(c)
    t = link_free = 0.0
    finish: dict[str, float] = {}
    for i in range(n):
        for c in starting.get(i, []):
            begin = max(t, link_free)
            link_free = begin + comm_seconds.get(c.name, 0.0)
            finish[c.name] = link_free
            if not c.is_async:
                t = link_free  # a synchronous collective stalls the compute stream
        for c in ending.get(i, []):
            t = max(t, finish.get(c.name, t))
        t += per[i]
    step = max(t, link_free)
    comm = sum(comm_seconds.get(c.name, 0.0) for c in schedule.collectives)
    return Timeline(step, compute_s, comm, max(0.0, step - compute_s))


def summary(schedule: Schedule, collectives: Sequence[ScheduledCollective]) -> dict:
    """JSON-able description of `collectives` in the schedule."""
    return {
        "count": len(collectives),
        "bytes": sum(c.bytes for c in collectives),
        "async": sum(c.is_async for c in collectives),
        "issued_before_compute_end": issued_before_compute_end(schedule, collectives),
        "compute_after_start": compute_after(schedule, collectives),
        "buffers": [
            {
                "bytes": c.bytes,
                "dtypes": list(c.dtypes),
                "async": c.is_async,
                "compute_left_at_start": (
                    sum(schedule.flops[c.start + 1 :]) / schedule.total_flops
                    if schedule.total_flops
                    else 0.0
                ),
            }
            for c in collectives
        ],  # fmt: skip
    }


__all__ = [
    "Schedule",
    "ScheduledCollective",
    "Timeline",
    "compute_after",
    "issued_before_compute_end",
    "parse_schedule",
    "select",
    "simulate",
    "summary",
]
