"""The training driver end to end on tiny settings: resume, preemption, failures, configs."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import tiny_config

from lmsgd.checkpointing import load_state_arrays
from lmsgd.config import load_config_file, validate_config
from lmsgd.errors import IncompatibleCheckpointError, NonFiniteLossError, WorkdirError
from lmsgd.train import train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS_TRAIN = 1437  # 80% of scikit-learn's 1,797 digits
STEPS_PER_EPOCH = DIGITS_TRAIN // 64


def final_params(workdir):
    return load_state_arrays(str(workdir))


def test_end_to_end(tmp_path):
    summary = train_and_evaluate(tiny_config(), str(tmp_path))
    assert summary["step"] == 11
    # Every one of the 360 validation images is evaluated once (batch 64 does not divide it).
    assert summary["eval_examples"] == 360
    assert 0 <= summary["eval_top1"] <= summary["eval_top5"] <= 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 11]
    for key in ("loss", "accuracy", "learning_rate", "alpha_sgd", "grad_norm", "images_per_s",
                "images_per_s_per_device", "step_time_s", "data_wait_fraction"):  # fmt: skip
        assert np.isfinite(train[-1][key]), key
    # Throughput is consistent with the batch (64 images) and the 8 devices.
    for r in train:
        assert r["images_per_s"] * r["step_time_s"] == pytest.approx(64, rel=1e-6)
        assert r["images_per_s_per_device"] * 8 == pytest.approx(r["images_per_s"], rel=1e-9)
        assert 0 <= r["data_wait_fraction"] <= 1
    # The first interval's steps needed the train step compiled; later, only the hand-over to
    # SGD compiles (the program without the second buffer), once.
    compiled = [r["step"] for r in train if r["compile_s"] > 0]
    assert compiled[0] == 2 and len(compiled) <= 2, [r["compile_s"] for r in train]
    assert [r["epoch"] for r in train] == pytest.approx(
        [r["step"] / STEPS_PER_EPOCH for r in train]
    )
    # alpha_sgd follows docs/recipe.md's formula at the logged step (schedule read before update).
    e = 1 / STEPS_PER_EPOCH  # step 2's update used step 1 -> epoch 1/22
    assert train[0]["alpha_sgd"] == pytest.approx(0.5 * np.exp(2 * (e - 0.2) / 0.2), rel=1e-5)
    assert any(r["kind"] == "eval" for r in records)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["config"]["model"]["name"] == "cifar_resnet8"
    assert any((tmp_path / "tensorboard").iterdir())
    assert json.loads((tmp_path / "config.json").read_text())["global_batch_size"] == 64


def test_kill_and_resume_equals_uninterrupted_run_bitwise(tmp_path):
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    train_and_evaluate(tiny_config(), str(straight))
    # "Crash" after step 6: the last checkpoint is step 4, steps 5 and 6 are lost.
    out = train_and_evaluate(tiny_config(stop_after_steps=6), str(resumed))
    assert out == {"stopped": True, "step": 6}
    assert final_params(resumed)[0] == 4
    summary = train_and_evaluate(tiny_config(), str(resumed))
    assert summary["resumed_from_step"] == 4
    s1, a = final_params(straight)
    s2, b = final_params(resumed)
    assert s1 == s2 == 11
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    # metrics.jsonl holds each step once: the resume dropped steps 5-6 of the crashed run.
    records = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [2, 4, 6, 8, 10, 11]
    # Rerunning a finished run trains nothing and evaluates the same final state again.
    again = train_and_evaluate(tiny_config(), str(resumed))
    assert again["resumed_from_step"] == again["step"] == 11
    assert again["eval_top1"] == summary["eval_top1"]


def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
    workdir = tmp_path / "run"
    args = [
        sys.executable, "-m", "lmsgd.train", "--config", str(REPO / "configs/default.py"),
        f"--workdir={workdir}", "--config.num_epochs=1000", "--config.model.name=cifar_resnet8",
        "--config.model.width_multiplier=0.25", "--config.data.image_size=8",
        "--config.global_batch_size=64", "--config.eval_batch_size=64",
        "--config.logging.every_steps=1", "--config.logging.tensorboard=False",
        "--config.checkpoint.every_steps=100000", "--config.eval_every_epochs=1000",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": ""}  # the config's num_cpu_devices=8 applies
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"train"') >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "preempted at step" in output and "saved step" in output
    step, _ = final_params(workdir)
    assert step >= 2
    # The rerun resumes from that checkpoint.
    config = load_config_file(str(REPO / "configs/default.py"))
    config.update_from_flattened_dict(
        {"num_epochs": 1000.0, "model.name": "cifar_resnet8", "model.width_multiplier": 0.25,
         "data.image_size": 8, "global_batch_size": 64, "eval_batch_size": 64,
         "logging.tensorboard": False, "stop_after_steps": step + 1,
         "checkpoint.every_steps": 100000, "eval_every_epochs": 1000.0}
    )  # fmt: skip
    out = train_and_evaluate(config, str(workdir))
    assert out == {"stopped": True, "step": step + 1}


def test_incompatible_checkpoint_is_refused(tmp_path):
    train_and_evaluate(tiny_config(num_epochs=0.1), str(tmp_path))
    with pytest.raises(IncompatibleCheckpointError, match="model.width_multiplier"):
        train_and_evaluate(tiny_config(**{"model.width_multiplier": 0.5}), str(tmp_path))
    with pytest.raises(IncompatibleCheckpointError, match="model.name"):
        train_and_evaluate(tiny_config(**{"model.name": "cifar_resnet20"}), str(tmp_path))


def test_nan_loss_stops_without_saving_the_bad_state(tmp_path):
    config = tiny_config(**{"optimizer.name": "momentum", "optimizer.schedule": "constant",
                            "optimizer.base_learning_rate": 1e30})  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"at step \d+.*Last good checkpoint") as err:
        train_and_evaluate(config, str(tmp_path))
    bad_step = int(re.search(r"at step (\d+)", str(err.value))[1])
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert all(s < bad_step for s in saved)


def test_run_killed_mid_save_leaves_previous_checkpoint(tmp_path):
    train_and_evaluate(tiny_config(stop_after_steps=5), str(tmp_path))
    # What a kill during orbax's write leaves behind: an unfinished temporary directory.
    partial = tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\0" * 100)
    summary = train_and_evaluate(tiny_config(), str(tmp_path))
    assert summary["resumed_from_step"] == 4 and summary["step"] == 11


def test_unwritable_workdir_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(WorkdirError, match="not writable"):
        train_and_evaluate(tiny_config(), str(blocker / "sub"))


def test_bad_config_keys_and_values_are_named():
    config = tiny_config()
    with config.unlocked():
        config.model.nme = "x"
    with pytest.raises(ValueError, match=r"model\.nme"):
        validate_config(config)
    with pytest.raises(ValueError, match=r"config.global_batch_size=-64 is invalid"):
        validate_config(tiny_config(global_batch_size=-64))
    with pytest.raises(ValueError, match=r"config.model.name='resnet51' is invalid.*resnet50"):
        validate_config(tiny_config(**{"model.name": "resnet51"}))
    with pytest.raises(ValueError, match=r"config.allreduce.dtype='int8'"):
        validate_config(tiny_config(**{"allreduce.dtype": "int8"}))
    with pytest.raises(ValueError, match=r"optimizer.name='adam'"):
        validate_config(tiny_config(**{"optimizer.name": "adam"}))


def test_batch_that_does_not_divide_fails_before_compiling(tmp_path):
    with pytest.raises(ValueError, match="global_batch_size=60 is not divisible by the 8 dev"):
        train_and_evaluate(tiny_config(global_batch_size=60), str(tmp_path))


def test_cli_rejects_unknown_override():
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", "--config", "configs/default.py",
         "--workdir", "/tmp/unused", "--config.optimizer.lerning_rate=1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "lerning_rate" in out.stderr


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
)
def test_every_config_file_validates(name):
    config = load_config_file(str(REPO / "configs" / name))
    validate_config(config)
    # Each documents its command line, hardware and expected outcome.
    doc = (REPO / "configs" / name).read_text().split('"""')[1]
    assert "python -m lmsgd.train" in doc and "Hardware" in doc and "Expected" in doc


