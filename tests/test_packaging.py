"""The configs ship with the package: name resolution from any directory, pyproject's package
list, and a built wheel that carries configs/ and trains from it outside the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import setuptools
from helpers import REPO_ROOT

from lmsgd import config_files
from lmsgd.errors import ConfigError

CONFIGS = REPO_ROOT / "configs"
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_names_resolve_to_the_shipped_files_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    default = str(CONFIGS / "default.py")
    for spec in ("default", "default.py", "configs/default.py"):
        assert config_files.resolve(spec) == default
    paper = CONFIGS / "cifar10_large_batch" / "f_paper.py"
    assert config_files.resolve("cifar10_large_batch/f_paper:quick") == f"{paper}:quick"
    # A path that exists wins over a shipped name.
    (tmp_path / "default.py").write_text("")
    assert config_files.resolve("default.py") == "default.py"
    with pytest.raises(ConfigError, match=r"'nope' not found.*default.*imagenet_resnet50_akiba32k"):
        config_files.resolve("nope")
    names = config_files.shipped_names()
    on_disk = sorted(
        str(p.relative_to(CONFIGS).with_suffix(""))
        for p in CONFIGS.rglob("*.py")
        if p.name != "__init__.py"
    )
    assert names == on_disk and "default" in names
    assert config_files.resolve_argv(["prog", "--config", "default", "--config.seed=1"]) == [
        "prog", "--config", default, "--config.seed=1",
    ]  # fmt: skip
    assert config_files.resolve_argv(["p", "--config=default:x"]) == ["p", f"--config={default}:x"]


def test_pyproject_lists_every_package_and_maps_configs():
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = setuptools.find_packages(str(REPO_ROOT), include=["lmsgd*"])
    configs = [
        "lmsgd.configs" + ("." + ".".join(p.relative_to(CONFIGS).parts) if p != CONFIGS else "")
        for p in [CONFIGS, *CONFIGS.rglob("*")]
        if p.is_dir() and any(p.glob("*.py")) and "__pycache__" not in p.parts
    ]
    assert sorted(tool["packages"]) == sorted(found + configs)
    assert tool["package-dir"] == {"lmsgd.configs": "configs"}
    for folder in configs:  # a package needs its __init__.py to be found in a wheel
        rel = folder.removeprefix("lmsgd.configs").lstrip(".").replace(".", "/")
        assert (CONFIGS / rel / "__init__.py").is_file(), folder


@pytest.mark.slow
def test_a_built_wheel_carries_the_configs_and_trains_outside_the_checkout(tmp_path):
    # Built from a copy: setuptools would leave build/ in the checkout and reuse it next time.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "results", "*.egg-info", "__pycache__",
    ))  # fmt: skip
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if built.returncode != 0 and "No matching distribution" in built.stderr:
        pytest.skip("no package index to fetch the build backend from")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("lmsgd-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for path in CONFIGS.rglob("*.py"):
            inside = "lmsgd/configs/" + str(path.relative_to(CONFIGS))
            assert inside in names, inside
            assert zf.read(inside) == path.read_bytes(), inside
        # The planner's GPU target specs are package data, not modules.
        for spec in (REPO_ROOT / "lmsgd" / "plan" / "gpu_specs").glob("*.txtpb"):
            assert f"lmsgd/plan/gpu_specs/{spec.name}" in names, spec.name
        site = tmp_path / "site"
        zf.extractall(site)
    # The wheel's files alone (its dependencies from this environment), run from elsewhere.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    away = tmp_path / "elsewhere"
    away.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", "--config", "default", "--workdir", "w",
         "--config.num_epochs=1", "--config.eval_every_epochs=1"],
        cwd=away, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (away / "w" / "summary.json").is_file()
    where = subprocess.run(
        [sys.executable, "-c", "import lmsgd.config_files as c; print(c.resolve('default'))"],
        cwd=away, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.strip() == str(site / "lmsgd" / "configs" / "default.py"), where.stderr


def test_every_extra_the_docs_name_exists():
    """`pip install '.[x,y]'` / `lmsgd[x]` in README and docs name extras pyproject defines."""
    import re

    extras = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ])  # fmt: skip
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    named = set()
    for page in pages:
        for group in re.findall(r"(?:\.|lmsgd)\[([a-z0-9_,-]+)\]", page.read_text()):
            named |= set(group.split(","))
    assert {"data", "test", "cuda13", "tpu"} <= named  # the scan sees the install table
    assert named <= extras, named - extras
    # The core install needs no TensorFlow: it is the 'data' extra only.
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if re.match(r"(tensorflow|clu)\b", d)]
