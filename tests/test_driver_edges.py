"""The driver past the happy path: divergence, refused reruns, locks, full disks, SIGTERM
without checkpoints, skipped corrupt images (issue 12, findings 1, 4, 5, 6, 8)."""

import fcntl
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from helpers import tiny_config, write_solid_folder

from lmsgd.checkpointing import load_state_arrays
from lmsgd.errors import IncompatibleCheckpointError, NonFiniteLossError, WorkdirError
from lmsgd.train import train_and_evaluate
from lmsgd.workdir import LOCK_FILE

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_diverging_run_names_a_committed_checkpoint_with_finite_leaves(tmp_path):
    # The reproduction: RMSprop at 10 and SGD at 1e4 per 256, a save every step,
    # asynchronous saves (the default). Loss stays finite for a while after the gradient
    # and the parameters have blown up.
    config = tiny_config(
        num_epochs=1.0,
        **{"checkpoint.every_steps": 1, "checkpoint.async_save": True,
           "logging.every_steps": 1, "optimizer.lr_per_256": 1e4,
           "optimizer.rmsprop_warmup.rmsprop_learning_rate": 10.0},
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"Last good checkpoint: \d+ in ") as err:
        train_and_evaluate(config, str(tmp_path))
    named = int(str(err.value).split("Last good checkpoint: ")[1].split(" ")[0])
    bad = int(str(err.value).split("at step ")[1].split(" ")[0])
    assert named < bad
    entries = os.listdir(tmp_path / "checkpoints")
    assert str(named) in entries  # committed: the final name, not a temporary directory
    assert not [e for e in entries if "tmp" in e]
    step, state = load_state_arrays(str(tmp_path), named)
    leaves = jax.tree.leaves(state)
    assert step == named and leaves
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    # Every saved checkpoint is finite and older than the bad step.
    assert all(int(e) < bad for e in entries if e.isdigit())


def test_refused_rerun_changes_nothing_in_the_workdir(tmp_path):
    train_and_evaluate(tiny_config(num_epochs=0.1), str(tmp_path))
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    with pytest.raises(IncompatibleCheckpointError, match=r"model\.name"):
        train_and_evaluate(tiny_config(num_epochs=0.1, **{"model.name": "cifar_resnet20"}),
                           str(tmp_path))  # fmt: skip
    # A finished run rerun with another image size: refused too, summary untouched.
    with pytest.raises(IncompatibleCheckpointError, match=r"data\.image_size"):
        train_and_evaluate(tiny_config(num_epochs=0.1, **{"data.image_size": 16}), str(tmp_path))
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    assert after == files


def test_second_run_on_a_locked_workdir_is_refused_and_stale_locks_are_reused(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"host testhost, pid 4242, since now")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(WorkdirError, match=r"in use by another run \(host testhost, pid 4242"):
            train_and_evaluate(tiny_config(num_epochs=0.1), str(tmp_path))
        assert not (tmp_path / "config.json").exists()
    finally:
        os.close(fd)
    # The holder died (lock released, its file left behind): the next run goes ahead.
    summary = train_and_evaluate(tiny_config(num_epochs=0.1), str(tmp_path))
    assert summary["step"] == 3
    assert str(os.getpid()) in lock.read_text()


def test_sigterm_without_checkpoints_says_nothing_was_saved(tmp_path, caplog):
    config = tiny_config(num_epochs=200.0, **{"checkpoint.enabled": False,
                                               "eval_every_epochs": 1000.0})  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"

    def kill_when_training():
        deadline = time.time() + 300
        while time.time() < deadline:
            if metrics.exists() and '"train"' in metrics.read_text():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=kill_when_training, daemon=True).start()
    with caplog.at_level("INFO", logger="lmsgd"):
        out = train_and_evaluate(config, str(tmp_path))
    assert out["preempted"] and out["saved"] is False
    assert "nothing saved" in caplog.text and "saved step" not in caplog.text
    assert not (tmp_path / "checkpoints").exists()


def test_corrupt_eval_images_skipped_are_in_the_summary(tmp_path):
    root = write_solid_folder(tmp_path / "data", {"train": [12, 12], "val": [3, 3]})
    (root / "val" / "class_0" / "img_001.jpg").write_bytes(b"not a jpeg")
    config = tiny_config(
        num_epochs=1.0,
        **{"data.name": "image_folder", "data.data_dir": str(root), "data.skip_corrupt": True,
           "global_batch_size": 8, "eval_batch_size": 8},
    )  # fmt: skip
    summary = train_and_evaluate(config, str(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["eval_skipped_corrupt_images"] == summary["eval_skipped_corrupt_images"] == 1
    assert saved["eval_examples"] == 5


def _cli(args, workdir, *, env=None, preexec_fn=None, timeout=300):
    cmd = [sys.executable, "-m", "lmsgd.train", f"--workdir={workdir}", *args]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "XLA_FLAGS": "", **(env or {})}, preexec_fn=preexec_fn,
    )  # fmt: skip


TINY = [
    "--config=configs/default.py", "--config.model.width_multiplier=0.25",
    "--config.data.image_size=8", "--config.global_batch_size=64",
    "--config.eval_batch_size=64", "--config.logging.tensorboard=False",
]  # fmt: skip


def test_full_disk_is_one_message_and_keeps_earlier_checkpoints(tmp_path):
    # Every file the run writes is limited to 100 KB: the tiny model's checkpoints fit, the
    # TensorBoard event file and metrics.jsonl (a record per step) outgrow it after a while.
    limit = 100_000
    env = {"JAX_COMPILATION_CACHE_DIR": ""}  # no cache files under the limit either
    args = [a for a in TINY if "tensorboard" not in a]
    out = _cli(
        [*args, "--config.num_epochs=40", "--config.logging.every_steps=1",
         "--config.checkpoint.every_steps=20"],
        tmp_path, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("lmsgd.train: error:")]
    assert len(errors) == 1 and "file too large" in errors[0] and str(tmp_path) in errors[0]
    step, state = load_state_arrays(str(tmp_path))
    assert step >= 20 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
