"""Resuming on another layout (issue 23): the training's effects decide, not the layout keys.

Fast tests check the arithmetic of BN groups against where JAX's own sharding puts each row,
and the refusals' wording. The slow ones stop a run on 8 devices and resume it on 4 devices
x 2 micro-batches and on 2 processes x 2 devices x 2 micro-batches, against the uninterrupted
run; and refuse a resume that would change the BN span without changing a file.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_multiprocess import env_for

from lmsgd import cli, resume
from lmsgd.checkpointing import load_state_arrays
from lmsgd.config import base_config
from lmsgd.errors import IncompatibleCheckpointError
from lmsgd.parallel import batch_sharding, create_mesh
from lmsgd.train import train_and_evaluate
from lmsgd.workdir import check_compatible, config_as_json, write_json, write_layout

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(g=256, k=None, group=1, virtual=0, data="digits"):
    c = config_as_json(base_config())
    c["global_batch_size"], c["accumulation_steps"] = g, k
    c["model"]["bn_group_size"], c["model"]["bn_virtual_batch_size"] = group, virtual
    c["data"]["name"] = data
    return c


def _groups_from_sharding(config, mesh):
    """Independent reference: the rows JAX's batch sharding gives each device (its shard
    indices), split as the step splits them (K micro-batches, ghost batches, device groups)."""
    g = config["global_batch_size"]
    k = config["accumulation_steps"] or 1
    virtual, group = config["model"]["bn_virtual_batch_size"], config["model"]["bn_group_size"]
    rows = np.arange(g)
    arr = jax.device_put(rows, batch_sharding(mesh))
    by_device = {s.device: np.asarray(s.data) for s in arr.addressable_shards}
    ordered = [by_device[d] for d in mesh.devices.flat]  # the step's (row-major) device order
    group = group or len(ordered)
    out = []
    for first in range(0, len(ordered), group):
        micro = [np.split(ordered[r], k) for r in range(first, first + group)]
        for m in range(k):
            members = np.concatenate([micro[i][m] for i in range(group)])
            if virtual:
                out += [set(c.tolist()) for c in np.split(members, len(members) // virtual)]
            else:
                out.append(set(members.tolist()))
    return out


def _as_sets(groups):
    return [set(x for a, b in zip(gr[::2], gr[1::2]) for x in range(a, b)) for gr in groups]


@pytest.mark.parametrize(
    ("devices", "mesh_shape", "k", "group", "virtual"),
    [(8, None, 1, 1, 0), (4, None, 2, 1, 0), (4, (2, 2), 2, 1, 0), (8, (2, 4), 1, 2, 0),
     (2, None, 1, 1, 32), (8, None, 1, 0, 0), (4, None, 4, 1, 0)],
)  # fmt: skip
def test_bn_groups_are_the_rows_jax_puts_on_each_device(devices, mesh_shape, k, group, virtual):
    config = _config(g=256, k=k, group=group, virtual=virtual)
    mesh = create_mesh(mesh_shape or (devices,), devices=jax.devices()[:devices])
    assert _as_sets(resume.bn_groups(config, devices)) == _groups_from_sharding(config, mesh)


def test_same_span_and_membership_on_8x1_4x2_2x4_and_16_devices_in_pairs():
    base = resume.effects(_config(k=1), resume.Layout(8, 1))
    assert base["BN span"] == 32
    assert base["BN membership"] == "consecutive blocks of 32 examples"
    for layout, k, group, virtual in [((4, 1), 2, 1, 0), ((2, 1), 4, 1, 0), ((4, 2), 2, 1, 0),
                                      ((16, 2), 1, 2, 0), ((4, 1), 1, 1, 32)]:  # fmt: skip
        other = resume.effects(_config(k=k, group=group, virtual=virtual), resume.Layout(*layout))
        assert resume.differences(base, other) == [], (layout, k, group, virtual)
    # 4 devices without accumulation: the span doubles (the silent change).
    four = resume.effects(_config(k=1), resume.Layout(4, 1))
    assert resume.differences(base, four)[0][:3] == ("BN span", 32, 64)


def test_membership_differs_where_groups_pool_other_rows():
    # Same span (64), other examples: 8 devices in pairs pool rows [0, 64); 4 devices x 2
    # micro-batches in pairs would pool rows [0, 32) + [64, 96). (lmsgd refuses that layout
    # in plan_run; the effect check must see it too.)
    pairs = resume.effects(_config(k=1, group=2), resume.Layout(8, 1))
    mixed = resume.effects(_config(k=2, group=2), resume.Layout(4, 1))
    assert pairs["BN span"] == mixed["BN span"] == 64
    assert [d[0] for d in resume.differences(pairs, mixed)] == ["BN membership"]


def test_only_imagenet_tfrecords_make_the_examples_depend_on_the_process_count():
    def imagenet(file_format, k=None):
        c = _config(data="imagenet2012", k=k)
        c["data"]["file_format"] = file_format
        return c

    two = resume.effects(imagenet("tfrecord"), resume.Layout(8, 2))
    four = resume.effects(imagenet("tfrecord"), resume.Layout(8, 4))
    assert [d[0] for d in resume.differences(two, four)] == ["examples in each step"]
    # Random-access sources read one global permutation: any process count. ImageNet's
    # ArrayRecords (the default) as image folders and digits.
    for config in (imagenet("array_record"), _config(data="image_folder"), _config()):
        assert not resume.differences(
            resume.effects(config, resume.Layout(8, 2)),
            resume.effects(config, resume.Layout(8, 4)),
        )


def test_derived_and_suggested_settings():
    saved = resume.effects(_config(k=1), resume.Layout(8, 1))
    assert resume.derive_accumulation_steps(saved, _config(), resume.Layout(4, 1)) == 2
    assert resume.derive_accumulation_steps(saved, _config(), resume.Layout(1, 1)) == 8
    assert resume.derive_accumulation_steps(saved, _config(), resume.Layout(16, 1)) is None
    assert resume.suggest_settings(saved, _config(k=1), resume.Layout(4, 1)) == (
        "--config.accumulation_steps=2"
    )
    assert resume.suggest_settings(saved, _config(k=1), resume.Layout(16, 1)) == (
        "--config.accumulation_steps=1 --config.model.bn_group_size=2"
    )


def _workdir_of(tmp_path, devices):
    config = base_config()
    config.global_batch_size, config.accumulation_steps = 256, 1
    config.data.name = "digits"
    write_json(str(tmp_path), "config.json", config_as_json(config))
    write_layout(str(tmp_path), resume.Layout(devices, 1))
    return config


def test_check_names_the_effect_and_the_setting_in_one_line(tmp_path):
    config = _workdir_of(tmp_path, 8)
    check_compatible(str(tmp_path), config, resume.Layout(8, 1))
    with pytest.raises(IncompatibleCheckpointError) as err:
        check_compatible(str(tmp_path), config, resume.Layout(4, 1))
    text = str(err.value)
    assert "\n" not in text
    assert "BN span is 32" in text and "make it 64" in text
    assert "--config.accumulation_steps=2" in text
    config.accumulation_steps = 2  # the named setting is accepted
    check_compatible(str(tmp_path), config, resume.Layout(4, 1))
    # A changed wire precision is a training key, not layout.
    config.allreduce.dtype = "bfloat16"
    with pytest.raises(IncompatibleCheckpointError, match="allreduce.dtype"):
        check_compatible(str(tmp_path), config, resume.Layout(4, 1))


# ---- end to end: stop on 8 devices, resume elsewhere ------------------------------------

TINY = [
    "--config=configs/default.py", "--config.allreduce.dtype=float32",
    "--config.optimizer.name=momentum", "--config.model.width_multiplier=0.25",
    "--config.data.image_size=8", "--config.global_batch_size=64",
    "--config.eval_batch_size=64", "--config.num_epochs=0.3",  # 7 steps
    "--config.logging.tensorboard=False", "--config.checkpoint.every_steps=3",
    "--config.checkpoint.async_save=False", "--config.logging.every_steps=2",
]  # fmt: skip
STOP = 3


def _in_process(workdir, *extra):
    config, _ = cli.parse(["lmsgd.train", f"--workdir={workdir}", *TINY, *extra])
    return train_and_evaluate(config, str(workdir))


def _cli(workdir, devices, *extra, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "lmsgd.train", f"--workdir={workdir}", *TINY,
         f"--config.num_cpu_devices={devices}", *extra],
        cwd=REPO, env=env_for(devices), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(pathlib.Path(root).rglob("*")) if p.is_file()}  # fmt: skip


def _max_diff(a, b):
    (sa, ta), (sb, tb) = load_state_arrays(str(a)), load_state_arrays(str(b))
    assert sa == sb
    pairs = zip(jax.tree.leaves(ta["params"]), jax.tree.leaves(tb["params"]))
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


def _straight_and_stopped(root, *extra):
    _in_process(root / "straight", *extra)
    _in_process(root / "stopped", f"--config.stop_after_steps={STOP}", *extra)
    assert load_state_arrays(str(root / "stopped"))[0] == STOP
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted 8-device run and a copy stopped at step 3 (checkpoint 3)."""
    return _straight_and_stopped(tmp_path_factory.mktemp("layouts"))


