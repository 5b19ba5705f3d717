"""Reading XLA's HLO text as both text forms print it (jax 0.10 and jax 0.11+).

Every parser of compiled programs in lmsgd (`lmsgd.parallel.collectives`,
`lmsgd.plan.schedule`, the planner and the benchmarks) reads the text through this module, so
that the forms XLA has printed over time give the same answers:

- tuple shapes: long tuples carry ``/*index=N*/`` comments (`strip_index_comments`), and an
  asynchronous start may return ``((operands), result)`` (jax 0.11+) where jax 0.10 printed
  the result alone; the bytes of an async pair are the ``-done``'s result.
- replica groups (`replica_groups`): an explicit list ``{{0,1},{2,3}}``, the iota form
  ``[2,4]<=[8]`` or ``[4,2]<=[2,4]T(1,0)``, and the mesh-axes form of jax 0.11+
  ``mesh['a'=2,'b'=4] {'a'}``, with sub-axes ``'a':(1)2`` and an explicit
  ``device_ids=(...)`` ordering.

Written by hand: neither jax nor XLA exposes an HLO text reader in Python.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

# Bytes per element of each HLO primitive type.
DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}  # fmt: skip
SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_INDEX_COMMENT = re.compile(r"/\*index=\d+\*/")
_HEADER = re.compile(r"^(ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_IOTA = re.compile(r"\[([\d,]*)\]<=\[([\d,]*)\](?:T\(([\d,]*)\))?")
_MESH_AXIS = re.compile(r"'?([^'=,\s]+)'?=(\d+)")
_GROUP_AXIS = re.compile(r"'?([^',:\s{}]+)'?(?::\((\d+)\)(\d+))?")


def strip_index_comments(text: str) -> str:
    """`text` without the ``/*index=N*/`` comments XLA prints inside long tuple shapes (they
    would otherwise be read as part of a shape)."""
    return _INDEX_COMMENT.sub("", text)


@dataclasses.dataclass
class Instruction:
    """One HLO instruction: ``%name = shape op(operands), attrs``."""

    name: str
    shape: str  # result shape text (a tuple is "(a, b)")
    op: str
    operands: list[str]
    attrs: str


def _closing(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket that closes the one at `text[start]` (len(text) if none)."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] == open_ch
        depth -= text[i] == close_ch
        if depth == 0:
            return i
    return len(text)


def split_shape(rest: str) -> tuple[str, str]:
    """('shape text', 'the rest') of an instruction's right-hand side."""
    rest = rest.lstrip()
    if rest.startswith("("):
        end = _closing(rest, 0, "(", ")")
        return rest[: end + 1], rest[end + 1 :].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


