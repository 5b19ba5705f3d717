"""How a config's recipe lands on a device count: per-device batch, BN span, all-reduce.

The recipe is a property of the config, not of the hardware: a config fixes the images per BN
statistic (`model.bn_virtual_batch_size`), the wire dtype and, with `allreduce.algorithm=
'auto'`, asks for a reduction that stays accurate at the device count it runs on. `resolve`
turns that into concrete settings (with `max_micro_batch`, also the gradient accumulation a
device's memory needs) for `devices` devices in `processes` processes, before any
JAX work, so the driver (`lmsgd.run.build`), the planner and the launchers' `--dry-run`
(`python -m lmsgd.layout`) all derive the same thing.

Why two levels for 16-bit wires: tests/test_allreduce_scale.py sums the gradients of 1,024
devices; a flat float16 sum of 1,024 terms drifts by up to ~4% for components the devices
agree on, while `two_dimensional` over (hosts, local devices) stays within 1% of the float64
mean. A flat 16-bit sum is kept only for at most `FLAT_16BIT_MAX_DEVICES` terms (one host's
worth, the inner level of that test).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lmsgd.errors import ConfigError

# The algorithms `allreduce.algorithm` accepts besides lmsgd.parallel.allreduce.ALGORITHMS.
AUTO = "auto"
# 16-bit wires: a flat sum over more devices than this takes two levels (see the docstring).
FLAT_16BIT_MAX_DEVICES = 8
# The two-level algorithm 'auto' picks for 16-bit wires (the one the 1,024-device test bounds).
TWO_LEVEL = "two_dimensional"
# Devices per host assumed when one process drives many devices (simulated CPU devices).
DEFAULT_LOCAL_DEVICES = 8


@dataclasses.dataclass(frozen=True)
class Layout:
    """The recipe on one device count (what the driver prints on its model line)."""

    devices: int
    processes: int
    per_device_batch: int
    accumulation_steps: int
    micro_batch: int
    bn_span: int
    algorithm: str
    dtype: str
    mesh_shape: tuple[int, ...] | None

    def describe(self) -> str:
        """One line: per-device batch, BN span and all-reduce."""
        mesh = "x".join(map(str, self.mesh_shape)) if self.mesh_shape else str(self.devices)
        k = self.accumulation_steps
        return (
            f"{self.devices} devices ({self.processes} processes) x {self.per_device_batch} "
            f"images = {k} micro-batch{'es' if k > 1 else ''} of {self.micro_batch}; "
            f"BN over {self.bn_span} images; all-reduce {self.algorithm} {self.dtype} "
            f"on mesh {mesh}"
        )


def resolve_algorithm(
    algorithm: str,
    dtype: str,
    mesh_shape: tuple[int, ...] | None,
    devices: int,
    processes: int,
) -> tuple[str, tuple[int, ...] | None]:
    """`(algorithm, mesh_shape)` with 'auto' replaced by a concrete choice.

    'auto': flat for float32 or up to FLAT_16BIT_MAX_DEVICES devices; otherwise
    `two_dimensional` over an explicit 2-D `mesh_shape`, else (processes, local devices), else
    (devices / 8, 8) for one process holding many devices; flat when no such split exists.
    """
    if algorithm != AUTO:
        return algorithm, mesh_shape
    if dtype == "float32" or devices <= FLAT_16BIT_MAX_DEVICES:
        return "flat", mesh_shape if mesh_shape is None or len(mesh_shape) == 1 else None
    if mesh_shape is not None and len(mesh_shape) == 2:
        return TWO_LEVEL, tuple(mesh_shape)
    if processes > 1 and devices % processes == 0 and devices // processes > 1:
        return TWO_LEVEL, (processes, devices // processes)
    if processes == 1 and devices % DEFAULT_LOCAL_DEVICES == 0:
        return TWO_LEVEL, (devices // DEFAULT_LOCAL_DEVICES, DEFAULT_LOCAL_DEVICES)
    return "flat", None


def accumulation_steps(config: Mapping[str, Any], devices: int) -> int:
    """Micro-batches per step on `devices` devices: `config.accumulation_steps` where set;
    else the fewest that keep each micro-batch within `config.max_micro_batch` images and a
    whole number of ghost batches (`model.bn_virtual_batch_size`); 1 without a limit.
    ConfigError (one line) where no such split exists."""
    k = config["accumulation_steps"]
    cap = config.get("max_micro_batch")
    g = config["global_batch_size"]
    if k or not cap or g % devices or g // devices <= cap:
        return k or 1
    per_device = g // devices
    model = config["model"]
    virtual = model["bn_virtual_batch_size"]
    if model["bn_group_size"] != 1:
        raise ConfigError(
            f"config.max_micro_batch={cap}: {per_device} images per device (= global_batch_size "
            f"{g} / {devices} devices) need micro-batches, which normalize on their device and "
            f"need config.model.bn_group_size=1 (got {model['bn_group_size']})"
        )
    for k in range(2, per_device + 1):
        micro = per_device // k
        if per_device % k == 0 and micro <= cap and (not virtual or micro % virtual == 0):
            return k
    ghost = f" and a multiple of config.model.bn_virtual_batch_size={virtual}" if virtual else ""
    raise ConfigError(
        f"config.max_micro_batch={cap}: the per-device batch of {per_device} (= "
        f"global_batch_size {g} / {devices} devices) has no split into micro-batches of at most "
        f"{cap} images{ghost}; set config.accumulation_steps or another config.max_micro_batch"
    )


def resolve(config: Mapping[str, Any], devices: int, processes: int = 1) -> Layout:
    """The config's layout on `devices` devices; ConfigError (one line) if it cannot hold
    the config's recipe there (a batch that does not divide, a BN span larger than a
    device's micro-batch)."""
    g = config["global_batch_size"]
    if g % devices:
        raise ConfigError(
            f"config.global_batch_size={g} is not divisible by the {devices} devices; use a "
            f"multiple of {devices} (e.g. {max(devices, g // devices * devices)} or "
            f"{(g // devices + 1) * devices})"
        )
    per_device = g // devices
    k = accumulation_steps(config, devices)
    if per_device % k:
        raise ConfigError(
            f"config.accumulation_steps={k} must divide the per-device batch of {per_device} "
            f"(= global_batch_size {g} / {devices} devices)"
        )
    micro = per_device // k
    model = config["model"]
    group, virtual = model["bn_group_size"], model["bn_virtual_batch_size"]
    if virtual and micro < virtual:
        raise ConfigError(
            f"config.model.bn_virtual_batch_size={virtual}: BN over {virtual} images needs at "
            f"least {virtual} images per device and micro-batch; {devices} devices hold "
            f"{micro} (use fewer devices, or config.model.bn_virtual_batch_size=0 with "
            f"config.model.bn_group_size={virtual // micro if virtual % micro == 0 else 'k'})"
        )
    if virtual and micro % virtual:
        raise ConfigError(
            f"config.model.bn_virtual_batch_size={virtual} must divide the per-device "
            f"micro-batch of {micro} (= global_batch_size {g} / {devices} devices / "
            f"accumulation_steps {k})"
        )
    ar = config["allreduce"]
    shape = tuple(ar["mesh_shape"]) if ar["mesh_shape"] is not None else None
    algorithm, shape = resolve_algorithm(ar["algorithm"], ar["dtype"], shape, devices, processes)
    return Layout(
        devices=devices,
        processes=processes,
        per_device_batch=per_device,
        accumulation_steps=k,
        micro_batch=micro,
        bn_span=virtual or micro * (group or devices),
        algorithm=algorithm,
        dtype=ar["dtype"],
        mesh_shape=shape,
    )


