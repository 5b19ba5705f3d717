"""What a resumed run must keep: the training's effects, not its layout.

A preempted pod job often comes back on another slice. A rerun may change how the training is
laid out (devices, processes, mesh shape, all-reduce algorithm, accumulation steps, BN group
or ghost-batch settings) as long as the training it computes stays the same:

* the global batch, and the examples in each step (data, seed, order);
* the BN span (examples pooled by each normalization group) and its membership (which of the
  step's examples are pooled together);
* the optimizer, its schedules, the model, the loss, the gradient's wire precision.

How BN groups are formed (lmsgd.step, lmsgd.models.normalization, lmsgd.parallel.mesh):
the global batch's rows are split over the mesh's devices in row-major order (devices sorted
by process, then id), `per_device = G / N` consecutive rows each; a device splits its rows
into K consecutive micro-batches, and a micro-batch into consecutive ghost batches of
`bn_virtual_batch_size`; `bn_group_size` pools consecutive devices. `bn_groups` reproduces
that arithmetic and returns each group's rows, so two layouts pool the same examples exactly
when their groups are equal, *and* the rows hold the same examples: true for every layout with
index sources (digits, image folders, ImageNet prepared as ArrayRecord: one global
permutation of (seed, epoch)) and synthetic data (one global batch from the seed), but
ImageNet read from TFRecords (`data.file_format='tfrecord'`) is a per-process split of the
files, so its examples depend on the process count.

Nothing here touches a file: `effects` describes a run, `differences` compares two,
`derive_accumulation_steps` finds the K that keeps a saved run's effects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Keys that lay the training out on the hardware; a rerun may change them when the effects
# below stay. (Operational keys, which change neither, are lmsgd.workdir.OPERATIONAL_KEYS.)
LAYOUT_KEYS = (
    "accumulation_steps", "max_micro_batch", "model.bn_group_size", "model.bn_virtual_batch_size",
    "allreduce.algorithm", "allreduce.mesh_shape", "allreduce.fuse", "allreduce.flatten",
    "allreduce.predivide_exponent",  # compared below where it matters (a low-precision wire)
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a run is laid out: what `effects` needs beyond the config.

    Attributes:
      num_devices: devices of the mesh (all processes).
      num_processes: JAX processes of the job.
    """

    num_devices: int
    num_processes: int

    def as_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _k(config: Mapping[str, Any]) -> int:
    return config.get("accumulation_steps") or 1


