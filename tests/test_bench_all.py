"""`python -m lmsgd.bench all`: runs every suite with its quick settings (stubbed here; each
suite has its own test) and writes a summary; the CLI lists every suite."""

import argparse
import json
import subprocess
import sys
import types

import pytest

from lmsgd.bench import SUITES, all_suites
from lmsgd.bench.__main__ import main


def test_all_runs_every_suite_quick(tmp_path, monkeypatch):
    seen = {}
    real_import = all_suites.importlib.import_module

    def fake_import(name, *a, **k):
        module = real_import(name, *a, **k)
        if name not in SUITES.values():
            return module
        suite = next(k for k, v in SUITES.items() if v == name)

        def run(args):
            seen[suite] = args
            path = tmp_path / f"{suite}.json"
            path.write_text("{}")
            return {"json_path": str(path)}

        return types.SimpleNamespace(add_arguments=module.add_arguments, run=run)

    # Only all_suites' view of importlib: the CLI's own imports stay real.
    monkeypatch.setattr(all_suites, "importlib", types.SimpleNamespace(import_module=fake_import))
    record = main(["all", "--quick", "--results_dir", str(tmp_path)])
    assert list(seen) == ["step", "allreduce", "optimizer", "input"]
    assert all(isinstance(a, argparse.Namespace) and a.quick for a in seen.values())
    assert all(a.results_dir == str(tmp_path) for a in seen.values())
    saved = json.loads((tmp_path / record["json_path"].split("/")[-1]).read_text())
    assert set(saved["results"]) == set(seen) and saved["wall_s"] >= 0
    assert saved["versions"]["jax"] and saved["hardware"]["device_count"] == 8


def test_all_rejects_unknown_suite(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        main(["all", "--suites", "step,nope", "--results_dir", str(tmp_path)])


def test_cli_lists_every_suite():
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.bench", "--help"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    for suite in ("step", "allreduce", "optimizer", "input", "all"):
        assert suite in out
