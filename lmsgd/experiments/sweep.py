"""Where does each recipe break? Top-1 against batch size and against peak learning rate.

    python -m lmsgd.experiments.large_batch --preset sweep --results_dir results/sweep [--commit]
    python -m lmsgd.experiments.sweep --results_dir results/sweep [--dry_run] [--commit]
    python -m lmsgd.experiments.sweep --results_dir results/sweep --report_only \
        [--readme docs/results.md]

Two figures of one sweep (`SWEEPS`), each point run with every seed:

1. top-1 against global batch size (1,280 = 2.6% of CIFAR-10 up to 10,240 = 20%) at a fixed
   epoch budget for recipes (c) Goyal, (d) LARS, (e) Nesterov and (f) the paper, each at the
   learning rate of its own scaling rule (all four scale linearly with the batch), BN
   statistics over 160 images at every batch size (ghost BN, `model.bn_virtual_batch_size`);
2. top-1 against peak learning rate (x1, x2, x4 the scaled rate) at one large batch for (c)
   and (f): the stability edge. A run whose loss turns non-finite is a result: the driver
   names the step, the record says `diverged` and that step, the sweep goes on.

Runs are ordered so that a partial sweep already says something: seed 0 of every point first
(batch 1,280, then the largest batch, then the learning-rate points, then the batch sizes in
between), then seed 1. Each finished run is one small JSON file `<results_dir>/runs/<name>.json`
(the numbers, the status, the eval curve, the command; no checkpoints), written as it finishes
(`--commit` also commits it to git); training workdirs go to `<results_dir>/work/` (not
committed). Rerunning the same command reuses every run with a record (ok or diverged),
resumes an unfinished workdir from its checkpoint and runs the rest. `results.md` and the two
figures are regenerated after every run; `--readme` puts the table into the results page's section
between the `sweep-table` markers and lists the runs it was made from in `readme_runs.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lmsgd.experiments.presets import (
    BN_EXAMPLES,
    RECIPES,
    REPO_ROOT,
    get_preset,
    load_recipe,
    recipe_path,
)
from lmsgd.experiments.runner import Run, cifar10_data_dir, execute, make_run
from lmsgd.hardware import hardware_info

CIFAR10_TRAIN = 50_000


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep: the protocol (a preset) and the points."""

    name: str
    preset: str
    batch_recipes: tuple[str, ...] = ("c", "d", "e", "f")
    batch_sizes: tuple[int, ...] = (1280, 2560, 5120, 10240)
    lr_recipes: tuple[str, ...] = ("c", "f")
    lr_batch: int = 5120
    lr_multipliers: tuple[float, ...] = (1.0, 2.0, 4.0)
    seeds: tuple[int, ...] = (0, 1)
    bn_examples: int = BN_EXAMPLES  # ghost-BN span at every batch size
    checkpoint_every_epochs: int = 3  # so that an interrupted run resumes


SWEEPS: dict[str, Sweep] = {
    "sweep": Sweep(name="sweep", preset="sweep"),
    # The protocol's model and schedule (ResNet-20, 32 px, 90 epochs): for one accelerator
    # (ghost BN keeps 160-image statistics; `Preset.accumulation_steps` where memory is short).
    # Not run here.
    "sweep_full": Sweep(name="sweep_full", preset="full"),
    # Machinery tests: the built-in digits, a few steps per run.
    "sweep_tiny": Sweep(
        name="sweep_tiny",
        preset="tiny",
        batch_recipes=("c", "f"),
        batch_sizes=(40, 80),
        lr_recipes=("f",),
        lr_batch=80,
        lr_multipliers=(1.0, 4.0),
        seeds=(0, 1),
        bn_examples=5,
        checkpoint_every_epochs=1,
    ),
}


def get_sweep(name: str) -> Sweep:
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; allowed: {', '.join(SWEEPS)}")
    return SWEEPS[name]


@dataclasses.dataclass(frozen=True)
class Point:
    recipe: str
    batch: int
    lr_multiplier: float
    seed: int

    @property
    def name(self) -> str:
        stem = pathlib.Path(RECIPES[self.recipe].file).stem
        return f"{stem}_b{self.batch:05d}_lrx{self.lr_multiplier:g}_seed{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def execution_order(sweep: Sweep) -> list[int]:
    """Batch sizes in the order they run: the smallest, the largest, the learning-rate
    sweep's batch, then the rest from large to small."""
    sizes = sorted(sweep.batch_sizes)
    order = [sizes[0], sizes[-1]]
    if sweep.lr_batch in sizes and sweep.lr_batch not in order:
        order.append(sweep.lr_batch)
    order += [b for b in reversed(sizes) if b not in order]
    return order


