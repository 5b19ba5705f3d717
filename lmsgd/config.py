"""The whole training config: its schema, defaults and validation, in one place.

A config is an `ml_collections.ConfigDict` with top-level keys (`seed`, `num_epochs`,
`global_batch_size`, `eval_every_epochs`, ...) and the sections `model`, `optimizer`, `data`,
`allreduce`, `checkpoint` and `logging`. Config files in `configs/` start from
`base_config()` and change what they need; `validate_config` rejects unknown keys, wrong types
and bad values before anything is compiled, naming the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from lmsgd import schema as s
from lmsgd.data.config import DATA
from lmsgd.errors import ConfigError
from lmsgd.layout import AUTO
from lmsgd.models.normalization import MODES
from lmsgd.models.registry import ARCHITECTURES, DTYPES
from lmsgd.optim.config import OPTIMIZER
from lmsgd.parallel.allreduce import ALGORITHMS
from lmsgd.parallel.allreduce import DTYPES as ALLREDUCE_DTYPES

TOP_LEVEL: dict[str, s.Key] = {
    "seed": s.Key(
        0,
        "Seed of parameter initialization and data order.",
        s.nonneg_int,
        "a non-negative integer",
    ),
    "num_epochs": s.Key(
        90.0,
        "Training length in epochs (fractions allowed).",
        s.positive,
        "a positive number of epochs",
    ),
    "global_batch_size": s.Key(
        32768,
        "Images per optimizer step over all devices (per device = this / devices).",
        s.positive_int,
        "a positive integer divisible by the number of devices",
    ),
    "accumulation_steps": s.Key(
        None,
        "Gradient accumulation: each device runs its share of the global batch as this many "
        "micro-batches (one at a time in memory), then one all-reduce and one update. BN "
        "statistics are per micro-batch: N devices x K equals N*K devices exactly. None: 1 "
        "for a new run; on resume, the value that keeps the BN span and membership of the run "
        "in the workdir (e.g. 2 when 8 devices become 4; docs/resuming.md).",
        s.optional(s.positive_int),
        "None or a positive integer dividing the per-device batch",
        int,
        2,
    ),
    "max_micro_batch": s.Key(
        None,
        "Most images a device runs at once (what fits its memory). Where accumulation_steps "
        "is None, the driver, the planner and `python -m lmsgd.layout` use the fewest "
        "micro-batches per step that keep each within this and a multiple of "
        "model.bn_virtual_batch_size (e.g. 16 for 4,096 images per device and 256); None: no "
        "limit. An explicit accumulation_steps is used as given (docs/scaling_out.md).",
        s.optional(s.positive_int),
        "None or a positive integer",
        int,
        256,
    ),
    "label_smoothing": s.Key(
        0.0,
        "Training loss against (1 - a) one-hot + a / classes (MLPerf's LARS recipe: 0.1; the "
        "paper: 0). Evaluation loss is plain cross-entropy.",
        lambda x: s.is_number(x) and 0 <= x < 1,
        "a number in [0, 1)",
    ),
    "eval_batch_size": s.Key(
        None,
        "Global evaluation batch; None: same as global_batch_size.",
        s.optional(s.positive_int),
        "None or a positive integer divisible by the devices",
        int,
        64,
    ),
    "eval_every_epochs": s.Key(
        10.0,
        "Evaluate every this many epochs (and always at the end).",
        s.positive,
        "a positive number of epochs",
    ),
    "stop_after_steps": s.Key(
        None,
        "Tests and tutorials: stop after this many steps without a final checkpoint, "
        "as a crash would; a rerun resumes.",
        s.optional(s.positive_int),
        "None or a positive integer",
        int,
        5,
    ),
    "num_cpu_devices": s.Key(
        None,
        "Simulate this many CPU devices (laptops, CI). Takes effect only on the CPU "
        "backend and only before JAX initializes it (the command line does this).",
        s.optional(s.positive_int),
        "None or a positive integer",
        int,
        8,
    ),
    "distributed": s.Key(
        "auto",
        "Call jax.distributed.initialize(): 'auto' when a multi-process environment is "
        "detected (JAX_COORDINATOR_ADDRESS, SLURM, Cloud TPU pod), or True / False.",
        s.one_of("auto", True, False),
        "'auto', True or False",
    ),
    "heartbeat_timeout_seconds": s.Key(
        60,
        "Multi-process runs: JAX's coordination service declares a process dead after this "
        "many seconds without a heartbeat and ends the others (JAX's default: 100). Heartbeats "
        "come from a runtime thread, so long compiles or checkpoint writes do not miss them.",
        s.positive_int,
        "a positive integer (seconds)",
    ),
    "compilation_cache": s.Key(
        "workdir",
        "JAX's persistent compilation cache, so that a restart loads the compiled step instead "
        "of compiling it: 'workdir' = <workdir>/jax_cache (shared by all hosts, like the "
        "checkpoints; JAX writes it from process 0 only), a directory path, or '' (off). "
        "An explicit JAX_COMPILATION_CACHE_DIR (or jax.config) wins over 'workdir'.",
        lambda x: isinstance(x, str),
        "'workdir', a directory path or '' (off)",
    ),
}

MODEL: dict[str, s.Key] = {
    "name": s.Key(
        "resnet50", "Architecture.", s.one_of(*ARCHITECTURES), f"one of {tuple(ARCHITECTURES)}"
    ),
    "num_classes": s.Key(
        None,
        "Head size; None: the dataset's number of classes.",
        s.optional(s.positive_int),
        "None or a positive integer",
        int,
        10,
    ),
    "dtype": s.Key(
        "float32",
        "Compute dtype (parameters stay float32).",
        s.one_of(*DTYPES),
        f"one of {tuple(DTYPES)}",
    ),
    "width_multiplier": s.Key(
        1.0, "Scales every layer's width (tiny test models).", s.positive, "a positive number"
    ),
    "zero_init_residual": s.Key(
        True, "Zero-init the last norm scale of each residual branch.", s.is_bool, "True or False"
    ),
    "norm_mode": s.Key(
        "batch_stats",
        "'batch_stats': normalize with batch statistics only, no moving averages "
        "(the paper); 'moving_average': classic EMAs for evaluation (the ablation).",
        s.one_of(*MODES),
        f"one of {MODES}",
    ),
    "bn_group_size": s.Key(
        1,
        "Devices whose examples are normalized together: 1 = per device (the paper), "
        "k = groups of k devices, 0 = all devices.",
        s.nonneg_int,
        "a non-negative integer",
    ),
    "bn_virtual_batch_size": s.Key(
        0,
        "If > 0 (with bn_group_size=1): normalize each chunk of this many of a device's "
        "examples separately (ghost BN), e.g. 32 to keep the paper's span on devices that hold "
        "more.",
        s.nonneg_int,
        "a non-negative integer dividing the per-device batch",
    ),
    "bn_momentum": s.Key(
        0.9,
        "EMA decay ('moving_average' mode only).",
        lambda x: s.is_number(x) and 0 <= x < 1,
        "a number in [0, 1)",
    ),
    "bn_epsilon": s.Key(1e-5, "Added to the variance.", s.positive, "a positive number"),
    "remat": s.Key(
        False,
        "Train step: recompute each block's normalize + ReLU in the backward pass instead of "
        "keeping it (jax.checkpoint; convolution and block outputs and statistics are kept). "
        "ResNet-50, bf16, 32 per H100 (XLA:GPU, warm-up step): 0.95x the peak memory, 1.07x "
        "the memory traffic (docs/performance.md).",
        s.is_bool,
        "True or False",
    ),
    "eval_stats_batches": s.Key(
        1,
        "'batch_stats' mode: statistics for evaluation. 1 = those of the last training batch "
        "averaged over all workers (the paper); K > 1 = recomputed with the final weights over "
        "K fresh training batches ('precise BN').",
        s.positive_int,
        "a positive integer",
    ),
}

ALLREDUCE: dict[str, s.Key] = {
    "dtype": s.Key(
        "float32",
        "What gradients travel in; the result is used in float32.",
        s.one_of(*ALLREDUCE_DTYPES),
        f"one of {tuple(ALLREDUCE_DTYPES)}",
    ),
    "algorithm": s.Key(
        "flat",
        "'auto' (flat for float32 or up to 8 devices, else two_dimensional over (hosts, local "
        "devices): accurate 16-bit sums at any device count; lmsgd.layout), 'flat' (one "
        "all-reduce), 'hierarchical' (inside hosts, then across), 'two_dimensional' "
        "(reduce-scatter, all-reduce, all-gather).",
        s.one_of(AUTO, *ALGORITHMS),
        f"one of {(AUTO, *ALGORITHMS)}",
    ),
    "fuse": s.Key(
        False,
        "One flat buffer for all gradients (True; costs two gradient-sized copies) or one "
        "collective per tensor that XLA's all-reduce combiner merges (False, measured faster).",
        s.is_bool,
        "True or False",
    ),
    "flatten": s.Key(
        False,
        "Each gradient all-reduced as a 1-D vector (True): XLA:GPU then updates the parameters "
        "in place (fewer copies and less memory on one node), but combines the all-reduces of "
        "a multi-node mesh worse (docs/performance.md). Same values either way.",
        s.is_bool,
        "True or False",
    ),
    "predivide_exponent": s.Key(
        0.5,
        "float16/bfloat16 only: each level's partial sum of n gradients travels divided by "
        "n ** this (rounded to a power of two); the rest of 1/N is applied in float32 after "
        "the sum. 1 = mean before the sum (underflows at large N), 0 = sum first (overflows).",
        lambda x: s.is_number(x) and 0 <= x <= 1,
        "a number in [0, 1]",
    ),
    "mesh_shape": s.Key(
        None,
        "None: 1-D mesh for 'flat', (processes, local devices) otherwise; or an explicit "
        "(devices,) or (hosts, local_devices).",
        s.optional(
            lambda x: (
                isinstance(x, (tuple, list))
                and 1 <= len(x) <= 2
                and all(s.positive_int(v) for v in x)
            )
        ),
        "None, (devices,) or (hosts, local_devices)",
        tuple,
        (8,),
    ),
}

CHECKPOINT: dict[str, s.Key] = {
    "enabled": s.Key(
        True, "Save and resume checkpoints in <workdir>/checkpoints.", s.is_bool, "True or False"
    ),
    "every_steps": s.Key(
        1000, "Save every this many steps (and at the end).", s.positive_int, "a positive integer"
    ),
    "keep": s.Key(3, "Checkpoints kept (the newest).", s.positive_int, "a positive integer"),
    "async_save": s.Key(
        True, "Write checkpoints in the background (orbax).", s.is_bool, "True or False"
    ),
}

LOGGING: dict[str, s.Key] = {
    "every_steps": s.Key(50, "Write training metrics every this many steps.", s.positive_int,
                         "a positive integer"),
    "tensorboard": s.Key(True, "Write TensorBoard summaries to the workdir.", s.is_bool,
                         "True or False"),
    "profile_steps": s.Key(
        None, "(start, stop): trace these steps with jax.profiler into <workdir>/profile.",
        s.optional(lambda x: isinstance(x, (tuple, list)) and len(x) == 2
                   and all(s.nonneg_int(v) for v in x) and x[0] < x[1]),
        "None or (start_step, stop_step) with start < stop", tuple, (1, 2)),
}  # fmt: skip


def _virtual_batch_rule(cfg: Mapping[str, Any]) -> str | None:
    if cfg["bn_virtual_batch_size"] and cfg["bn_group_size"] != 1:
        return (
            f"config.model.bn_virtual_batch_size={cfg['bn_virtual_batch_size']} splits one "
            f"device's batch and needs config.model.bn_group_size=1 (got "
            f"{cfg['bn_group_size']})"
        )
    return None


def _mesh_rule(cfg: Mapping[str, Any]) -> str | None:
    shape = cfg["mesh_shape"]
    if cfg["algorithm"] not in ("flat", AUTO) and shape is not None and len(shape) != 2:
        return (
            f"config.allreduce.algorithm={cfg['algorithm']!r} needs a 2-D "
            f"config.allreduce.mesh_shape (hosts, local_devices); got {tuple(shape)}"
        )
    return None


SECTIONS: dict[str, s.Section] = {
    "model": s.Section("model", MODEL, rules=(_virtual_batch_rule,)),
    "optimizer": OPTIMIZER,
    "data": DATA,
    "allreduce": s.Section("allreduce", ALLREDUCE, rules=(_mesh_rule,)),
    "checkpoint": s.Section("checkpoint", CHECKPOINT),
    "logging": s.Section("logging", LOGGING),
}
TOP = s.Section("", TOP_LEVEL)


def where_it_went(path: str) -> list[str]:
    """Where a key path that is not in the schema lives now (`config.`-prefixed paths), for a
    one-line hint: `optimizer.beta_center` -> `config.optimizer.rmsprop_warmup.beta_center`,
    `optimizer.slow_start_boundaries` -> `config.optimizer.slow_start.boundaries`, a section's
    key given at the top level (`bn_group_size`) -> `config.model.bn_group_size`."""
    parts = path.removeprefix("config.").split(".")
    if len(parts) == 2 and parts[0] == "optimizer":
        return OPTIMIZER.where_it_went(parts[1])
    if len(parts) == 1:
        return [s.path(parts[0]) for s in SECTIONS.values() if parts[0] in s.keys]
    return []


def base_config() -> ml_collections.ConfigDict:
    """Every key with its default (the paper's recipe on ImageNet-sized settings), locked.

    Locked: a config file that assigns a key that does not exist (a typo) fails on that line,
    with ml_collections' closest-name suggestion.
    """
    cfg = TOP.defaults()
    for name, section in SECTIONS.items():
        cfg[name] = section.defaults()
    cfg.lock()
    return cfg


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raises ConfigError naming the first bad key and what is allowed (no JAX work).

    Command-line strings 'True'/'False' of keys that take a bool or 'auto' are converted
    first (ml_collections parses an override by the type of the current value).
    """
    if isinstance(cfg, ml_collections.ConfigDict):
        TOP.normalize(cfg)
    TOP.validate(cfg, nested=tuple(SECTIONS))
    missing = [name for name in SECTIONS if name not in cfg]
    if missing:
        raise ConfigError(f"config is missing section(s) {missing}; start from base_config()")
    for name, section in SECTIONS.items():
        if isinstance(cfg[name], ml_collections.ConfigDict):
            section.normalize(cfg[name])
        section.validate(cfg[name])


def load_config_file(
    path: str, sibling: str | None = None, arg: str | None = None
) -> ml_collections.ConfigDict:
    """Calls `get_config()` (or `get_config(arg)`, as `--config file.py:arg` does) of a config
    file; `sibling` names a file next to `path` instead.

    Lets baseline configs start from the paper's (`load_config_file(__file__,
    "imagenet_resnet50_akiba32k.py")`) wherever the command runs from.
    """
    import importlib.util
    import pathlib

    file = pathlib.Path(path)
    if sibling is not None:
        file = file.with_name(sibling)
    spec = importlib.util.spec_from_file_location(f"lmsgd_config_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {file} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)
