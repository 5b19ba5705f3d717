"""The console: one line per interval and per evaluation, a summary, the bar on a terminal;
and a command-line run that prints those lines and nothing from TF, absl, libtpu or CUDA."""

import io
import logging
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from lmsgd import console

TRAIN = {
    "epoch": 2.0,
    "loss": 0.123456,
    "accuracy": 0.90625,
    "learning_rate": 0.05,
    "alpha_sgd": 0.0462753,
    "images_per_s": 2424.6,
    "images_per_s_per_device": 2424.6 / 8,
    "grad_norm": 0.6,  # in metrics.jsonl / TensorBoard, not on the console
}


def test_train_line_has_what_a_person_scans():
    line = console.train_line(10, 200, TRAIN, eta_s=125.0)
    assert line == (
        "step  10/200  epoch   2.0  loss 0.1235  top-1 90.6%  lr 0.05  alpha_sgd 0.046  "
        "2,425 img/s (303/device)  ETA 2m05s"
    )  # 2,424.6 / 8 devices = 303 per device
    # A baseline optimizer has no alpha_sgd; the first line has no ETA yet.
    momentum = {k: v for k, v in TRAIN.items() if k != "alpha_sgd"}
    assert "alpha_sgd" not in console.train_line(5, 200, momentum, None)
    assert "ETA" not in console.train_line(5, 200, momentum, None)


def test_eval_and_summary_lines():
    values = {"top1": 0.941667, "top5": 1.0, "loss": 0.155873, "num_examples": 360}
    assert console.eval_line(25, values, 5.0) == (
        "eval  step 25  epoch   5.0  top-1 94.17%  top-5 100.00%  loss 0.1559  (360 examples)"
    )
    summary = {
        "step": 200, "epochs": 40.0, "resumed_from_step": 0, "train_wall_time_s": 3725.2,
        "images_per_s": 1799.9, "eval_top1": 0.98055, "eval_top5": 1.0, "eval_examples": 360,
    }  # fmt: skip
    assert console.summary_line(summary, "/tmp/w") == (
        "done: 200 steps (40 epochs); trained 200 in 1h02m05s at 1,800 img/s; eval top-1 98.06% "
        "top-5 100.00% on 360 examples; /tmp/w/summary.json"
    )


def test_writer_prints_train_and_eval_scalars_only_with_eta_from_the_pace(monkeypatch, caplog):
    clock = iter([100.0, 110.0])  # the first interval at t=100 s, the second 10 s later
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    writer = console.ConsoleWriter(100, 5, stream=io.StringIO(), tty=False)
    with caplog.at_level(logging.INFO, logger="lmsgd"):
        writer.write_scalars(5, {f"train/{k}": v for k, v in TRAIN.items()})
        writer.write_scalars(5, {"steps_per_sec": 9.9, "uptime": 3.0})  # clu's: files only
        writer.write_scalars(10, {f"train/{k}": v for k, v in TRAIN.items()})
        writer.write_scalars(10, {"eval/top1": 0.5, "eval/num_examples": 10})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("step   5/100") and "ETA" not in lines[0]
    # 10 s for 5 steps = 2 s/step; 90 steps left = 180 s.
    assert lines[1].startswith("step  10/100") and lines[1].endswith("ETA 3m00s")
    assert lines[2] == "eval  step 10  epoch   2.0  top-1 50.00%  (10 examples)"


def test_terminal_draws_a_bar_in_place_and_keeps_it_at_an_evaluation(caplog):
    stream = io.StringIO()
    writer = console.ConsoleWriter(20, 5, stream=stream, tty=True)
    with caplog.at_level(logging.INFO, logger="lmsgd"):
        writer.write_scalars(5, {"train/loss": 1.0})
        writer.write_scalars(10, {"train/loss": 0.5})
        writer.write_scalars(10, {"eval/top1": 0.5})
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 2
    assert "[#####...............] step  5/20" in text  # 5 of 20 steps: a quarter of 20 cells
    assert "[##########..........] step 10/20" in text
    assert text.endswith("\n")  # ended before the evaluation's line
    assert [r.getMessage() for r in caplog.records] == ["eval  step 10  epoch   2.0  top-1 50.00%"]
    writer.close()
    assert stream.getvalue() == text  # nothing left to end


# Start-up lines of TensorFlow, absl, libtpu and the CUDA plugin, and clu's periodic ones.
NOISE = re.compile(
    r"oneDNN|absl::InitializeLog|InitGoogle|TPU|host bounds|cudart|CUDA|E0000|W0000|I0000"
    r"|Setting work unit notes|steps_per_sec|uptime|Traceback"
)


def _quiet_env():
    """The test session's environment without the defaults lmsgd must set for itself."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
@pytest.mark.skipif(
    any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/accel0", "/dev/kfd")),
    reason="a machine with an accelerator is expected to use it",
)
def test_a_cpu_run_prints_its_lines_and_no_start_up_noise(tmp_path):
    env, workdir = _quiet_env(), tmp_path / "run"
    # 8 steps: intervals at 2, 4, 6, 8; evaluations at 4 and 8. From outside the checkout,
    # the config by its shipped name.
    args = ["--config", "default", f"--workdir={workdir}", "--config.num_epochs=1.6",
            "--config.eval_every_epochs=0.8", "--config.logging.every_steps=2",
            "--config.checkpoint.every_steps=4"]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = run.stderr.splitlines() + run.stdout.splitlines()  # the result comes last
    assert run.returncode == 0, "\n".join(lines[-30:])
    assert not [line for line in lines if NOISE.search(line)], "\n".join(lines)
    kinds = [line.split(" ")[1] for line in lines[:-1]]  # after the time stamp
    assert kinds == [
        "cifar_resnet8:",
        "step",
        "step",
        "eval",
        "step",
        "step",
        "eval",
        "done:",
        "time:",
    ], "\n".join(lines)
    assert lines[-1].startswith('{"step": 8,')  # the result, one line of JSON for scripts

    # A script importing lmsgd, and a refused resume, stay as quiet.
    script = "from lmsgd.checkpointing import load_state_arrays\n"
    script += f"print(load_state_arrays({str(workdir)!r})[0])\n"
    loaded = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "8" and not loaded.stderr, (
        loaded.stderr
    )
    refused = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", *args, "--config.global_batch_size=128"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode != 0 and refused.stdout == ""
    err = refused.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("lmsgd.train: error:"), refused.stderr
