"""`python -m lmsgd.bench device --quick`: every section runs on 8 simulated CPU devices and its
figures agree with what is known independently of the benchmark; also with TensorFlow, TFDS
and clu unimportable (as on a GPU box that has only jax, flax, optax, orbax); a failing or
over-budget section is recorded, not fatal; GPU names map to the planner's models."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest
from blocked_imports import BLOCKED, blocked_env

from lmsgd.bench import device

pytestmark = pytest.mark.slow  # an end-to-end run (training subprocesses included)

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = {"step", "memory", "allreduce", "train", "default_run"}
# --quick, as its help and docstring say: cifar_resnet8 at 16 px, 4 and 2 images per device,
# bfloat16 all-reduce, a 10-step synthetic run; the digits run is 1 epoch of 1,437 images at
# a global batch of 256 (configs/default.py): 5 steps.
QUICK_MODEL, QUICK_IMAGE, QUICK_BATCHES, QUICK_TRAIN_STEPS = "cifar_resnet8", 16, (4, 2), 10
DIGITS_STEPS = 1437 // 256
DEVICES = 8  # tests/conftest.py


def _env(tmp: pathlib.Path, variant: str) -> dict[str, str]:
    env = dict(os.environ)  # conftest: JAX_PLATFORMS=cpu, 8 devices, a shared compile cache
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return blocked_env(tmp / "blocker", env) if variant == "blocked" else env


def _ok(record: dict, name: str) -> dict:
    section = record["sections"][name]
    assert section["status"] == "ok", f"{name}: {section.get('reason')}"
    return section


def _num_params() -> int:
    import jax
    import jax.numpy as jnp

    from lmsgd.models import create_model

    model = create_model(QUICK_MODEL, num_classes=10)
    x = jnp.zeros((1, QUICK_IMAGE, QUICK_IMAGE, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return sum(math.prod(p.shape) for p in jax.tree.leaves(shapes["params"]))


def _check_record_and_table(proc: subprocess.CompletedProcess, record: dict) -> None:
    assert record["suite"] == "device" and set(record["sections"]) == SECTIONS
    assert record["hardware"]["device_count"] == DEVICES
    assert record["hardware"]["platform"] == "cpu"
    assert record["config"]["quick"] is True and record["wall_s"] > 0
    # the table: a header line, then one row (or more) per section, FAILED/SKIPPED named
    assert "bench device: 8 x " in proc.stdout
    for name in ("step 4/dev", "step 2/dev", "memory", "allreduce", "train", "default_run"):
        assert re.search(rf"^{name}\b", proc.stdout, re.M), name
    for section in record["sections"].values():
        assert section["status"] in ("ok", "failed", "skipped") and section["wall_s"] >= 0
        if section["status"] != "ok":
            assert section["reason"] and "\n" not in section["reason"]
            assert section["status"].upper() in proc.stdout


def _check_step_section(proc: subprocess.CompletedProcess, record: dict) -> None:
    step = _ok(record, "step")
    assert [int(b) for b in step["per_device_batch"]] == list(QUICK_BATCHES)
    for b, sizes in step["per_device_batch"].items():
        assert sizes["status"] == "ok", sizes.get("reason")
        assert sizes["global_batch"] == int(b) * DEVICES
        for v in ("ours", "baseline"):
            r = sizes[v]
            assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
            # images/s is images per step over the median step time
            assert r["images_per_s"] == pytest.approx(sizes["global_batch"] / r["step_s_median"])
            assert 0 < r["mfu"] <= 1, (v, r["mfu"])
            assert r["memory_bytes_per_device"] > 0 and math.isfinite(r["final_loss"])
    assert step["peak"]["dtype"] == "bfloat16" and step["peak"]["peak_flops_per_s_total"] > 0


def _check_allreduce_section(proc: subprocess.CompletedProcess, record: dict) -> None:
    ar = _ok(record, "allreduce")
    assert ar["asked_dtype"] == record["config"]["allreduce_dtype"] == "bfloat16"
    # The step asks for bf16 (lowered); XLA:CPU has no bf16 reduction and compiles f32.
    assert "all-reduce/bf16" in ar["lowered"]
    assert ar["compiled_dtype"] == "f32" and ar["matches"] is False
    assert "XLA:CPU" in ar["note"]
    # The gradients are the parameters' size: 4 bytes each in f32 (the loss and metrics add
    # a few more); one device's all-reduces are the whole buffer.
    params = _num_params()
    assert 4 * params <= ar["compiled_bytes_by_dtype"]["f32"] <= 4 * params + 16384
    assert ar["overlap"]["count"] >= 1 and ar["overlap"]["bytes"] >= 4 * params
    assert 0 <= ar["overlap"]["issued_before_compute_end"] <= 1


def _check_memory_section(proc: subprocess.CompletedProcess, record: dict) -> None:
    mem = _ok(record, "memory")
    step_ours = record["sections"]["step"]["per_device_batch"][str(QUICK_BATCHES[0])]["ours"]
    assert mem["compiled_bytes"] == step_ours["memory_bytes_per_device"] > 0
    # No GPU here: the planner compiles the same step for the same 8 CPU devices.
    assert mem["planner_target"] == "cpu:8" and mem["planner_compiled_for"] == "cpu"
    assert mem["planner_bytes"] > 0 and 0.5 < mem["compiled_over_planner"] < 2
    assert "no GPU" in mem["note"]


def _check_training_sections(proc: subprocess.CompletedProcess, record: dict) -> None:
    train = _ok(record, "train")
    assert train["steps"] == QUICK_TRAIN_STEPS
    assert train["global_batch"] == QUICK_BATCHES[0] * DEVICES
    assert train["images_per_s"] > 0 and train["images_per_s_last_window"] > 0
    assert "synthetic_resnet50" in train["command"]
    digits = _ok(record, "default_run")
    assert digits["steps"] == DIGITS_STEPS and digits["images_per_s"] > 0
    assert 0 <= digits["eval_top1"] <= 1


def test_over_budget_sections_are_skipped(tmp_path, capsys, monkeypatch):
    """With no budget left every section is skipped with a one-line reason; the JSON and
    the table are still written."""
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from lmsgd.bench.__main__ import main

    out = tmp_path / "d.json"
    record = main(["device", "--quick", "--budget_s", "0", "--json", str(out)])
    sections = json.loads(out.read_text())["sections"]
    assert sections == record["sections"] and set(sections) == SECTIONS
    for section in sections.values():
        assert section["status"] == "skipped" and section["reason"].startswith("budget: 0 s")
    assert capsys.readouterr().out.count("SKIPPED") == len(SECTIONS)


def test_a_failing_section_is_one_line():
    def broken():
        raise ValueError("no such thing\nsecond line")

    budget = device._Budget(60)
    assert device._section("x", 0, budget, broken)["reason"] == "ValueError: no such thing"
    assert device._section("x", 0, budget, lambda: {"a": 1})["status"] == "ok"
    assert device._section("x", 61, budget, lambda: {"a": 1})["status"] == "skipped"


@pytest.mark.parametrize(
    ("kind", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("Tesla V100-SXM2-32GB", "v100"),
        ("Tesla P100-PCIE-16GB", "p100-pcie"),
        ("Tesla P100-SXM2-16GB", "p100"),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_planner_gpu_model(kind, model):
    from lmsgd.plan import gpu
    from lmsgd.plan.hardware import HARDWARE

    assert device.planner_gpu_model(kind) == model
    if model is not None:  # a model the planner can compile for
        assert HARDWARE[model].kind == "gpu" and model in gpu.SPECS


def test_blocker_blocks_only_its_packages(tmp_path):
    """Blocked packages look uninstalled (find_spec None, ModuleNotFoundError); others import."""
    names = [*BLOCKED, "clu.metric_writers"]
    code = (
        "import importlib, importlib.util, jax, numpy, optax\n"
        f"for name in {names!r}:\n"
        "    if '.' not in name:\n"
        "        assert importlib.util.find_spec(name) is None, name\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as e:\n"
        "        assert 'No module named' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit(name + ' imported')\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env=blocked_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def _allreduce_state(devices: int, compiled) -> dict:
    import argparse

    return {
        "compiled": compiled,
        "step_args": argparse.Namespace(allreduce_dtype="bfloat16"),
        "record": {
            "hardware": {"platform": "cpu"},
            "config": {"devices": devices, "per_device_batch": 4},
            "results": {"ours": {"collectives_lowered": {}}},
        },
    }


def test_allreduce_on_one_device_is_a_note_not_a_failure():
    import jax
    import jax.numpy as jnp

    compiled = jax.jit(lambda x: x * 2).lower(jnp.ones(4)).compile()  # no collective
    out = device._run_allreduce(_allreduce_state(1, compiled))
    assert out["compiled_dtype"] is None and "one device" in out["note"]
    assert device._rows("allreduce", {"status": "ok", **out})[0][2] == "none"
    with pytest.raises(RuntimeError, match="no all-reduce"):
        device._run_allreduce(_allreduce_state(2, compiled))


def test_allreduce_dtype_is_the_one_carrying_most_bytes():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.asarray(jax.devices()[:2]), ("d",))
    f = jax.shard_map(
        lambda big, small: (jax.lax.psum(big, "d"), jax.lax.psum(small, "d")),
        mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()),
    )  # fmt: skip
    args = (jnp.ones(1000, jnp.int32), jnp.ones(10, jnp.float32))
    out = device._run_allreduce(_allreduce_state(2, jax.jit(f).lower(*args).compile()))
    assert out["compiled_dtype"] == "s32" and out["matches"] is False
    assert out["compiled_bytes_by_dtype"]["s32"] == 4000


def test_quick_run_without_tensorflow_or_clu(tmp_path):
    """One `--quick` run (each one trains twice and compiles four steps: one run per test
    session) where TensorFlow, TFDS and clu are unimportable, as on a GPU box; every section
    checked against what is known independently of the benchmark."""
    out = tmp_path / "out" / "device.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lmsgd.bench", "device", "--quick", "--json", str(out),
         "--budget_s", "3000"],  # a loaded test machine must not skip sections
        capture_output=True, text=True, timeout=3600, env=_env(tmp_path, "blocked"),
        cwd=tmp_path,  # the shipped configs are found from any directory
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    _check_record_and_table(proc, record)
    _check_step_section(proc, record)
    _check_allreduce_section(proc, record)
    _check_memory_section(proc, record)
    _check_training_sections(proc, record)
