"""`python -m lmsgd.plan --workdir`: a run's measured step read back from metrics.jsonl, against
a hand computation over hand-written records."""

import json

import pytest

from lmsgd.plan.run_metrics import format_measured, measured_step
from lmsgd.plan.targets import PlanError


def _write(workdir, records, devices=8):
    workdir.mkdir(exist_ok=True)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "layout.json").write_text(json.dumps({"num_devices": devices, "num_processes": 1}))


def _train(step, step_time_s, compile_s, wait=0.0):
    return {"step": step, "kind": "train", "step_time_s": step_time_s, "compile_s": compile_s,
            "images_per_s_per_device": 32 / step_time_s, "data_wait_fraction": wait}  # fmt: skip


def test_median_of_the_intervals_without_a_compile(tmp_path):
    records = [
        {"step": 20, "kind": "progress", "steps_per_sec": 1.0, "uptime": 30.0},
        _train(20, 9.0, 150.0),  # the first interval: compiled
        _train(40, 0.10, 0.0, 0.02), _train(60, 0.30, 0.0, 0.04), _train(80, 0.12, 0.0, 0.06),
        {"step": 80, "kind": "eval", "top1": 0.1},
        _train(100, 5.0, 40.0),  # a resumed start compiles again
        _train(120, 0.11, 0.0, 0.08),
    ]  # fmt: skip
    _write(tmp_path, records)
    m = measured_step(str(tmp_path))
    # Steady: 0.10, 0.30, 0.12, 0.11 -> median (0.11 + 0.12) / 2.
    assert m["step_s"] == pytest.approx(0.115)
    assert m["intervals"] == 4 and m["last_step"] == 120 and m["num_devices"] == 8
    assert m["images_per_s_per_device"] == pytest.approx((32 / 0.11 + 32 / 0.12) / 2)
    assert m["data_wait_fraction"] == pytest.approx(0.05)
    lines = format_measured(m, 0.1, 8)
    assert "median of 4 logged intervals without a compile, up to step 120" in lines[0]
    assert "step 115 ms" in lines[0] and "5% waiting for input" in lines[0]
    assert lines[1] == "  estimate 100 ms: measured / estimate = 1.15"
    assert len(lines) == 2
    assert "the run used 8 devices, the target has 16" in format_measured(m, 0.1, 16)[2]


def test_a_workdir_without_a_steady_interval_is_refused_in_one_line(tmp_path):
    with pytest.raises(PlanError, match="no metrics.jsonl there"):
        measured_step(str(tmp_path / "none"))
    _write(tmp_path, [_train(20, 9.0, 150.0)])
    with pytest.raises(PlanError, match="no logged interval without a compile"):
        measured_step(str(tmp_path))
    old = {k: v for k, v in _train(40, 0.1, 0.0).items() if k != "compile_s"}
    _write(tmp_path, [old])
    with pytest.raises(PlanError, match="has no compile_s"):
        measured_step(str(tmp_path))
