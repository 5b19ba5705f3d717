"""A run's measured step time, read back from its `metrics.jsonl`, to set beside the planner's
estimate (`python -m lmsgd.plan ... --workdir DIR`).

The driver logs, every `logging.every_steps`, the mean step time of the interval since the
last log (`step_time_s`, seconds per optimizer step, input waits included) and the seconds of
it spent compiling (`compile_s`). The measured figure is the median over the intervals that
compiled nothing (the first of each start compiles the train step).
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from etils import epath

from lmsgd.metric_logging import METRICS_FILE, read_metrics
from lmsgd.plan.targets import PlanError


def measured_step(workdir: str) -> dict[str, Any]:
    """The run in `workdir`: ``{workdir, step_s, intervals, images_per_s_per_device,
    data_wait_fraction, last_step, num_devices}`` (medians over the intervals without a
    compile; seconds per optimizer step; images/s per device). Raises `PlanError` in one
    line where the run has not logged enough to say."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        raise PlanError(
            f"--workdir {workdir}: no {METRICS_FILE} there; give the --workdir of a "
            "`python -m lmsgd.train` run (process 0 writes it)"
        )
    train = [r for r in read_metrics(workdir) if r.get("kind") == "train" and "step_time_s" in r]
    if train and not any("compile_s" in r for r in train):
        raise PlanError(
            f"--workdir {workdir}: its {METRICS_FILE} has no compile_s (written by an older "
            "lmsgd.train), so intervals that compiled cannot be told apart; train it further "
            "with this version"
        )
    steady = [r for r in train if r.get("compile_s") == 0]
    if not steady:
        raise PlanError(
            f"--workdir {workdir}: {METRICS_FILE} has no logged interval without a compile "
            "yet (the first of each start compiles the train step); train past the second log "
            "(logging.every_steps)"
        )
    layout = epath.Path(workdir) / "layout.json"
    devices = json.loads(layout.read_text())["num_devices"] if layout.exists() else None
    return {
        "workdir": workdir,
        "step_s": statistics.median(r["step_time_s"] for r in steady),
        "intervals": len(steady),
        "images_per_s_per_device": statistics.median(r["images_per_s_per_device"] for r in steady),
        "data_wait_fraction": statistics.median(r.get("data_wait_fraction", 0.0) for r in steady),
        "last_step": steady[-1]["step"],
        "num_devices": devices,
    }


def format_measured(measured: dict[str, Any], estimate_s: float, num_devices: int) -> list[str]:
    """The lines that set the run's measured step beside the estimate."""
    from lmsgd.plan.report import format_seconds

    m = measured
    lines = [
        f"measured in {m['workdir']} (median of {m['intervals']} logged intervals without a "
        f"compile, up to step {m['last_step']}): step {format_seconds(m['step_s'])}, "
        f"{m['images_per_s_per_device']:,.0f} images/s per device, "
        f"{100 * m['data_wait_fraction']:.0f}% waiting for input",
        f"  estimate {format_seconds(estimate_s)}: "
        f"measured / estimate = {m['step_s'] / estimate_s:.3g}",
    ]
    if m["num_devices"] is not None and m["num_devices"] != num_devices:
        lines.append(
            f"  note: the run used {m['num_devices']} devices, the target has {num_devices}: "
            "the figures are not for the same layout"
        )
    return lines