def bn_span(config: Mapping[str, Any], num_devices: int) -> int | None:
    """Examples one normalization group pools in training, or None if the layout is invalid
    (does not divide; `lmsgd.run.plan_run` then names the bad value)."""
    g, k = config["global_batch_size"], _k(config)
    group, virtual = config["model"]["bn_group_size"], config["model"]["bn_virtual_batch_size"]
    if g % num_devices or (g // num_devices) % k or (group and num_devices % group):
        return None
    micro = g // num_devices // k
    if virtual:
        return virtual if micro % virtual == 0 else None
    return micro * (group or num_devices)


def bn_groups(config: Mapping[str, Any], num_devices: int) -> list[tuple[int, ...]] | None:
    """The rows of the global batch each normalization group pools in training, as sorted
    tuples of row ranges `(start, stop, start, stop, ...)`, in group order; None if the
    layout is invalid.

    Follows the step's arithmetic (module docstring): device r holds rows
    `[r * per_device, (r + 1) * per_device)`, micro-batch m of it the m-th `micro` of those,
    ghost batch c the c-th `virtual` of a micro-batch; a group of `bn_group_size` devices
    pools the same micro-batch of consecutive devices.
    """
    if bn_span(config, num_devices) is None:
        return None
    g, k, n = config["global_batch_size"], _k(config), num_devices
    group = config["model"]["bn_group_size"] or n
    virtual = config["model"]["bn_virtual_batch_size"]
    per_device = g // n
    micro = per_device // k
    groups = []
    for first in range(0, n, group):
        for m in range(k):
            rows = [(r * per_device + m * micro, r * per_device + (m + 1) * micro)
                    for r in range(first, first + group)]  # fmt: skip
            if virtual:  # ghost batches split each device's micro-batch (bn_group_size=1)
                ((start, stop),) = rows
                groups += [(a, a + virtual) for a in range(start, stop, virtual)]
            else:
                groups.append(tuple(x for r in _merged(rows) for x in r))
    return groups


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _membership(groups: list[tuple[int, ...]] | None) -> str | None:
    """A short, exact description of the groups: 'consecutive blocks of S' when they are
    (every layout lmsgd builds today), else the full list."""
    if groups is None:
        return None
    sizes = {sum(b - a for a, b in zip(gr[::2], gr[1::2])) for gr in groups}
    blocks = all(len(gr) == 2 for gr in groups) and [gr[0] for gr in groups] == sorted(
        gr[0] for gr in groups
    )
    if blocks and len(sizes) == 1:
        (size,) = sizes
        if all(gr == (i * size, (i + 1) * size) for i, gr in enumerate(groups)):
            return f"consecutive blocks of {size} examples"
    return repr(groups)


def _examples_per_step(config: Mapping[str, Any], layout: Layout) -> str:
    """Which examples fill each step's rows: layout-free except for ImageNet's TFRecords."""
    data = config["data"]
    what = f"{data['name']} (seed {config['seed']}, {config['global_batch_size']} per step)"
    if data["name"] == "imagenet2012" and data.get("file_format") == "tfrecord":
        return f"{what}, read as {layout.num_processes} per-process file splits"
    return what


def _moving_average_span(config: Mapping[str, Any], num_devices: int) -> int | None:
    """'moving_average' mode: examples whose statistics one EMA update averages (a device's
    micro-batch, or its group's; ghost batches are pooled first)."""
    g, k = config["global_batch_size"], _k(config)
    group = config["model"]["bn_group_size"]
    if g % num_devices or (g // num_devices) % k:
        return None
    return g // num_devices // k * (group or num_devices)


def effects(config: Mapping[str, Any], layout: Layout) -> dict[str, Any]:
    """The training's effects that depend on the layout, by name (what the refusal names).

    The config's other training keys are compared as they are (`lmsgd.workdir`).
    """
    out: dict[str, Any] = {
        "global batch": config["global_batch_size"],
        "examples in each step": _examples_per_step(config, layout),
        "BN span": bn_span(config, layout.num_devices),
        "BN membership": _membership(bn_groups(config, layout.num_devices)),
    }
    if config["model"]["norm_mode"] == "moving_average":
        out["moving-average statistics span"] = _moving_average_span(config, layout.num_devices)
    wire = config["allreduce"]["dtype"]
    if wire != "float32":  # the pre-division shapes float16/bfloat16 rounding only
        out["gradient wire rounding"] = (wire, config["allreduce"]["predivide_exponent"])
    return out


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """`(effect, saved value, new value)` for every effect that differs."""
    return [(k, saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now), key=_order)
            if saved.get(k) != now.get(k)]  # fmt: skip


def _order(name: str) -> int:
    names = ["global batch", "examples in each step", "BN span", "BN membership"]
    return names.index(name) if name in names else len(names)


def _with(config: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A shallow copy of a JSON-like config with `a.b`-style keys changed."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in config.items()}
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (out[section] if section else out)[name] = value
    return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def derive_accumulation_steps(
    saved_effects: Mapping[str, Any], config: Mapping[str, Any], layout: Layout, at_least: int = 1
) -> int | None:
    """The fewest accumulation steps K (at least `at_least`) that give `config` on `layout`
    the saved effects, or None."""
    g = config["global_batch_size"]
    if g % layout.num_devices:
        return None
    for k in (k for k in _divisors(g // layout.num_devices) if k >= at_least):
        if not differences(saved_effects, effects(_with(config, accumulation_steps=k), layout)):
            return k
    return None


def suggest_settings(
    saved_effects: Mapping[str, Any], config: Mapping[str, Any], layout: Layout
) -> str | None:
    """The setting(s) that keep the saved effects on this layout, as `--config.` flags:
    accumulation steps first, then a BN device group, then ghost batches; None if none."""
    k = derive_accumulation_steps(saved_effects, _with(config, **{
        "model.bn_group_size": 1, "model.bn_virtual_batch_size": 0}), layout)  # fmt: skip
    model = config["model"]
    if k is not None:
        flags = [f"--config.accumulation_steps={k}"]
        if model["bn_group_size"] != 1:
            flags.append("--config.model.bn_group_size=1")
        if model["bn_virtual_batch_size"]:
            flags.append("--config.model.bn_virtual_batch_size=0")
        return " ".join(flags)
    g, n = config["global_batch_size"], layout.num_devices
    if g % n:
        return None
    for group in _divisors(n):
        trial = _with(config, accumulation_steps=1, **{
            "model.bn_group_size": group, "model.bn_virtual_batch_size": 0})  # fmt: skip
        if not differences(saved_effects, effects(trial, layout)):
            return f"--config.accumulation_steps=1 --config.model.bn_group_size={group}"
    for virtual in _divisors(g // n):
        trial = _with(config, accumulation_steps=1, **{
            "model.bn_group_size": 1, "model.bn_virtual_batch_size": virtual})  # fmt: skip
        if not differences(saved_effects, effects(trial, layout)):
            return f"--config.accumulation_steps=1 --config.model.bn_virtual_batch_size={virtual}"
    return None


def describe_layout(config: Mapping[str, Any], layout: Layout) -> str:
    g, n, k = config["global_batch_size"], layout.num_devices, _k(config)
    procs = f"{layout.num_processes} processes, " if layout.num_processes > 1 else ""
    micro = g // n // k if g % n == 0 and (g // n) % k == 0 else "?"
    return f"{procs}{n} devices x {k} micro-batches x {micro}"
