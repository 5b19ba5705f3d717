"""The run directory: one run at a time (a lock), one configuration per directory, and
failures to write reported as what they are (no space left, file too large).

Nothing in a workdir changes before `check_compatible` passes: a refused rerun leaves
`config.json`, `summary.json`, metrics and checkpoints as they were.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

from lmsgd.errors import DiskFullError, IncompatibleCheckpointError, WorkdirError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lmsgd.lock"

# Keys that say how to run, not what to train: a resumed (or re-evaluated) run may change
# them. Every other key must equal the workdir's config.json.
OPERATIONAL_KEYS = (
    "eval_batch_size", "eval_every_epochs", "stop_after_steps", "num_cpu_devices",
    "distributed", "checkpoint.", "logging.", "allreduce.", "model.eval_stats_batches",
    "data.data_dir", "data.manual_dir", "data.num_parallel_calls",
    "data.private_threadpool_size", "data.cache", "data.cache_max_bytes", "data.prefetch",
    "data.skip_corrupt",
)  # fmt: skip

_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_FULL_TEXT = ("no space left", "file too large", "disk quota", "out_of_range", "efbig", "enospc")


def is_remote(workdir: str) -> bool:
    return "://" in workdir


class WorkdirLock:
    """An exclusive lock on the workdir, held by process 0 for the whole run.

    `flock` on `<workdir>/.lmsgd.lock`: the kernel releases it when the holder exits, however
    it exits, so a lock left by a dead process never blocks (its file is simply reused). The
    file names the holder's host and pid for the message another run gets.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise as_disk_full(e, self.path) or WorkdirError(
                f"--workdir {os.path.dirname(self.path)} is not writable ({e.strerror}); "
                "choose another directory"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1024).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirError(
                f"--workdir {os.path.dirname(self.path)} is in use by another run ({holder}). "
                "Wait for it to finish, stop it, or use another --workdir."
            ) from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {started}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file may stay
            self._fd = None


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json())


def config_differences(saved: Mapping[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """`key: saved -> new` for every non-operational key that differs."""
    old, new = _flatten(saved), _flatten(config_as_json(config))
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(OPERATIONAL_KEYS) or old.get(key) == new.get(key):
            continue
        diffs.append(
            f"{key}: {old.get(key, '<absent>')!r} in the workdir, {new.get(key, '<absent>')!r} now"
        )
    return diffs


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a config that differs from the workdir's `config.json` in what it trains."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    diffs = config_differences(saved, config)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise IncompatibleCheckpointError(
            f"--workdir {workdir} holds a run of another configuration ({shown}). Use a new "
            f"--workdir, or the configuration in {path}."
        )


def write_json(workdir: str, name: str, obj: Any) -> None:
    """Writes `<workdir>/<name>` as JSON, atomically (see `write_text`)."""
    write_text(workdir, name, json.dumps(obj, indent=2))


def write_text(workdir: str, name: str, text: str) -> None:
    """Writes `<workdir>/<name>` atomically: temporary file + rename on a filesystem; one
    object write (which replaces an object whole) on an object store such as `gs://`."""
    if is_remote(workdir):  # object stores have no directories to create
        (epath.Path(workdir) / name).write_text(text)
        return
    path = os.path.join(workdir, name)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        full = as_disk_full(e, path)
        if full is None:
            raise
        raise full from e


def as_disk_full(exc: BaseException, path: str) -> DiskFullError | None:
    """A `DiskFullError` naming `path` if `exc` (or its cause) is a full disk or a file-size
    limit, whatever library raised it (OSError, tensorstore's ValueError, TensorFlow's
    ResourceExhaustedError); else None."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e
        code = getattr(e, "errno", None)
        text = str(e).lower()
        if code in _FULL_ERRNOS or any(t in text for t in _FULL_TEXT):
            reason = (
                "file too large (a file-size limit)"
                if (code == errno.EFBIG or "too large" in text or "efbig" in text)
                else "no space left on the device"
            )
            return DiskFullError(
                f"could not write under {path}: {reason}. Earlier checkpoints are intact; free "
                "space (or raise the limit) and rerun the same command to resume."
            )
        e = e.__cause__ or e.__context__
    return None
