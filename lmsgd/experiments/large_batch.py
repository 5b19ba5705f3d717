"""Large-batch experiment: the paper's three techniques against large-batch baselines on CIFAR-10.

    python -m lmsgd.experiments.large_batch --preset quick|full|tiny --results_dir DIR \
        [--recipes c,f] [--seeds 0,1] [--dry_run]

The paper trains at 32,768 images per step = 2.6% of ImageNet's 1.28M images (~3,500 steps in
90 epochs). On CIFAR-10's 50,000 training images the same ratio is a batch of 1,280
(39 steps per epoch, 3,510 steps in 90 epochs). Each recipe is an ordinary config file in
`configs/cifar10_large_batch/` (rerun any one with `python -m lmsgd.train --config
configs/cifar10_large_batch/<file>.py:<preset> --workdir DIR`):

    a  small-batch baseline: batch 128, momentum SGD, x0.1 steps, moving-average BN
    b  batch 1,280, momentum SGD, linear scaling rule (0.5), no warm-up, x0.1 steps
    c  batch 1,280, Goyal et al.: 5 warm-up epochs + x0.1 steps
    d  batch 1,280, LARS + warm-up + polynomial decay
    e  batch 1,280, Nesterov + warm-up + polynomial decay (Nado et al.)
    f  batch 1,280, the paper: RMSprop warm-up + slow-start + batch-statistics BN per device
    g  (f) with moving-average BN: the ablation of the third technique

Every recipe uses 8 (simulated) devices: 160 images per device at 1,280. Presets (one place,
`PRESETS`): `full` is the protocol (ResNet-20, 32 px, 90 epochs, all recipes, 2 seeds; meant
for accelerators); `quick` is a REDUCED protocol for a 2-core CPU (ResNet-8 at 16 px, 24
epochs, recipes c and f); `tiny` runs a few steps per recipe on the built-in digits (tests).
`finalize` applies a preset and then the one epoch-scaling rule
(`lmsgd.optim.scale_epochs`: every epoch-valued optimizer setting x num_epochs / 90).

Each run is a subprocess `python -m lmsgd.train ...` (JAX fixes its device count once per
process; a subprocess also isolates a diverging or crashing recipe), one workdir per run
under `<results_dir>/runs/`. A run whose workdir already holds a `summary.json` of the same
config is reused, an unfinished one resumes from its checkpoint. Written to `results_dir`:
`results.json` (every run's final and best top-1, training curves, wall times, hardware),
`results.md` (the table) and `test_accuracy.png` (test top-1 and train loss vs epoch).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from lmsgd.config import base_config, load_config_file
from lmsgd.data.prepare import cache_dir, cifar10_root
from lmsgd.optim import scale_epochs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs" / "cifar10_large_batch"

# The recipe files state their batch as one of these two; presets map them to their sizes.
LARGE_BATCH = 1280  # 2.6% of CIFAR-10's 50,000 training images (32,768 / 1.28M in the paper)
SMALL_BATCH = 128
NUM_DEVICES = 8


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


# --- configs ---------------------------------------------------------------------------------


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
    config.model.name = p.model
    config.model.width_multiplier = float(p.width_multiplier)
    config.data.image_size = p.image_size
    if p.dataset == "digits":
        config.data.name = "digits"
        config.data.crop = "auto"
    config.logging.every_steps = p.log_every_steps
    config.logging.tensorboard = p.tensorboard
    config.checkpoint.enabled = p.checkpoints
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


def _settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    from lmsgd.optim import base_learning_rate

    opt = config.optimizer
    schedule = opt.schedule
    if schedule in ("goyal", "polynomial", "cosine") and opt.warmup_epochs > 0:
        schedule += f", warm-up {opt.warmup_epochs:.3g} ep"
    if opt.schedule == "goyal":
        schedule += ", x0.1 at " + "/".join(f"{b:.3g}" for b in opt.goyal_boundaries)
    elif opt.schedule == "slow_start":
        schedule += " at " + "/".join(f"{b:.3g}" for b in opt.slow_start_boundaries)
    if opt.name == "rmsprop_warmup":
        schedule += f"; hand-over {opt.beta_center:.3g}+-{opt.beta_period / 2:.3g} ep"
    group = config.model.bn_group_size or NUM_DEVICES
    return {
        "optimizer": opt.name,
        "schedule": schedule,
        "base_learning_rate": base_learning_rate(opt, config.global_batch_size),
        "norm_mode": config.model.norm_mode,
        "bn_examples": config.global_batch_size // NUM_DEVICES * group,
        "global_batch_size": config.global_batch_size,
        "num_epochs": config.num_epochs,
        "model": f"{config.model.name} x{config.model.width_multiplier:g}",
        "image_size": config.data.image_size,
        "allreduce_dtype": config.allreduce.dtype,
    }


# --- running ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    recipe: Recipe
    seed: int
    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    command: list[str]

    @property
    def name(self) -> str:
        return f"{pathlib.Path(self.recipe.file).stem}_seed{self.seed}"

    def display_command(self) -> str:
        return shlex.join(["python", *self.command[1:]])


def _data_dir(preset: Preset) -> str | None:
    """The CIFAR-10 root for image-folder presets; a clear SystemExit where it is absent."""
    if preset.dataset != "cifar10":
        return None
    env = os.environ.get("LMSGD_CIFAR10_DIR")
    if env:
        if not (pathlib.Path(env) / "train").is_dir():
            raise SystemExit(f"large_batch: LMSGD_CIFAR10_DIR={env} has no train/ folder")
        return env
    try:
        return str(cifar10_root())
    except FileNotFoundError as e:
        raise SystemExit(
            f"large_batch: preset {preset.name!r} needs CIFAR-10 and it is not available: {e}. "
            "(`--preset tiny` runs on the built-in digits instead.)"
        ) from e


def plan_runs(
    preset: str,
    results_dir: str | os.PathLike,
    recipes: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    data_dir: str | None = None,
) -> list[Run]:
    p = get_preset(preset)
    recipes = list(recipes or p.recipes)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; allowed: {','.join(RECIPES)}")
    runs = []
    for key in recipes:
        recipe = RECIPES[key]
        for seed in seeds if seeds is not None else p.seeds:
            config = load_recipe(recipe_path(recipe), preset)
            config.seed = int(seed)
            workdir = pathlib.Path(results_dir) / "runs" / f"{recipe_path(recipe).stem}_seed{seed}"
            command = [
                sys.executable, "-m", "lmsgd.train",
                f"--config={recipe_path(recipe).relative_to(REPO_ROOT)}:{preset}",  # cwd: repo
                f"--workdir={workdir}",
                f"--config.seed={int(seed)}",
            ]  # fmt: skip
            if data_dir is not None:
                config.data.data_dir = data_dir
                command.append(f"--config.data.data_dir={data_dir}")
            runs.append(Run(recipe, int(seed), workdir, config, command))
    return runs


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    return records


def read_curves(workdir: pathlib.Path, steps_per_epoch: int | None) -> dict[str, list]:
    """Train loss/accuracy per logged step and eval top-1 per eval from metrics.jsonl.

    A resumed run appends to metrics.jsonl and repeats the steps after its last checkpoint:
    the last record of each (kind, step) wins.
    """
    latest: dict[tuple[str, int], dict] = {}
    for r in _read_jsonl(workdir / "metrics.jsonl"):
        latest[(r.get("kind"), r.get("step"))] = r
    train = sorted((r for (k, _), r in latest.items() if k == "train"), key=lambda r: r["step"])
    evals = sorted((r for (k, _), r in latest.items() if k == "eval"), key=lambda r: r["step"])
    if steps_per_epoch is None:
        steps_per_epoch = next(
            (round(r["step"] / r["epoch"]) for r in train if r.get("epoch")), None
        )

    def epoch(step):
        return step / steps_per_epoch if steps_per_epoch else None

    keep_train = ("loss", "accuracy", "learning_rate", "alpha_sgd", "grad_norm")
    return {
        "train": [
            {"step": r["step"], "epoch": epoch(r["step"]),
             **{k: r[k] for k in keep_train if k in r}}
            for r in train
        ],
        "eval": [
            {"step": r["step"], "epoch": epoch(r["step"]),
             **{k: r[k] for k in ("top1", "top5", "loss") if k in r}}
            for r in evals
        ],
    }  # fmt: skip


def _config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def collect(run: Run, *, returncode: int | None, wall_time_s: float | None) -> dict[str, Any]:
    """The record of one run from its workdir (summary.json, metrics.jsonl, train.log)."""
    summary_path = run.workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    log_path = run.workdir / "train.log"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    if summary is not None and returncode in (0, None):
        status = "ok"
    elif "non-finite loss" in log_text or "NonFiniteLossError" in log_text:
        status = "diverged"
    elif returncode == 0:
        status = "preempted"  # SIGTERM: checkpointed; rerunning the experiment resumes it
    else:
        status = "failed"
    spe = summary["plan"]["steps_per_epoch"] if summary else None
    curves = read_curves(run.workdir, spe)
    evals = [e for e in curves["eval"] if e.get("top1") is not None]
    best = max(evals, key=lambda e: e["top1"]) if evals else None
    error = None
    if status != "ok":
        tail = [ln for ln in log_text.splitlines() if ln.strip()][-15:]
        error = "\n".join(tail) or f"exit code {returncode}"
    return {
        "recipe": run.recipe.key,
        "label": run.recipe.label,
        "config_file": str(recipe_path(run.recipe).relative_to(REPO_ROOT)),
        "seed": run.seed,
        "workdir": str(run.workdir),
        "command": run.display_command(),
        "status": status,
        "returncode": returncode,
        "final_top1": summary["eval_top1"] if summary else None,
        "final_top5": summary["eval_top5"] if summary else None,
        "best_top1": best["top1"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "final_train_loss": summary["final_train_loss"] if summary else None,
        "eval_examples": summary["eval_examples"] if summary else None,
        "steps": summary["step"] if summary else (curves["train"][-1]["step"]
                                                  if curves["train"] else 0),
        "epochs": summary["epochs"] if summary else None,
        "steps_per_epoch": spe,
        "wall_time_s": wall_time_s,
        "train_wall_time_s": summary["train_wall_time_s"] if summary else None,
        "compile_time_s": summary["compile_time_s"] if summary else None,
        "images_per_s": summary["images_per_s"] if summary else None,
        "devices": summary["devices"] if summary else None,
        "num_devices": summary["plan"]["num_devices"] if summary else None,
        "bn_span_examples": summary["plan"]["bn_span_examples"] if summary else None,
        "num_params": summary["num_params"] if summary else None,
        "settings": _settings(run.config),
        "config": _config_dict(run.config),
        "error": error,
        "curves": curves,
    }  # fmt: skip


def _wait_forwarding_sigterm(proc: subprocess.Popen) -> int:
    """Waits for the run; SIGTERM is passed on to it (it checkpoints and exits 0), Ctrl-C or
    another error kills it."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def execute(run: Run, *, echo=print) -> dict[str, Any]:
    """Runs one recipe in a subprocess (or reuses a finished identical run) and collects it."""
    summary_path = run.workdir / "summary.json"
    record_path = run.workdir / "experiment_run.json"
    if summary_path.exists():
        done = json.loads(summary_path.read_text())
        if done.get("config") != _config_dict(run.config):
            raise SystemExit(
                f"large_batch: {run.workdir} holds a finished run of another config; "
                "choose a new --results_dir or delete that folder"
            )
        previous = json.loads(record_path.read_text()) if record_path.exists() else {}
        echo(f"[{run.name}] reusing the finished run in {run.workdir}")
        record = collect(run, returncode=None, wall_time_s=previous.get("wall_time_s"))
        record["load_average_end"] = previous.get("load_average_end")
        return record
    run.workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    echo(f"[{run.name}] {run.display_command()}")
    t0 = time.perf_counter()
    with open(run.workdir / "train.log", "a") as log:
        proc = subprocess.Popen(
            run.command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        returncode = _wait_forwarding_sigterm(proc)
    wall = time.perf_counter() - t0
    record = collect(run, returncode=returncode, wall_time_s=wall)
    record["load_average_end"] = _load_average()
    record_path.write_text(
        json.dumps({"wall_time_s": wall, "returncode": returncode,
                    "load_average_end": record["load_average_end"]})
    )  # fmt: skip
    if record["num_devices"] not in (None, NUM_DEVICES) and (
        record["bn_span_examples"] != record["settings"]["bn_examples"]
    ):
        echo(
            f"[{run.name}] WARNING: {record['num_devices']} devices, not {NUM_DEVICES}: "
            f"normalization statistics spanned {record['bn_span_examples']} images, not "
            f"{record['settings']['bn_examples']} (num_cpu_devices applies on CPU only)"
        )
    top1 = record["final_top1"]
    echo(
        f"[{run.name}] {record['status']}: final top-1 "
        f"{'-' if top1 is None else f'{100 * top1:.2f}%'} in {wall:.0f}s"
        + (f"\n{record['error']}" if record["error"] else "")
    )
    return record


# --- reporting -------------------------------------------------------------------------------


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy a shared machine was (timings depend on it)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def hardware_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_cores": usable,
        "memory_gb": round(memory_gb, 1) if memory_gb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_platforms": os.environ.get("JAX_PLATFORMS"),
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "load_average_at_start": _load_average(),
        **versions,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per recipe (in recipe order): its runs' final and best top-1 and mean."""
    rows = []
    for key in RECIPES:
        runs = [r for r in records if r["recipe"] == key]
        if not runs:
            continue
        finals = [r["final_top1"] for r in runs if r["final_top1"] is not None]
        bests = [r["best_top1"] for r in runs if r["best_top1"] is not None]
        rows.append({
            "recipe": key,
            "label": runs[0]["label"],
            "seeds": [r["seed"] for r in runs],
            "statuses": [r["status"] for r in runs],
            "final_top1": [r["final_top1"] for r in runs],
            "best_top1": [r["best_top1"] for r in runs],
            "best_epoch": [r["best_epoch"] for r in runs],
            "final_top1_mean": sum(finals) / len(finals) if finals else None,
            "best_top1_mean": sum(bests) / len(bests) if bests else None,
            "wall_time_s": [r["wall_time_s"] for r in runs],
            "bn_span_examples": [r["bn_span_examples"] for r in runs],
            "settings": runs[0]["settings"],
        })  # fmt: skip
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| recipe | optimizer, schedule (epochs) | BN (examples), eval statistics | batch | "
        "base lr | final top-1 % | best top-1 % (epoch) | wall time |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        s = row["settings"]
        norm = "batch statistics" if s["norm_mode"] == "batch_stats" else "moving averages"
        finals = " / ".join(
            _pct(f) if st == "ok" else st for f, st in zip(row["final_top1"], row["statuses"])
        )
        if len(row["final_top1"]) > 1 and row["final_top1_mean"] is not None:
            finals += f" (mean {_pct(row['final_top1_mean'])})"
        bests = " / ".join(
            f"{_pct(b)} ({e:.3g})" if b is not None else "-"
            for b, e in zip(row["best_top1"], row["best_epoch"])
        )
        walls = " / ".join(_duration(w) for w in row["wall_time_s"])
        spans = sorted({b for b in row["bn_span_examples"] if b is not None})
        bn = " / ".join(map(str, spans)) if spans else s["bn_examples"]
        lines.append(
            f"| {row['label']} | {s['optimizer']}, {s['schedule']} | {bn}, "
            f"{norm} | {s['global_batch_size']:,} | {s['base_learning_rate']:.4g} | {finals} | "
            f"{bests} | {walls} |"
        )
    return header + "\n".join(lines) + "\n"


def markdown_report(results: dict[str, Any]) -> str:
    p = results["preset"]
    hw = results["hardware"]
    title = f"## Large-batch experiment, preset `{p['name']}`"
    if p["reduced"]:
        title += " (REDUCED protocol, not the paper's)"
    seeds = ",".join(str(s) for s in results["seeds"])
    lines = [
        title,
        "",
        f"Protocol: {p['description']}.",
        "Epoch-valued optimizer settings are the paper's 90-epoch values x "
        f"{p['num_epochs']:g}/90 (`lmsgd.optim.scale_epochs`); 8 (simulated) devices; "
        f"top-1 on all {results['eval_examples'] or 0:,} held-out images; seeds {seeds}.",
        "",
        markdown_table(results["summary"]),
        f"Hardware: {hw['cpu']}, {hw['cpu_cores']} cores, {hw['memory_gb']} GB, "
        f"{results['devices'] or '8 simulated CPU devices'}; jax {hw['jax']}. "
        f"Wall time {_duration(results['wall_time_s'])} for all runs (each: process start-up, "
        "data loading, compilation, training and evaluations).",
        f"Rerun: `python -m lmsgd.experiments.large_batch --preset {p['name']} --results_dir DIR "
        f"--recipes {','.join(results['recipes'])} --seeds {seeds}`; one recipe: "
        f"`python -m lmsgd.train --config configs/cifar10_large_batch/<file>.py:{p['name']} "
        "--workdir DIR`.",
        "",
    ]
    return "\n".join(lines)


def plot(records: Sequence[dict[str, Any]], path: pathlib.Path, title: str) -> None:
    """Test top-1 and train loss vs epoch, one colour per recipe, one line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {key: plt.get_cmap("tab10")(i) for i, key in enumerate(RECIPES)}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r["seed"] for r in records})
    for r in records:
        seed_i = seeds.index(r["seed"])
        kw = {"color": colors[r["recipe"]], "linestyle": styles[seed_i % len(styles)]}
        label = f"{r['label']} (seed {r['seed']})"
        ev = [e for e in r["curves"]["eval"] if e.get("epoch") is not None and "top1" in e]
        if ev:
            ax_acc.plot([e["epoch"] for e in ev], [100 * e["top1"] for e in ev], marker=".",
                        label=label, **kw)  # fmt: skip
        tr = [t for t in r["curves"]["train"] if t.get("epoch") is not None and "loss" in t]
        tr = [t for t in tr if math.isfinite(t["loss"])]
        if tr:
            ax_loss.plot([t["epoch"] for t in tr], [t["loss"] for t in tr], label=label, **kw)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="train loss (logged steps)", title="training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], results_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    paths = {
        "json": results_dir / "results.json",
        "markdown": results_dir / "results.md",
        "figure": results_dir / "test_accuracy.png",
    }
    results["summary"] = summarize(results["runs"])
    # Sum of the runs' own wall times, so a rerun that reuses finished runs reports the same.
    results["wall_time_s"] = sum(r["wall_time_s"] or 0.0 for r in results["runs"])
    evals = [r["eval_examples"] for r in results["runs"] if r["eval_examples"]]
    results["eval_examples"] = evals[0] if evals else None
    devices = [r["devices"] for r in results["runs"] if r["devices"]]
    results["devices"] = devices[0] if devices else None
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["markdown"].write_text(markdown_report(results))
    title = f"large_batch preset {results['preset']['name']}"
    if results["preset"]["reduced"]:
        title += " (REDUCED protocol)"
    plot(results["runs"], paths["figure"], title)
    return paths


def run_experiment(
    preset: str,
    results_dir: str | os.PathLike,
    recipes: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    *,
    dry_run: bool = False,
    echo=print,
) -> dict[str, Any]:
    """Runs every (recipe, seed) of `preset` in turn; writes results.json/.md and the figure."""
    p = get_preset(preset)
    results_dir = pathlib.Path(results_dir).resolve()
    data_dir = None if dry_run and p.dataset == "cifar10" else _data_dir(p)
    runs = plan_runs(preset, results_dir, recipes, seeds, data_dir)
    if dry_run:
        for run in runs:
            echo(run.display_command())
        return {"runs": [], "commands": [r.display_command() for r in runs]}
    results_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "experiment": "large_batch",
        "preset": dataclasses.asdict(p),
        "recipes": sorted({r.recipe.key for r in runs}),
        "seeds": sorted({r.seed for r in runs}),
        "data_dir": data_dir,
        "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hardware": hardware_info(),
        "wall_time_s": 0.0,
        "session_wall_time_s": 0.0,
        "runs": [],
    }
    t0 = time.perf_counter()
    for i, run in enumerate(runs):
        echo(f"run {i + 1}/{len(runs)}: {run.recipe.label}, seed {run.seed}")
        record = execute(run, echo=echo)
        results["runs"].append(record)
        results["session_wall_time_s"] = time.perf_counter() - t0
        paths = write_outputs(results, results_dir)  # after every run: partial results survive
        if record["status"] == "preempted":
            echo("preempted (SIGTERM): rerun the same command to resume")
            break
    echo(markdown_report(results))
    echo("wrote " + ", ".join(str(p) for p in paths.values()))
    return results


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmsgd.experiments.large_batch",
        description="Large-batch CIFAR-10 experiment: the paper's recipe against baselines.",
    )
    parser.add_argument("--preset", choices=list(PRESETS), default="quick")
    parser.add_argument("--results_dir", required=True, help="where runs and results go")
    parser.add_argument(
        "--recipes",
        default=None,
        help=f"comma-separated recipe keys from {','.join(RECIPES)} or 'all' "
        "(default: the preset's)",
    )
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: preset's)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv)
    recipes = None
    if args.recipes:
        recipes = list(RECIPES) if args.recipes == "all" else _csv(args.recipes)
    seeds = [int(s) for s in _csv(args.seeds)] if args.seeds else None
    try:
        results = run_experiment(
            args.preset, args.results_dir, recipes, seeds, dry_run=args.dry_run
        )
    except ValueError as e:
        parser.error(str(e))
    failed = [f"{r['recipe']} seed {r['seed']}" for r in results["runs"] if r["status"] == "failed"]
    if failed:
        print(f"large_batch: run(s) failed: {', '.join(failed)} (see their train.log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
