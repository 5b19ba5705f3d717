"""lmsgd uses only public APIs of its dependencies: a private module (any dotted component
starting with `_`, like `jax._src`) moves or disappears between releases, which is how
jax 0.12 broke `import lmsgd`. Our own private modules (`lmsgd._quiet`) are ours to move."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lmsgd"
CONFIGS = PACKAGE.parent / "configs"


def _private_foreign(module: str) -> bool:
    parts = module.split(".")
    if parts[0] == "lmsgd":
        return False
    return any(p.startswith("_") and not p.startswith("__") for p in parts)


def private_imports(source: str, filename: str = "<string>") -> list[str]:
    """`file:line module` for each import of another package's private module, including
    `importlib.import_module("...")` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        found += [f"{filename}:{node.lineno} {n}" for n in names if _private_foreign(n)]
    return found


def _sources() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(CONFIGS.rglob("*.py"))


def test_the_package_imports_no_private_module_of_another_package():
    assert len(_sources()) > 50  # the scan really sees the package
    found = []
    for path in _sources():
        found += private_imports(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert found == []


@pytest.mark.parametrize(
    "line",
    [
        "from jax._src import xla_bridge",
        "import jax._src.lax.parallel",
        "from jax._src.lax.parallel import all_gather_invariant",
        "from orbax.checkpoint._src import asyncio_utils",
        "import importlib; importlib.import_module('jax._src.clusters')",
        "def f():\n    from jax.experimental._private import x",
    ],
)
def test_the_scan_finds_each_form_of_private_import(line):
    assert len(private_imports(line)) >= 1


@pytest.mark.parametrize(
    "line",
    [
        "import jax.numpy as jnp",
        "from jax.experimental import multihost_utils",
        "from lmsgd import _quiet",
        "from lmsgd.data import _tf",
        "import __future__",
        "from . import _tf",
    ],
)
def test_public_and_own_modules_pass(line):
    assert private_imports(line) == []
