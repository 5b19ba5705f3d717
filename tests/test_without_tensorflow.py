"""The core path on a machine without TensorFlow, TensorFlow Datasets or clu.

Each command runs in a child process whose import system cannot find those packages: a
``sitecustomize`` (first on PYTHONPATH) replaces the path finder with one that answers "no
such module" for them, as an uninstalled package would (``importlib.util.find_spec`` returns
None, ``import`` raises ModuleNotFoundError), and reports at exit which of them were loaded.
The training, benchmark and import checks must pass; the tf.data pipelines must fail in one
line naming the package to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from blocked_imports import BLOCKED, REPORT_ENV, write_blocker
from helpers import REPO_ROOT, write_noise_folder

# Modules of the core path: the model, the step, the optimizer, the driver, the data front
# end, the benchmarks of the JAX side and the planner.
CORE_MODULES = (
    "lmsgd", "lmsgd.models", "lmsgd.step", "lmsgd.optim", "lmsgd.train", "lmsgd.evaluate",
    "lmsgd.data", "lmsgd.data.pipeline", "lmsgd.data.sources", "lmsgd.data.memory_pipeline",
    "lmsgd.metric_logging", "lmsgd.tensorboard_writer", "lmsgd.progress", "lmsgd.run",
    "lmsgd.bench.step", "lmsgd.bench.optimizer", "lmsgd.bench.allreduce", "lmsgd.plan",
    "lmsgd.plan.__main__",
)  # fmt: skip

INSTALL = "pip install 'lmsgd[data]'"


@pytest.fixture(scope="module")
def blocker_dir(tmp_path_factory):
    return write_blocker(tmp_path_factory.mktemp("without_tensorflow"))


def run(args, tmp_path, blocker_dir=None, timeout=600):
    """``python ARGS`` from the checkout; returns (completed process, the exit report)."""
    report = tmp_path / f"report_{len(list(tmp_path.glob('report_*')))}.json"
    path = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    if blocker_dir is not None:
        path.insert(0, str(blocker_dir))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env[REPORT_ENV] = str(report)
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    text = out.stdout + out.stderr
    info = json.loads(report.read_text()) if report.exists() else None
    return out, info, text


def check_clean(out, info, text):
    assert out.returncode == 0, text[-3000:]
    assert info is not None and info["active"], "the blocker did not run in the child"
    assert info["loaded"] == [], info


def test_the_child_really_cannot_import_them(blocker_dir, tmp_path):
    script = "import importlib.util, sys\n"
    for name in BLOCKED:
        script += f"assert importlib.util.find_spec({name!r}) is None\n"
        script += f"try:\n    import {name}\nexcept ModuleNotFoundError:\n    pass\n"
        script += f"else:\n    sys.exit('{name} imported')\n"
    script += "from tensorboard.compat import tf as t\n"  # TensorBoard's lazy TF: its stub here
    script += "assert t.__version__ == 'stub', t.__version__\n"
    out, info, text = run(["-c", script], tmp_path, blocker_dir)
    check_clean(out, info, text)
    assert {"tensorflow", "tensorflow_datasets", "clu"} <= set(info["probes"])


@pytest.mark.parametrize("blocked", [True, False], ids=["without_tf", "tf_if_installed"])
def test_core_modules_import_neither_tensorflow_nor_clu(blocker_dir, tmp_path, blocked):
    """Also where TensorFlow is installed (no blocker), importing the core loads none of them."""
    script = "import importlib\n"
    script += f"for m in {CORE_MODULES!r}:\n    importlib.import_module(m)\n"
    script += "import sys\n"
    script += f"bad = [m for m in sys.modules if m.partition('.')[0] in {BLOCKED!r}]\n"
    script += "assert not bad, bad\n"
    out, info, text = run(["-c", script], tmp_path, blocker_dir if blocked else None)
    assert out.returncode == 0, text[-3000:]
    if blocked:
        check_clean(out, info, text)


@pytest.mark.slow  # compiles ResNets: 1-4 min on 2 busy cores
def test_bench_step_quick(blocker_dir, tmp_path):
    out, info, text = run(
        ["-m", "lmsgd.bench", "step", "--quick", "--model", "cifar_resnet8",
         "--width_multiplier", "0.25", "--per_device_batch", "2", "--image_size", "8",
         "--steps", "2", "--warmup", "1", "--rounds", "1", "--compile_rounds", "1",
         "--peak_matmul_size", "64", "--results_dir", str(tmp_path)],
        tmp_path, blocker_dir,
    )  # fmt: skip
    check_clean(out, info, text)
    assert "ours / baseline" in out.stdout
    assert len(list(tmp_path.glob("bench_step_*.json"))) == 1


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # compiles a ResNet-50 train step: 1-3 min on 2 busy cores
def test_synthetic_resnet50_trains(blocker_dir, tmp_path):
    workdir = tmp_path / "run"
    out, info, text = run(
        ["-m", "lmsgd.train", "--config", "configs/synthetic_resnet50.py", f"--workdir={workdir}",
         "--config.global_batch_size=8", "--config.eval_batch_size=8",
         "--config.data.image_size=32", "--config.data.num_train_examples=24",
         "--config.data.num_eval_examples=8", "--config.model.width_multiplier=0.125",
         "--config.logging.every_steps=1"],
        tmp_path, blocker_dir,
    )  # fmt: skip
    check_clean(out, info, text)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["step"] == 3 and result["eval_examples"] == 8
    records = _metrics(workdir)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    # The steps/s report clu's ReportProgress wrote: from the second step on.
    progress = [r for r in records if r["kind"] == "progress"]
    assert [r["step"] for r in progress] == [2, 3]
    assert all(r["steps_per_sec"] > 0 and r["uptime"] > 0 for r in progress)
    (event_file,) = (workdir / "tensorboard").iterdir()
    assert event_file.name.startswith("events.out.tfevents.")


@pytest.mark.slow
def test_default_run(blocker_dir, tmp_path):
    """The README's main job (digits, 8 simulated devices), cut to 4 of its 40 epochs."""
    workdir = tmp_path / "run"
    out, info, text = run(
        ["-m", "lmsgd.train", "--config", "configs/default.py", f"--workdir={workdir}",
         "--config.num_epochs=4", "--config.eval_every_epochs=2"],
        tmp_path, blocker_dir,
    )  # fmt: skip
    check_clean(out, info, text)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["step"] == 20 and result["eval_examples"] == 360
    assert result["eval_top1"] > 0.5  # 10 classes: it learns
    assert [r["step"] for r in _metrics(workdir) if r["kind"] == "eval"] == [10, 20]
    assert any((workdir / "tensorboard").iterdir()) and (workdir / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "data, message",
    [
        ("image_folder", "the image-folder pipeline needs TensorFlow"),
        ("imagenet2012", "the imagenet2012 (TFDS) pipeline needs TensorFlow"),
        ("digits_inception", "the digits inception-crop pipeline needs TensorFlow"),
    ],
)
def test_tf_data_pipelines_fail_in_one_line(blocker_dir, tmp_path, data, message):
    args = ["-m", "lmsgd.train", "--config", "configs/default.py", f"--workdir={tmp_path / 'w'}"]
    if data == "image_folder":
        root = write_noise_folder(tmp_path / "images")
        args += ["--config.data.name=image_folder", f"--config.data.data_dir={root}"]
    elif data == "imagenet2012":
        args += ["--config.data.name=imagenet2012", f"--config.data.data_dir={tmp_path}"]
    else:
        args += ["--config.data.crop=inception"]
    out, info, text = run(args, tmp_path, blocker_dir)
    assert out.returncode != 0 and out.stdout == "", text[-3000:]
    assert info["loaded"] == []
    assert out.stderr.splitlines() == [f"lmsgd.train: error: {message}: {INSTALL}"], out.stderr


def test_requires_names_the_package_in_process(monkeypatch):
    """The same message from the library, where TensorFlow's import fails."""
    from lmsgd.data import requires
    from lmsgd.errors import MissingDependencyError, UserError

    monkeypatch.setitem(sys.modules, "lmsgd.data._tf", None)  # import -> ImportError
    with pytest.raises(MissingDependencyError) as e:
        requires.tensorflow("image-folder")
    assert isinstance(e.value, UserError)
    assert str(e.value) == f"the image-folder pipeline needs TensorFlow: {INSTALL}"
    cfg = {"name": "digits", "crop": "auto"}
    requires.check_available(cfg)  # digits: numpy, nothing needed
    with pytest.raises(MissingDependencyError, match="image-folder"):
        requires.check_available({"name": "image_folder", "crop": "auto"})