def _copy_stopped(runs, name):
    import shutil

    dst = runs / name
    shutil.copytree(runs / "stopped", dst)
    return dst


@pytest.mark.slow
def test_resume_on_4_devices_derives_2_micro_batches_and_equals_the_uninterrupted_run(runs):
    workdir = _copy_stopped(runs, "four")
    out = _cli(workdir, 4)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "accumulation_steps=2 keeps the run's BN span of 8 examples" in out.stderr
    assert "4 devices x 2 micro-batches x 8; BN over 8" in out.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_step"] == STOP and summary["plan"]["accumulation_steps"] == 2
    assert summary["goodput"]["parts_s"]["imports"] > 0  # the command line: from process start
    # No JAX_COMPILATION_CACHE_DIR in its environment: the cache went to the workdir.
    assert summary["compilation_cache"] == str(workdir / "jax_cache")
    assert any((workdir / "jax_cache").iterdir())
    assert json.loads((workdir / "layout.json").read_text()) == {
        "num_devices": 4, "num_processes": 1}  # fmt: skip
    assert _max_diff(workdir, runs / "straight") < 1e-5


@pytest.mark.slow
def test_resume_changing_the_bn_span_is_refused_in_one_line_and_changes_no_file(runs):
    workdir = _copy_stopped(runs, "refused")
    before = _hashes(workdir)
    out = _cli(workdir, 4, "--config.accumulation_steps=1")
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, out.stderr[-2000:]
    assert "BN span is 8" in errors[0] and "make it 16" in errors[0]
    assert "--config.accumulation_steps=2" in errors[0]
    assert _hashes(workdir) == before  # every file, the lock file included


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_on_2_processes_x_2_devices_x_2_micro_batches_equals_the_uninterrupted_run(runs):
    workdir = _copy_stopped(runs, "two_processes")
    out = subprocess.run(
        ["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "2", "--quiet", "--",
         f"--workdir={workdir}", *TINY],
        cwd=REPO, env=env_for(2, PYTHON=sys.executable), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    log0 = (workdir / "logs" / "process_0.log").read_text()
    assert out.returncode == 0, log0[-3000:]
    assert "4 devices x 2 micro-batches x 8; BN over 8" in log0
    assert json.loads((workdir / "layout.json").read_text()) == {
        "num_devices": 4, "num_processes": 2}  # fmt: skip
    assert _max_diff(workdir, runs / "straight") < 1e-5


def test_resume_on_the_same_layout_changes_nothing_and_refusal_leaves_no_trace(tmp_path):
    # In one process (8 devices): an explicit accumulation that changes the span is refused
    # before any file changes, the lock file included.
    _in_process(tmp_path, "--config.num_epochs=0.1", "--config.checkpoint.every_steps=1")
    before = _hashes(tmp_path)
    with pytest.raises(IncompatibleCheckpointError, match="accumulation_steps=1"):
        _in_process(tmp_path, "--config.num_epochs=0.1", "--config.accumulation_steps=2")
    assert _hashes(tmp_path) == before
    assert os.path.exists(tmp_path / "layout.json")


# The paper's optimizer: two valid layouts of the *uninterrupted* run (8 x 1 and 4 x 2, 11
# steps, float32 wire) differ by up to 5.2e-6 in a parameter (1.1% of the smallest ones),
# measured (docs/resuming.md); the resumed run must stay within 10x that.
RMSPROP_LAYOUT_SENSITIVITY = 5.2e-6


@pytest.mark.slow
def test_resume_with_the_papers_optimizer_agrees_up_to_its_measured_sensitivity(tmp_path):
    rms = "--config.optimizer.name=rmsprop_warmup"
    _straight_and_stopped(tmp_path, rms)
    out = _cli(tmp_path / "stopped", 4, rms)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 devices x 2 micro-batches x 8; BN over 8" in out.stderr
    assert _max_diff(tmp_path / "stopped", tmp_path / "straight") < 10 * RMSPROP_LAYOUT_SENSITIVITY
