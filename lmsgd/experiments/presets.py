"""Recipe presets for the CIFAR-10 large-batch experiment: what the config files import.

The recipe files in `configs/cifar10_large_batch/` state their batch as LARGE_BATCH (1,280 =
2.6% of CIFAR-10's 50,000 training images, the paper's 32,768 / 1.28M) or SMALL_BATCH (128)
and their optimizer in the paper's 90-epoch units. `finalize(config, preset)` applies a preset
(`PRESETS`: model, resolution, epochs, devices, ...) and then the one epoch-scaling rule
(`lmsgd.optim.scale_epochs`: every epoch-valued optimizer setting x num_epochs / 90).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import ml_collections

from lmsgd.config import base_config, load_config_file
from lmsgd.data.prepare import cache_dir
from lmsgd.optim import base_learning_rate, scale_epochs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs" / "cifar10_large_batch"

# The recipe files state their batch as one of these two; presets map them to their sizes.
LARGE_BATCH = 1280  # 2.6% of CIFAR-10's 50,000 training images (32,768 / 1.28M in the paper)
SMALL_BATCH = 128
NUM_DEVICES = 8  # the recipes' device count: 160 images per device at LARGE_BATCH
BN_EXAMPLES = LARGE_BATCH // NUM_DEVICES  # per-device statistics span of the recipes: 160


@dataclasses.dataclass(frozen=True)
class Recipe:
    key: str
    file: str
    label: str


RECIPES: dict[str, Recipe] = {
    r.key: r
    for r in (
        Recipe("a", "a_small_batch.py", "(a) small batch 128: momentum SGD, step decay"),
        Recipe("b", "b_linear_scaling.py", "(b) momentum SGD, linear scaling, no warm-up"),
        Recipe("c", "c_goyal.py", "(c) Goyal et al.: warm-up + step decay"),
        Recipe("d", "d_lars.py", "(d) LARS: warm-up + polynomial decay"),
        Recipe("e", "e_nesterov.py", "(e) Nesterov: warm-up + polynomial decay"),
        Recipe("f", "f_paper.py", "(f) paper: RMSprop warm-up + slow-start + batch-stats BN"),
        Recipe("g", "g_paper_moving_average.py", "(g) = (f) with moving-average BN"),
    )
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a preset changes in every recipe (then `scale_epochs` rescales the optimizer)."""

    name: str
    description: str
    reduced: bool  # True: not the protocol; results must be labelled as such
    dataset: str  # 'cifar10' or 'digits'
    model: str
    width_multiplier: float
    image_size: int
    num_epochs: float
    large_batch: int
    small_batch: int
    eval_every_epochs: float
    eval_batch_size: int
    log_every_steps: int
    tensorboard: bool
    checkpoints: bool
    recipes: tuple[str, ...]
    seeds: tuple[int, ...]
    # Devices the run uses (`num_cpu_devices` on CPU; on an accelerator, what it has). The
    # per-device recipes keep BN statistics over `BN_EXAMPLES` images per group (ghost BN)
    # whatever the device count, so 1 device gives the same normalization as 8.
    num_devices: int = NUM_DEVICES
    # Gradient accumulation: micro-batches per optimizer step (1 = none, today's behaviour).
    # Set only when > 1, as `config.accumulation_steps` (the driver's key for it); the ghost-BN
    # span must divide the per-device micro-batch.
    accumulation_steps: int = 1


