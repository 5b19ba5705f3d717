"""Run a subprocess as on a GPU box without TensorFlow or clu: those imports raise ImportError.

    env = blocked_env(tmp_path)            # os.environ + PYTHONPATH=<tmp_path>:...
    subprocess.run([sys.executable, "-m", "lmsgd.bench", "device", "--quick"], env=env)

`write_blocker(directory)` writes a ``sitecustomize.py`` there; put first on PYTHONPATH, the
interpreter imports it at start-up and it wraps every ``sys.meta_path`` finder so that none
finds the blocked packages: ``import clu`` raises ``ModuleNotFoundError: No module named
'clu'`` and ``importlib.util.find_spec("tensorflow")`` is None, as where they are not
installed (etils, which jax's compilation cache uses, probes TensorFlow that way; a finder
that raised instead would break it). The test process itself is untouched.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

BLOCKED: tuple[str, ...] = ("tensorflow", "tensorflow_datasets", "clu")
# Where set in the child, it writes {"active", "loaded", "probes"} there as JSON at exit.
REPORT_ENV = "BLOCKED_IMPORTS_REPORT"

_SITECUSTOMIZE = '''"""Written by tests/blocked_imports.py: these packages count as absent."""
import atexit
import json
import os
import sys

_BLOCKED = {blocked!r}
_probes = []


class _Without:
    """Wraps a meta path finder: it finds nothing of the blocked packages."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            _probes.append(name)
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self._finder, attr)


for _name in list(sys.modules):
    if _name.partition(".")[0] in _BLOCKED:
        del sys.modules[_name]
sys.meta_path[:] = [_Without(f) for f in sys.meta_path]


def _report():
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in _BLOCKED)
    with open(os.environ[REPORT_ENV], "w") as f:
        json.dump({{"active": True, "loaded": loaded, "probes": _probes}}, f)


if os.environ.get(REPORT_ENV):  # the test asks what the child probed and loaded
    atexit.register(_report)
'''.replace("REPORT_ENV", repr(REPORT_ENV))


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
