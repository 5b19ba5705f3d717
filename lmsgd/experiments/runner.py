"""Runs recipes: one `python -m lmsgd.train` subprocess per run, finished runs reused.

JAX fixes its device count once per process, and a subprocess also isolates a diverging or
crashing recipe. One workdir per run; a workdir that already holds a `summary.json` of the same
config is reused, an unfinished one resumes from its checkpoint (the driver does that).
`collect` turns a workdir into a record (status ok / diverged / preempted / failed, final and
best top-1, curves, wall times).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from lmsgd.data.prepare import cifar10_root
from lmsgd.experiments.presets import (
    NUM_DEVICES,
    RECIPES,
    REPO_ROOT,
    Preset,
    Recipe,
    get_preset,
    load_recipe,
    recipe_path,
    settings,
)
from lmsgd.hardware import load_average


@dataclasses.dataclass
class Run:
    recipe: Recipe
    seed: int
    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    command: list[str]
    name: str = ""

    def __post_init__(self):
        if not self.name:
            self.name = f"{pathlib.Path(self.recipe.file).stem}_seed{self.seed}"

    def display_command(self) -> str:
        return shlex.join(["python", *self.command[1:]])


def cifar10_data_dir(preset: Preset) -> str | None:
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


def override_value(value: Any) -> str:
    """A config value as `--config.key=value` spells it."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def make_run(
    recipe: Recipe,
    preset: str,
    seed: int,
    workdir: pathlib.Path,
    *,
    overrides: dict[str, Any] | None = None,
    data_dir: str | None = None,
    name: str = "",
) -> Run:
    """One run of `recipe` under `preset`: its config and its `lmsgd.train` command line.

    `overrides` ({"global_batch_size": 5120, "optimizer.lr_per_256": 0.2}) are applied to the
    config here and passed as `--config.key=value` flags, so the command reproduces the config.
    """
    config = load_recipe(recipe_path(recipe), preset)
    config.seed = int(seed)
    command = [
        sys.executable, "-m", "lmsgd.train",
        f"--config={recipe_path(recipe).relative_to(REPO_ROOT)}:{preset}",  # cwd: repo
        f"--workdir={workdir}",
        f"--config.seed={int(seed)}",
    ]  # fmt: skip
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
        command.append(f"--config.{key}={override_value(value)}")
    if data_dir is not None:
        config.data.data_dir = data_dir
        command.append(f"--config.data.data_dir={data_dir}")
    return Run(recipe, int(seed), workdir, config, command, name=name)


def plan_runs(
    preset: str,
    results_dir: str | os.PathLike,
    recipes: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    data_dir: str | None = None,
) -> list[Run]:
    """Every (recipe, seed) of `preset`, recipe-major, workdirs under `<results_dir>/runs/`."""
    p = get_preset(preset)
    recipes = list(recipes or p.recipes)
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; allowed: {','.join(RECIPES)}")
    runs = []
    for key in recipes:
        recipe = RECIPES[key]
        for seed in seeds if seeds is not None else p.seeds:
            workdir = pathlib.Path(results_dir) / "runs" / f"{recipe_path(recipe).stem}_seed{seed}"
            runs.append(make_run(recipe, preset, int(seed), workdir, data_dir=data_dir))
    return runs


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
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
    for r in read_jsonl(workdir / "metrics.jsonl"):
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


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


_DIVERGED_AT = re.compile(r"non-finite loss[^\n]*? at step (\d+)")


def diverged_step(log_text: str) -> int | None:
    """The step the driver named in its non-finite-loss error (None if it did not diverge)."""
    found = _DIVERGED_AT.findall(log_text)
    return int(found[-1]) if found else None


def collect(run: Run, *, returncode: int | None, wall_time_s: float | None) -> dict[str, Any]:
    """The record of one run from its workdir (summary.json, metrics.jsonl, train.log)."""
    summary_path = run.workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    log_path = run.workdir / "train.log"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    diverged_at = None
    if summary is not None and returncode in (0, None):
        status = "ok"
    elif "non-finite loss" in log_text or "NonFiniteLossError" in log_text:
        status = "diverged"
        diverged_at = diverged_step(log_text)
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
        "diverged_step": diverged_at,
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
        "settings": settings(run.config),
        "config": config_dict(run.config),
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
        wanted = config_dict(run.config)
        if wanted.get("accumulation_steps") is None:  # derived by the driver: as it recorded
            wanted["accumulation_steps"] = (done.get("config") or {}).get("accumulation_steps")
        if done.get("config") != wanted:
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
    record["load_average_end"] = load_average()
    record_path.write_text(
        json.dumps({"wall_time_s": wall, "returncode": returncode,
                    "load_average_end": record["load_average_end"]})
    )  # fmt: skip
    expected_devices = run.config.num_cpu_devices or NUM_DEVICES
    if record["num_devices"] not in (None, expected_devices) and (
        record["bn_span_examples"] != record["settings"]["bn_examples"]
    ):
        echo(
            f"[{run.name}] WARNING: {record['num_devices']} devices, not {expected_devices}: "
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
