"""What collectives XLA really runs: parsed from a compiled program's HLO text."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import numpy as np

COLLECTIVE_OPS = (
    "all-reduce",
    "reduce-scatter",
    "all-gather",
    "all-to-all",
    "collective-permute",
)
_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}  # fmt: skip
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
# `%name = <result shapes> op(-start)?(<operands>), attrs`; async pairs count once (-start).
_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<result>.+?)\s+"
    r"(?P<op>" + "|".join(COLLECTIVE_OPS) + r")(?P<start>-start)?\((?P<operands>[^)]*)\)"
    r"(?P<attrs>.*)$"
)


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program.

    `element_count` and `bytes` are those of the result on one device (compiled HLO does not
    print operand shapes): the whole buffer for all-reduce and all-gather, one shard for
    reduce-scatter. `group_size` is the number of devices in each replica group.
    """

    op: str
    dtype: str
    element_count: int
    bytes: int
    group_size: int
    replica_groups: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _shapes(text: str) -> list[tuple[str, int]]:
    out = []
    for dtype, dims in _SHAPE.findall(text):
        count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        out.append((dtype, count))
    return out


def _group_size(groups: str) -> int:
    if groups.startswith("{"):  # {{0,1,2,3},{4,5,6,7}}
        first = groups.strip("{}").split("},{")[0]
        return len(first.split(",")) if first else 1
    m = re.match(r"\[([\d,]+)\]", groups)  # iota form [2,4]<=[8]: groups of the last dim
    return int(m[1].split(",")[-1]) if m else 0


def describe_collectives(program: Any) -> list[Collective]:
    """Lists the collectives in a compiled (or lowered) JAX program.

    Args:
      program: a `jax.stages.Compiled` (`jax.jit(f).lower(...).compile()`), a
        `jax.stages.Lowered`, or HLO text. Prefer the compiled program: XLA's passes combine,
        split and re-type collectives (XLA:CPU, for one, promotes bfloat16 all-reduces to
        float32 because it has no bfloat16 reduction; GPUs and TPUs keep bfloat16). The lowered
        program shows what the step asked for.
    Returns:
      One `Collective` per result dtype of each collective instruction, in program order.
    """
    if isinstance(program, str):
        text = program
    elif isinstance(program, jax.stages.Lowered):
        text = program.as_text(dialect="hlo")
    else:
        text = program.as_text()
    found = []
    for line in text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        groups = re.search(r"replica_groups=(\{[^ ]*\}|\[[^ ]*\][^ ,]*)", m["attrs"])
        by_dtype: dict[str, int] = {}
        for dtype, count in _shapes(m["result"]):
            by_dtype[dtype] = by_dtype.get(dtype, 0) + count
        for dtype, count in by_dtype.items():
            found.append(
                Collective(
                    op=m["op"],
                    dtype=dtype,
                    element_count=count,
                    bytes=count * _BYTES.get(dtype, 4),
                    group_size=_group_size(groups[1]) if groups else 0,
                    replica_groups=groups[1] if groups else "",
                )
            )
    return found


def summarize_collectives(collectives: list[Collective]) -> dict[str, dict[str, int]]:
    """Totals per `op/dtype`: number of instructions, elements and bytes."""
    out: dict[str, dict[str, int]] = {}
    for c in collectives:
        entry = out.setdefault(f"{c.op}/{c.dtype}", {"count": 0, "elements": 0, "bytes": 0})
        entry["count"] += 1
        entry["elements"] += c.element_count
        entry["bytes"] += c.bytes
    return out