def parse_instruction(line: str) -> Instruction | None:
    """The instruction on one line of HLO text (None for anything else)."""
    m = _NAME.match(line)
    if not m:
        return None
    shape, rest = split_shape(m["rest"])
    op_m = re.match(r"(?P<op>[\w\-$.]+)\(", rest)
    if not op_m:
        return None
    end = _closing(rest, op_m.end() - 1, "(", ")")
    operands_text = rest[op_m.end() : end]
    if "%" in operands_text:  # compiled text: `%name`s (older text: `f32[8] %name`)
        operands = re.findall(r"%([\w.\-]+)", operands_text)
    else:  # lowered text (`as_text(dialect="hlo")`) prints bare names
        operands = [o.strip() for o in operands_text.split(",") if o.strip()]
    return Instruction(m["name"], shape, op_m["op"], operands, rest[end + 1 :])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation name: instructions in order}, entry name) of HLO module text."""
    comps: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in strip_index_comments(text).splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.startswith("HloModule"):
                current = m["name"]
                comps[current] = []
                if m[1]:
                    entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        ins = parse_instruction(line)
        if ins is not None:
            comps[current].append(ins)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def arrays(shape: str) -> list[tuple[str, int]]:
    """(dtype, element count) of every array in a shape text, tuples flattened."""
    out = []
    for dtype, dims in SHAPE.findall(shape):
        out.append((dtype, math.prod(int(d) for d in dims.split(",") if d)))
    return out


def nbytes(shape: str) -> int:
    """Bytes of every array in a shape text (logical sizes; 4 for an unknown dtype)."""
    return sum(count * DTYPE_BYTES.get(dtype, 4) for dtype, count in arrays(shape))


def async_result_shape(start: Instruction, done: Instruction | None) -> str:
    """The result shape of an asynchronous ``-start`` / ``-done`` pair.

    The ``-done`` returns the result alone. Without it, the start's own shape: jax 0.11+
    prints ``((operands), result)`` (the operands first, as a nested tuple), jax 0.10
    printed ``(operand, result)`` for all-gather / reduce-scatter and the bare result for
    all-reduce: the last element when the start's shape is a pair, else the whole shape.
    """
    if done is not None:
        return done.shape
    parts = top_level_elements(start.shape)
    if len(parts) == 2 and start.op != "all-reduce-start":
        return parts[1]
    if len(parts) == 2 and parts[0].startswith("("):
        return parts[1]
    return start.shape


def top_level_elements(shape: str) -> list[str]:
    """The elements of a tuple shape text (a non-tuple shape: itself)."""
    shape = shape.strip()
    if not shape.startswith("("):
        return [shape]
    inner, parts, depth, begin = shape[1:-1], [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(inner[begin:i].strip())
            begin = i + 1
    parts.append(inner[begin:].strip())
    return [p for p in parts if p]


# ------------------------------------------------------------------ replica groups


def replica_groups_text(attrs: str) -> str:
    """The ``replica_groups=`` value of an instruction's attributes ('' if none), in any of
    the forms the module docstring lists."""
    key = attrs.find("replica_groups=")
    if key < 0:
        return ""
    text = attrs[key + len("replica_groups=") :]
    if text.startswith("{"):
        return text[: _closing(text, 0, "{", "}") + 1]
    if text.startswith("["):
        m = _IOTA.match(text)
        return m[0] if m else ""
    if text.startswith("mesh["):
        end = _closing(text, 4, "[", "]") + 1
        if text[end:].startswith(", device_ids=("):
            end = _closing(text, end + len(", device_ids="), "(", ")") + 1
        brace = text.find("{", end)
        if brace < 0 or text[end:brace].strip():
            return text[:end]
        return text[: _closing(text, brace, "{", "}") + 1]
    return ""


def _iota(dims: list[int], reshape: list[int], perm: list[int] | None) -> np.ndarray:
    """XLA's iota tile assignment ``[dims]<=[reshape]T(perm)``: 0..n-1 laid out as `reshape`,
    transposed by `perm`, read as `dims`."""
    ids = np.arange(math.prod(reshape)).reshape(reshape)
    if perm:
        ids = ids.transpose(perm)
    return ids.reshape(dims)


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _mesh_groups(text: str) -> list[list[int]]:
    """Groups of the mesh-axes form ``mesh[<axis>=<size>,...][, device_ids=(...)] {<axes>}``.

    The devices of the mesh (an iota, or `device_ids` in mesh order) are grouped over the
    named axes, as XLA's `MeshAxesReplicaGroupList` does: a sub-axis ``'a':(pre)size`` reads
    axis `a` (N devices) as [pre, size, N / (pre * size)], row-major, and groups the middle
    dimension. Each group lists its devices with the first named axis major, the order of a
    jax psum's members.
    """
    head_end = _closing(text, 4, "[", "]")
    names, sizes = [], []
    for name, size in _MESH_AXIS.findall(text[5:head_end]):
        names.append(name)
        sizes.append(int(size))
    rest = text[head_end + 1 :]
    devices = np.arange(math.prod(sizes))
    if rest.startswith(", device_ids=("):
        inner = rest[len(", device_ids=(") : _closing(rest, len(", device_ids="), "(", ")")]
        iota = _IOTA.fullmatch(inner.strip())
        if iota:
            perm = _ints(iota[3]) if iota[3] is not None else None
            devices = _iota(_ints(iota[1]), _ints(iota[2]), perm).reshape(-1)
        else:
            devices = np.asarray(_ints(inner))
    brace = rest.find("{")
    axes_text = rest[brace + 1 : rest.rfind("}")] if brace >= 0 else ""
    grouped = [(n, int(p) if p else None, int(s) if s else None)
               for n, p, s in _GROUP_AXIS.findall(axes_text) if n]  # fmt: skip
    return _group_by_axes(devices.reshape(sizes), names, grouped)


def _group_by_axes(devices: np.ndarray, names: list[str], grouped) -> list[list[int]]:
    """Split each mesh axis into the (sub-)axes `grouped` names, move the grouped ones last
    in the listed order, and read the groups off the last dimensions."""
    dims: list[int] = []
    where: dict[tuple, int] = {}  # (axis, pre) -> dimension index after the reshape
    for axis, size in zip(names, devices.shape):
        subs = sorted((pre, s) for n, pre, s in grouped if n == axis and pre is not None)
        if not subs:
            where[(axis, None)] = len(dims)
            dims.append(size)
            continue
        prefix = 1
        for pre, s in subs:
            if pre != prefix:  # the devices of the axis before this sub-axis
                dims.append(pre // prefix)
                prefix = pre
            where[(axis, pre)] = len(dims)
            dims.append(s)
            prefix *= s
        if prefix != size:
            dims.append(size // prefix)
    order = [where[(n, p)] for n, p, _ in grouped]
    perm = [d for d in range(len(dims)) if d not in order] + order
    group_size = math.prod(dims[d] for d in order)
    flat = devices.reshape(dims).transpose(perm).reshape(-1, group_size)
    return flat.tolist()


def replica_groups(text: str) -> list[list[int]] | None:
    """The device groups a ``replica_groups=`` value names (ids as the text uses them:
    replicas, or partitions / logical devices with ``use_global_device_ids``).

    None for ``{}`` (every device in one group; their number is not in the text) or text
    this reader does not know.
    """
    text = text.strip()
    if text.startswith("{"):
        groups = [_ints(g) for g in re.findall(r"\{([\d,\s]*)\}", text[1:-1])]
        return groups or None
    m = _IOTA.fullmatch(text)
    if m:
        dims = _ints(m[1])
        perm = _ints(m[3]) if m[3] is not None else None
        return _iota(dims, _ints(m[2]), perm).reshape(-1, dims[-1]).tolist()
    if text.startswith("mesh["):
        return _mesh_groups(text)
    return None


def group_size(text: str) -> int:
    """Devices per group of a ``replica_groups=`` value (0: all devices, number unknown)."""
    groups = replica_groups(text) if text else None
    return len(groups[0]) if groups else 0


__all__ = [
    "DTYPE_BYTES",
    "Instruction",
    "arrays",
    "async_result_shape",
    "group_size",
    "nbytes",
    "parse_instruction",
    "parse_module",
    "replica_groups",
    "replica_groups_text",
    "split_shape",
    "strip_index_comments",
    "top_level_elements",
]
