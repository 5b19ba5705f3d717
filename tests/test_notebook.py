"""notebooks/explore.ipynb: committed without outputs, in sync with its jupytext twin
notebooks/explore.py, and runs top to bottom on CPU (nbclient, a kernel on this Python)."""

import json
import os
import pathlib
import re
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"
PAIRED = REPO_ROOT / "notebooks" / "explore.py"
KERNEL_NAME = "lmsgd-notebook-test"
CELL_TIMEOUT_S = 300

nbformat = pytest.importorskip("nbformat")


def _read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def _percent_cells(text: str) -> list[tuple[str, str]]:
    """(cell_type, source) of a jupytext percent-format script, for the cells this notebook
    uses: `# %%` code cells and `# %% [markdown]` cells whose lines are `# ...` comments."""
    lines = text.splitlines()
    if lines and lines[0] == "# ---":  # the YAML header
        lines = lines[lines.index("# ---", 1) + 1 :]
    cells: list[tuple[str, list[str]]] = []
    for line in lines:
        m = re.fullmatch(r"# %%(?: \[(\w+)\])?", line)
        if m:
            cells.append((m[1] or "code", []))
        elif cells:
            cells[-1][1].append(line)
        else:
            assert not line.strip(), f"text before the first cell marker: {line!r}"
    out = []
    for cell_type, body in cells:
        if cell_type == "markdown":
            body = [re.sub(r"^# ?", "", line) for line in body]
        out.append((cell_type, "\n".join(body).strip("\n")))
    return out


def _notebook_cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip("\n")) for cell in nb.cells]


def test_notebook_committed_without_outputs():
    nb = _read_notebook()
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"cell {i} has an execution count"


def test_notebook_matches_its_percent_script():
    nb_cells = _notebook_cells(_read_notebook())
    assert nb_cells == _percent_cells(PAIRED.read_text()), (
        "notebooks/explore.ipynb and explore.py differ: edit the .py, then "
        "`jupytext --to ipynb notebooks/explore.py`"
    )


def test_notebook_matches_jupytext_round_trip():
    jupytext = pytest.importorskip("jupytext")  # in the 'dev' extra, not 'test'
    from_script = jupytext.read(PAIRED)
    assert _notebook_cells(from_script) == _notebook_cells(_read_notebook())


def _kernel_on_this_python(root: pathlib.Path) -> None:
    """A kernelspec whose argv is this interpreter (the test venv), found via JUPYTER_PATH."""
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "lmsgd notebook test",
                "language": "python",
            }
        )
    )


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _kernel_on_this_python(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel starts with a clean XLA_FLAGS: the notebook must set up its 8 devices itself.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        IPYTHONDIR=str(tmp_path / "ipython"),
        MPLCONFIGDIR=str(tmp_path / "matplotlib"),
        TMPDIR=str(tmp_path),  # the notebook's tempfile workdirs are cleaned up with tmp_path
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    nb = _read_notebook()
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=env)  # raises CellExecutionError naming the cell on any error
    outputs = "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "8 devices" in outputs
    assert "parameters; mesh" in outputs


def _setup_cell() -> str:
    cells = [src for kind, src in _percent_cells(PAIRED.read_text()) if kind == "code"]
    return next(src for src in cells if "PIP_SPEC" in src)


class _FakeShell:
    """Records the notebook's `%pip` calls instead of installing."""

    def __init__(self):
        self.magics = []

    def run_line_magic(self, name, line):
        self.magics.append((name, line))


def test_setup_cell_pip_installs_only_where_lmsgd_is_missing(monkeypatch):
    """Colab: no checkout; the cell pip-installs the package (configs included) and nothing
    else. Where lmsgd is importable (a checkout, this test run) it does nothing."""
    import importlib.util

    import IPython

    shell = _FakeShell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    exec(compile(_setup_cell(), "setup-cell", "exec"), {})  # noqa: S102
    assert shell.magics == []

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lmsgd" else real_find_spec(name, *a),
    )
    monkeypatch.setenv("LMSGD_PIP_SPEC", "/wheels/lmsgd-0.1.0-py3-none-any.whl")
    exec(compile(_setup_cell(), "setup-cell", "exec"), {})  # noqa: S102
    assert shell.magics == [("pip", 'install -q "/wheels/lmsgd-0.1.0-py3-none-any.whl"')]
