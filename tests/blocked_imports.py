"""Run a subprocess as on a GPU box without TensorFlow or clu: those imports raise ImportError.

    env = blocked_env(tmp_path)            # os.environ + PYTHONPATH=<tmp_path>:...
    subprocess.run([sys.executable, "-m", "lmsgd.bench", "device", "--quick"], env=env)

`write_blocker(directory)` writes a ``sitecustomize.py`` there; put first on PYTHONPATH, the
interpreter imports it at start-up and it installs a ``sys.meta_path`` finder that raises
ImportError for every module of the blocked packages (``import tensorflow``, ``from clu import
metric_writers``, ``import tensorflow_datasets as tfds``), installed or not. The test process
itself is untouched.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

BLOCKED: tuple[str, ...] = ("tensorflow", "tensorflow_datasets", "clu")

_SITECUSTOMIZE = '''"""Written by tests/blocked_imports.py: these packages count as absent."""
import sys

_BLOCKED = {blocked!r}


class _BlockedImports:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ImportError(f"{{name}} is blocked (tests/blocked_imports.py)", name=name)
        return None


sys.meta_path.insert(0, _BlockedImports())
'''


def write_blocker(directory: str | os.PathLike, blocked: Sequence[str] = BLOCKED) -> pathlib.Path:
    """Writes ``sitecustomize.py`` blocking ``blocked`` into ``directory``; returns the
    directory (to put first on PYTHONPATH)."""
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(blocked=tuple(blocked)))
    return path


def blocked_env(
    directory: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    blocked: Sequence[str] = BLOCKED,
) -> dict[str, str]:
    """``env`` (default os.environ) with a blocker in ``directory`` first on PYTHONPATH."""
    out = dict(os.environ if env is None else env)
    first = str(write_blocker(directory, blocked))
    out["PYTHONPATH"] = os.pathsep.join(p for p in (first, out.get("PYTHONPATH", "")) if p)
    return out