def apply(config: Any, layout: Layout) -> None:
    """Writes the layout's concrete all-reduce choice into `config` (a ConfigDict) in place,
    so that everything downstream (step, checkpoint layout, planner) sees no 'auto'."""
    with config.unlocked():
        config.allreduce.algorithm = layout.algorithm
        config.allreduce.mesh_shape = layout.mesh_shape


def main(argv: list[str] | None = None) -> int:
    """`python -m lmsgd.layout --config CONFIG --devices N [--processes P] [--config.k=v]`:
    prints the layout line (the launchers' --dry-run) or the one-line error; exit 0 or 2."""
    import sys

    from lmsgd import cli

    argv = list(sys.argv if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(
            "usage: python -m lmsgd.layout --config CONFIG[:ARG] --devices N [--processes P] "
            "[--config.KEY=VALUE ...]\n\n" + __doc__.split("\n\n")[0]
        )
        return 0

    def define(fv: Any) -> None:
        from absl import flags

        flags.DEFINE_integer("devices", None, "Devices of the job.", flag_values=fv)
        flags.DEFINE_integer("processes", 1, "Processes (hosts) of the job.", flag_values=fv)

    try:
        config, flags_ = cli.parse(argv, define, require_workdir=False)
        if not flags_.devices or flags_.devices < 1 or flags_.processes < 1:
            raise ConfigError("--devices (and --processes) must be positive integers")
        print(resolve(config, flags_.devices, flags_.processes).describe())
    except ConfigError as e:
        print(f"lmsgd.layout: error: {e}", file=sys.stderr)
        return cli.EXIT_USAGE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