PRESETS: dict[str, Preset] = {
    "full": Preset(
        name="full",
        description="the protocol: CIFAR-10, ResNet-20 at 32 px, 90 epochs, batch 1,280 "
        "(2.6% of the training set, 3,510 steps), every recipe, 2 seeds; meant for "
        "accelerators",
        reduced=False,
        dataset="cifar10",
        model="cifar_resnet20",
        width_multiplier=1.0,
        image_size=32,
        num_epochs=90.0,
        large_batch=LARGE_BATCH,
        small_batch=SMALL_BATCH,
        eval_every_epochs=2.0,
        eval_batch_size=1000,
        log_every_steps=20,
        tensorboard=True,
        checkpoints=True,
        recipes=tuple(RECIPES),
        seeds=(0, 1),
    ),
    "quick": Preset(
        name="quick",
        description="REDUCED protocol for a 2-core CPU: CIFAR-10 (all 50,000 / 10,000 images) "
        "downscaled to 16 px, ResNet-8, 24 epochs (the 90-epoch schedules x 24/90), batch "
        "1,280 (2.6% of the training set, 936 steps), recipes (c) and (f), 1 seed",
        reduced=True,
        dataset="cifar10",
        model="cifar_resnet8",
        width_multiplier=1.0,
        image_size=16,
        num_epochs=24.0,
        large_batch=LARGE_BATCH,
        small_batch=SMALL_BATCH,
        eval_every_epochs=2.0,
        eval_batch_size=1000,
        log_every_steps=10,
        tensorboard=False,
        checkpoints=True,
        recipes=("c", "f"),
        seeds=(0,),
    ),
    "sweep": Preset(
        name="sweep",
        description="REDUCED protocol for the batch-size / learning-rate sweep on a 2-core CPU: "
        "CIFAR-10 (all 50,000 / 10,000 images) downscaled to 8 px, ResNet-8, 12 epochs (the "
        "90-epoch schedules x 12/90), one device with ghost BN over 160 images (the "
        "per-device statistics of 8 devices at batch 1,280)",
        reduced=True,
        dataset="cifar10",
        model="cifar_resnet8",
        width_multiplier=1.0,
        image_size=8,
        num_epochs=12.0,
        large_batch=LARGE_BATCH,
        small_batch=SMALL_BATCH,
        eval_every_epochs=2.0,
        eval_batch_size=1000,
        log_every_steps=10,
        tensorboard=False,
        checkpoints=True,
        recipes=("c", "d", "e", "f"),
        seeds=(0, 1),
        num_devices=1,
    ),
    "tiny": Preset(
        name="tiny",
        description="machinery test only: scikit-learn digits (1,437 train / 360 held out) "
        "at 8 px, ResNet-8 x0.25, 0.15 epochs (a few steps), batch 40 (2.8% of the "
        "training set); accuracies are meaningless",
        reduced=True,
        dataset="digits",
        model="cifar_resnet8",
        width_multiplier=0.25,
        image_size=8,
        num_epochs=0.15,
        large_batch=40,
        small_batch=16,
        eval_every_epochs=0.1,
        eval_batch_size=360,
        log_every_steps=2,
        tensorboard=False,
        checkpoints=False,
        recipes=("c", "f"),
        seeds=(0,),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


def cifar10_config() -> ml_collections.ConfigDict:
    """The part every recipe shares, at the protocol's size (before `finalize`).

    CIFAR ResNet-20, 90 epochs at batch 1,280 on 8 (simulated) devices, BN per device,
    CIFAR-10 image folders (`python -m lmsgd.data.prepare cifar10`), resize-and-crop
    augmentation with flips, weight decay 1e-4, float32 all-reduce. Optimizer settings are in
    the paper's 90-epoch units; `finalize` rescales them.
    """
    config = base_config()
    config.num_cpu_devices = NUM_DEVICES
    config.num_epochs = 90.0
    config.global_batch_size = LARGE_BATCH
    config.eval_batch_size = 1000
    config.eval_every_epochs = 2.0
    config.model.name = "cifar_resnet20"
    config.model.norm_mode = "batch_stats"
    config.model.bn_group_size = 1  # per device: 160 images at 1,280
    config.data.name = "image_folder"
    config.data.data_dir = os.environ.get("LMSGD_CIFAR10_DIR", str(cache_dir() / "cifar10-jpeg"))
    config.data.image_size = 32
    config.data.crop = "resize_crop"  # resize to 36, random 32 crop: like pad-and-crop
    config.allreduce.dtype = "float32"
    config.checkpoint.every_steps = 500
    config.logging.every_steps = 20
    return config


def finalize(config: ml_collections.ConfigDict, preset: str = "full") -> ml_collections.ConfigDict:
    """Applies `preset` to a recipe, then the one epoch-scaling rule; call it exactly once.

    The recipe states its batch as LARGE_BATCH or SMALL_BATCH and its optimizer in the paper's
    90-epoch units; both become the preset's. `scale_epochs` then multiplies every
    epoch-valued optimizer setting (warm-up, hand-over, decay boundaries) by num_epochs / 90.
    """
    p = get_preset(preset)
    if config.global_batch_size == LARGE_BATCH:
        config.global_batch_size = p.large_batch
    elif config.global_batch_size == SMALL_BATCH:
        config.global_batch_size = p.small_batch
    else:
        raise ValueError(
            f"recipe global_batch_size={config.global_batch_size}; recipes state "
            f"{LARGE_BATCH} (large) or {SMALL_BATCH} (small) and the preset sets the size"
        )
    config.num_epochs = float(p.num_epochs)
    config.eval_every_epochs = float(p.eval_every_epochs)
    config.eval_batch_size = p.eval_batch_size
    config.num_cpu_devices = p.num_devices
    config.model.name = p.model
    config.model.width_multiplier = float(p.width_multiplier)
    config.data.image_size = p.image_size
    if p.dataset == "digits":
        config.data.name = "digits"
        config.data.crop = "auto"
    config.logging.every_steps = p.log_every_steps
    config.logging.tensorboard = p.tensorboard
    config.checkpoint.enabled = p.checkpoints
    if p.accumulation_steps != 1:
        config.accumulation_steps = p.accumulation_steps
    if config.model.bn_group_size == 1:
        # Per-device statistics over G / 8 images whatever the hardware: on 8 devices this is
        # the whole device batch (no-op); on one GPU it splits the batch into 8 ghost batches.
        config.model.bn_virtual_batch_size = config.global_batch_size // NUM_DEVICES
    config.optimizer = scale_epochs(config.optimizer, config.num_epochs)  # the one rule
    return config


def recipe_path(recipe: str | Recipe) -> pathlib.Path:
    r = RECIPES[recipe] if isinstance(recipe, str) else recipe
    return CONFIG_DIR / r.file


def load_recipe(path: str | os.PathLike, preset: str = "full") -> ml_collections.ConfigDict:
    """`get_config(preset)` of a recipe file: what `--config <path>:<preset>` gives."""
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"recipe config {path} not found")
    return load_config_file(str(path), arg=preset)


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The recipe's settings in words and numbers, for tables."""
    opt = config.optimizer
    schedule = opt.schedule
    # The named schedule's and optimizer's own sections (config.optimizer.<name>), if any.
    sched_cfg = opt.get(opt.schedule, {})
    if sched_cfg.get("warmup_epochs", 0) > 0:
        schedule += f", warm-up {sched_cfg['warmup_epochs']:.3g} ep"
    if opt.schedule == "goyal":
        schedule += ", x0.1 at " + "/".join(f"{b:.3g}" for b in sched_cfg["boundaries"])
    elif opt.schedule == "slow_start":
        schedule += " at " + "/".join(f"{b:.3g}" for b in sched_cfg["boundaries"])
    if opt.name == "rmsprop_warmup":
        rw = opt.rmsprop_warmup
        schedule += f"; hand-over {rw.beta_center:.3g}+-{rw.beta_period / 2:.3g} ep"
    group = config.model.bn_group_size or NUM_DEVICES
    bn = config.global_batch_size // NUM_DEVICES * group
    if config.model.bn_group_size == 1 and config.model.bn_virtual_batch_size:
        bn = config.model.bn_virtual_batch_size
    return {
        "optimizer": opt.name,
        "schedule": schedule,
        "base_learning_rate": base_learning_rate(opt, config.global_batch_size),
        "norm_mode": config.model.norm_mode,
        "bn_examples": bn,
        "global_batch_size": config.global_batch_size,
        "num_epochs": config.num_epochs,
        "model": f"{config.model.name} x{config.model.width_multiplier:g}",
        "image_size": config.data.image_size,
        "allreduce_dtype": config.allreduce.dtype,
    }