@pytest.mark.parametrize(
    "overrides",
    [
        # precise BN over 2 fresh batches, and a profile of steps 1-3
        {"model.eval_stats_batches": 2, "logging.profile_steps": (1, 3)},
        {"model.norm_mode": "moving_average"},  # the ablation
        {"model.bn_virtual_batch_size": 4},  # ghost BN: 2 chunks of the 8 images per device
        {
            "model.bn_group_size": 2,
            "allreduce.algorithm": "two_dimensional",
            "allreduce.mesh_shape": (2, 4),
            "allreduce.dtype": "bfloat16",
        },  # fmt: skip
    ],
)
def test_variants_train_and_evaluate(tmp_path, overrides):
    summary = train_and_evaluate(tiny_config(num_epochs=0.2, **overrides), str(tmp_path))
    assert summary["eval_examples"] == 360
    assert np.isfinite(summary["eval_loss"])
    if "logging.profile_steps" in overrides:
        assert list(tmp_path.rglob("*.xplane.pb"))


def test_resume_after_the_hand_over_equals_a_run_that_keeps_the_second_buffer(
    tmp_path, monkeypatch
):
    """From the step where alpha_sgd stays 1 (step 8 here) the driver drops rmsprop_warmup's
    second buffer m, and checkpoints hold zeros in its place (one layout). A run resumed from
    a checkpoint after that step (9) ends, bit for bit, where an uninterrupted run that kept
    and updated m all along ends: parameters, velocity, statistics."""
    from lmsgd.run import Run, build

    # Every step logs: one program before the hand-over and one after (fewer compiles).
    config = lambda **kw: tiny_config(
        **{"checkpoint.every_steps": 3, "logging.every_steps": 1}, **kw
    )
    assert build(config()).rms_buffer_free_from == 8
    kept = tmp_path / "kept"
    with monkeypatch.context() as patch:
        patch.setattr(Run, "rms_buffer_free_from", property(lambda self: None))
        train_and_evaluate(config(), str(kept))
    resumed = tmp_path / "resumed"
    assert train_and_evaluate(config(stop_after_steps=10), str(resumed))["step"] == 10
    summary = train_and_evaluate(config(), str(resumed))
    assert summary["resumed_from_step"] == 9

    def by_path(tree):
        return {jax.tree_util.keystr(p): np.asarray(x)
                for p, x in jax.tree_util.tree_leaves_with_path(tree)}  # fmt: skip

    is_m = lambda path: re.search(r"\['m'\]|\.m\b|\[2\]\['m'\]", path) is not None
    a, b = by_path(final_params(kept)[1]), by_path(final_params(resumed)[1])
    assert a.keys() == b.keys() and any(map(is_m, a))
    for path in a:
        if is_m(path):  # kept: still updated; dropped: saved as zeros
            assert np.any(a[path]) and not np.any(b[path]), path
        else:
            np.testing.assert_array_equal(a[path], b[path], err_msg=path)
    # Before the hand-over the checkpoint holds the real m.
    six = by_path(load_state_arrays(str(resumed), 6)[1])
    assert all(np.any(x) for p, x in six.items() if is_m(p))
