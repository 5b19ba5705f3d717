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
Modules: `presets` (recipes, presets, `finalize`: what the config files import), `runner`
(subprocesses, reuse and resume), `report` (tables and figures), `sweep` (accuracy against
batch size and learning rate, `--preset sweep`); this one is the command line.

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
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from lmsgd.experiments.presets import (  # noqa: F401  (re-exported: the experiment's API)
    CONFIG_DIR,
    LARGE_BATCH,
    NUM_DEVICES,
    PRESETS,
    RECIPES,
    REPO_ROOT,
    SMALL_BATCH,
    Preset,
    Recipe,
    cifar10_config,
    finalize,
    get_preset,
    load_recipe,
    recipe_path,
)
from lmsgd.experiments.report import markdown_report, write_outputs
from lmsgd.experiments.runner import Run, cifar10_data_dir, collect, execute, plan_runs  # noqa: F401
from lmsgd.hardware import hardware_info


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
    data_dir = None if dry_run and p.dataset == "cifar10" else cifar10_data_dir(p)
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


def sweep_requested(argv: Sequence[str]) -> bool:
    """`--preset sweep` (or another of `sweep.SWEEPS`): the batch-size / learning-rate sweep."""
    from lmsgd.experiments.sweep import SWEEPS

    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--preset=") else None
        if arg == "--preset" and i + 1 < len(argv):
            value = argv[i + 1]
        if value in SWEEPS:
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if sweep_requested(argv):
        from lmsgd.experiments import sweep

        return sweep.main(argv)
    parser = argparse.ArgumentParser(
        prog="python -m lmsgd.experiments.large_batch",
        description="Large-batch CIFAR-10 experiment: the paper's recipe against baselines.",
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="quick",
        help="a preset; or `sweep` (and sweep_full, sweep_tiny): the batch-size / learning-"
        "rate sweep of lmsgd.experiments.sweep, whose options it then takes",
    )
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