def plan(sweep: Sweep, seeds: Sequence[int] | None = None) -> list[Point]:
    """Every point of the sweep, in execution order (seed-major), without repeats."""
    points: list[Point] = []
    for seed in seeds if seeds is not None else sweep.seeds:
        for batch in execution_order(sweep):
            points += [Point(r, batch, 1.0, seed) for r in sweep.batch_recipes]
            if batch == sweep.lr_batch:
                for mult in sorted(sweep.lr_multipliers, reverse=True):
                    points += [Point(r, batch, float(mult), seed) for r in sweep.lr_recipes]
        if sweep.lr_batch not in sweep.batch_sizes:
            for mult in sorted(sweep.lr_multipliers, reverse=True):
                points += [Point(r, sweep.lr_batch, float(mult), seed) for r in sweep.lr_recipes]
    seen: set[Point] = set()
    return [p for p in points if not (p in seen or seen.add(p))]


def point_run(
    sweep: Sweep, point: Point, results_dir: pathlib.Path, data_dir: str | None = None
) -> Run:
    """The `lmsgd.train` run of one point: the recipe under the sweep's preset, with the
    point's batch, ghost-BN span and learning rate as `--config` overrides."""
    base = load_recipe(recipe_path(point.recipe), sweep.preset)
    preset = get_preset(sweep.preset)
    if base.optimizer.base_learning_rate is not None:
        raise ValueError(f"recipe {point.recipe} fixes its rate; the sweep needs lr_per_256")
    steps_per_epoch = max(1, preset_train_size(preset.dataset) // point.batch)
    overrides: dict[str, Any] = {
        "global_batch_size": point.batch,
        "model.bn_virtual_batch_size": sweep.bn_examples,
        "checkpoint.every_steps": sweep.checkpoint_every_epochs * steps_per_epoch,
    }
    if point.lr_multiplier != 1.0:
        overrides["optimizer.lr_per_256"] = base.optimizer.lr_per_256 * point.lr_multiplier
    return make_run(
        RECIPES[point.recipe],
        sweep.preset,
        point.seed,
        results_dir / "work" / point.name,
        overrides=overrides,
        data_dir=data_dir,
        name=point.name,
    )


def preset_train_size(dataset: str) -> int:
    return {"cifar10": CIFAR10_TRAIN, "digits": 1437}[dataset]


def protocol(sweep: Sweep) -> dict[str, Any]:
    """What a record must match to be reused: the preset and the sweep's fixed settings."""
    p = dataclasses.asdict(get_preset(sweep.preset))
    for key in ("description", "recipes", "seeds", "log_every_steps", "tensorboard"):
        p.pop(key)
    return {**p, "bn_examples": sweep.bn_examples}


def record_path(results_dir: pathlib.Path, point: Point) -> pathlib.Path:
    return results_dir / "runs" / f"{point.name}.json"


def curve(record: dict[str, Any]) -> list[list[float]]:
    return [
        [round(e["epoch"], 3), round(e["top1"], 4)]
        for e in record["curves"]["eval"]
        if e.get("epoch") is not None and e.get("top1") is not None
    ]


def small_record(sweep: Sweep, point: Point, run: Run, record: dict[str, Any]) -> dict[str, Any]:
    """The committed result of one run (a few KB): numbers, status, eval curve, command."""
    hw = hardware_info()
    train = record["curves"]["train"]
    finite = [t["loss"] for t in train if "loss" in t and math.isfinite(t["loss"])]
    error = record["error"]
    return {
        "sweep": sweep.name,
        "point": point.as_dict(),
        "protocol": protocol(sweep),
        "status": record["status"],
        "diverged_step": record["diverged_step"],
        "final_top1": record["final_top1"],
        "best_top1": record["best_top1"],
        "best_epoch": record["best_epoch"],
        "final_train_loss": record["final_train_loss"],
        "last_logged_train_loss": finite[-1] if finite else None,
        "eval_top1_curve": curve(record),
        "steps": record["steps"],
        "steps_per_epoch": record["steps_per_epoch"],
        "base_learning_rate": record["settings"]["base_learning_rate"],
        "bn_span_examples": record["bn_span_examples"],
        "num_devices": record["num_devices"],
        "eval_examples": record["eval_examples"],
        "wall_time_s": record["wall_time_s"],
        "train_wall_time_s": record["train_wall_time_s"],
        "images_per_s": record["images_per_s"],
        "load_average_end": record.get("load_average_end"),
        "machine": {k: hw[k] for k in ("cpu", "cpu_cores", "jax")},
        "command": run.display_command().replace(str(REPO_ROOT) + "/", ""),
        "error": None if error is None else error[-600:],
    }


def load_records(results_dir: pathlib.Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((results_dir / "runs").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    return records


def is_final(record: dict[str, Any] | None, sweep: Sweep) -> bool:
    """A record that counts: ok or diverged, of this sweep's protocol."""
    return (
        record is not None
        and record.get("status") in ("ok", "diverged")
        and record.get("protocol") == protocol(sweep)
    )


def write_json(path: pathlib.Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def git_commit(paths: Sequence[pathlib.Path], message: str, echo=print) -> None:
    """Commits exactly `paths` (other staged changes stay staged), retrying a busy index."""
    rel = [str(p.relative_to(REPO_ROOT)) for p in paths]
    for attempt in range(5):
        add = subprocess.run(["git", "add", "--", *rel], cwd=REPO_ROOT, capture_output=True)
        done = add.returncode == 0 and (
            subprocess.run(
                ["git", "commit", "-q", "-m", message, "--", *rel],
                cwd=REPO_ROOT,
                capture_output=True,
            ).returncode
            == 0
        )
        if done:
            return
        time.sleep(2 + 3 * attempt)
    echo(f"sweep: could not commit {', '.join(rel)} (left for a later commit)")


def run_sweep(
    name: str,
    results_dir: str | os.PathLike,
    *,
    seeds: Sequence[int] | None = None,
    dry_run: bool = False,
    commit: bool = False,
    echo=print,
    execute_run: Callable[[Run], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Runs every point of sweep `name` not yet recorded; returns all records of the plan."""
    from lmsgd.experiments import report  # matplotlib only when reporting

    sweep = get_sweep(name)
    results_dir = pathlib.Path(results_dir).resolve()
    preset = get_preset(sweep.preset)
    data_dir = None if dry_run else cifar10_data_dir(preset)
    points = plan(sweep, seeds)
    if dry_run:
        for i, point in enumerate(points):
            state = "done" if is_final(read_record(results_dir, point), sweep) else "to run"
            echo(f"{i + 1:3d} {point.name} [{state}]: "
                 f"{point_run(sweep, point, results_dir).display_command()}")  # fmt: skip
        return []
    ensure_gitignore(results_dir)
    execute_run = execute_run or (lambda run: execute(run, echo=echo))
    records = []
    for i, point in enumerate(points):
        previous = read_record(results_dir, point)
        if is_final(previous, sweep):
            records.append(previous)
            continue
        run = point_run(sweep, point, results_dir, data_dir)
        echo(f"sweep run {i + 1}/{len(points)}: {point.name}")
        full = execute_run(run)
        if full["status"] == "preempted":
            echo("preempted (SIGTERM): rerun the same command to resume")
            break
        record = small_record(sweep, point, run, full)
        path = record_path(results_dir, point)
        write_json(path, record)
        records.append(record)
        report.write_sweep_outputs(sweep, load_records(results_dir), results_dir)
        if commit:
            git_commit([path], f"sweep result: {point.name} {record['status']}", echo=echo)
    report.write_sweep_outputs(sweep, load_records(results_dir), results_dir)
    return records


def read_record(results_dir: pathlib.Path, point: Point) -> dict[str, Any] | None:
    path = record_path(results_dir, point)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def ensure_gitignore(results_dir: pathlib.Path) -> None:
    """Training workdirs (checkpoints, logs) stay out of git; the records go in."""
    results_dir.mkdir(parents=True, exist_ok=True)
    ignore = results_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("/work/\n*.tmp\n")


README_BEGIN = "<!-- sweep-table begin: generated by python -m lmsgd.experiments.sweep -->"
README_END = "<!-- sweep-table end -->"


def readme_table(readme_text: str) -> str:
    """The generated block between the markers of README's section."""
    m = re.search(re.escape(README_BEGIN) + r"\n(.*?)" + re.escape(README_END), readme_text,
                  re.S)  # fmt: skip
    if m is None:
        raise ValueError("README has no sweep-table markers")
    return m.group(1)


def update_readme(sweep: Sweep, results_dir: pathlib.Path, readme: pathlib.Path) -> str:
    """Puts the table of the current records into README and lists them in readme_runs.json."""
    from lmsgd.experiments import report

    records = [r for r in load_records(results_dir) if is_final(r, sweep)]
    names = sorted(Point(**r["point"]).name for r in records)
    write_json(results_dir / "readme_runs.json", names)
    table = report.sweep_markdown(sweep, records, total=len(plan(sweep)))
    text = readme.read_text()
    old = readme_table(text)
    readme.write_text(text.replace(README_BEGIN + "\n" + old, README_BEGIN + "\n" + table, 1))
    report.sweep_figures(sweep, records, results_dir)
    return table


def main(argv: Sequence[str] | None = None, *, default_sweep: str = "sweep") -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lmsgd.experiments.sweep",
        description="Top-1 against batch size and learning rate for the large-batch recipes.",
    )
    parser.add_argument("--sweep", "--preset", choices=list(SWEEPS), default=default_sweep)
    parser.add_argument("--results_dir", required=True)
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the sweep's)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs and exit")
    parser.add_argument("--commit", action="store_true", help="git-commit each run's record")
    parser.add_argument("--report_only", action="store_true", help="regenerate the report")
    parser.add_argument("--readme", default=None, help="also put the table into this README")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    sweep = get_sweep(args.sweep)
    results_dir = pathlib.Path(args.results_dir).resolve()
    if args.report_only or args.readme:
        from lmsgd.experiments import report

        report.write_sweep_outputs(sweep, load_records(results_dir), results_dir)
        if args.readme:
            update_readme(sweep, results_dir, pathlib.Path(args.readme))
        print((results_dir / "results.md").read_text())
        return 0
    records = run_sweep(
        args.sweep, results_dir, seeds=seeds, dry_run=args.dry_run, commit=args.commit
    )
    failed = [Point(**r["point"]).name for r in records if r["status"] == "failed"]
    if failed:
        print(f"sweep: run(s) failed: {', '.join(failed)} (see their work/<name>/train.log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
