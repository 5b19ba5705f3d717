"""What collectives XLA really runs: parsed from a compiled program's HLO text."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from lmsgd.parallel import hlo_text

COLLECTIVE_OPS = (
    "all-reduce",
    "reduce-scatter",
    "all-gather",
    "all-to-all",
    "collective-permute",
)
# Bytes per element of each HLO type (kept here for the modules that import it from here).
_BYTES = hlo_text.DTYPE_BYTES


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program.

    `element_count` and `bytes` are those of the result on one device (compiled HLO does not
    print operand shapes): the whole buffer for all-reduce and all-gather, one shard for
    reduce-scatter; an asynchronous start / done pair is one collective. `group_size` is the
    number of devices in each replica group (0: one group of every device, a number the text
    does not give), whichever form XLA prints the groups in (`lmsgd.parallel.hlo_text`).
    """

    op: str
    dtype: str
    element_count: int
    bytes: int
    group_size: int
    replica_groups: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _group_size(groups: str) -> int:
    """Devices per group of a ``replica_groups=`` value (0: all devices)."""
    return hlo_text.group_size(groups)


def _program_text(program: Any) -> str:
    if isinstance(program, str):
        return program
    if isinstance(program, jax.stages.Lowered):
        return program.as_text(dialect="hlo")
    return program.as_text()


def _results(instructions: list[hlo_text.Instruction]):
    """(instruction, result shape text) of each collective, an async pair once.

    A synchronous collective's result is its shape; an ``X-start``'s is its ``X-done``'s
    (`hlo_text.async_result_shape`). Wrappers (``async-start``, the ``fusion-start`` of
    XLA:GPU's Triton collectives) are skipped: the collective they run is an instruction of
    the computation they call, and is counted there.
    """
    dones = {
        ins.operands[0]: ins for ins in instructions if ins.op.endswith("-done") and ins.operands
    }
    for ins in instructions:
        if ins.op in COLLECTIVE_OPS:
            yield ins, ins.shape
        elif ins.op.removesuffix("-start") in COLLECTIVE_OPS and ins.op.endswith("-start"):
            yield ins, hlo_text.async_result_shape(ins, dones.get(ins.name))


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
    text = hlo_text.strip_index_comments(_program_text(program))
    instructions = [hlo_text.parse_instruction(line) for line in text.splitlines()]
    found = []
    for ins, result in _results([i for i in instructions if i is not None]):
        groups = hlo_text.replica_groups_text(ins.attrs)
        by_dtype: dict[str, int] = {}
        for dtype, count in hlo_text.arrays(result):
            by_dtype[dtype] = by_dtype.get(dtype, 0) + count
        for dtype, count in by_dtype.items():
            found.append(
                Collective(
                    op=ins.op.removesuffix("-start"),
                    dtype=dtype,
                    element_count=count,
                    bytes=count * _BYTES.get(dtype, 4),
                    group_size=_group_size(groups),
                    replica_groups=groups,
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
