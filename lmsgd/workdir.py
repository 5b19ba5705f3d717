"""The run directory: one run at a time (a lock), one configuration per directory, and
failures to write reported as what they are (no space left, file too large).

Nothing in a workdir changes before `check_compatible` passes: a refused rerun leaves
`config.json`, `layout.json`, `summary.json`, metrics and checkpoints as they were. A rerun may
change the layout (devices, processes, mesh, accumulation steps) where the training stays the
same (`lmsgd.resume`; docs/resuming.md).
"""

from __future__ import annotations

import copy
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

from lmsgd import layout as layout_lib
from lmsgd import resume
from lmsgd.errors import ConfigError, DiskFullError, IncompatibleCheckpointError, WorkdirError

log = logging.getLogger("lmsgd")

CONFIG_FILE = "config.json"
LAYOUT_FILE = "layout.json"
LOCK_FILE = ".lmsgd.lock"

# Keys that say how to run, not what to train: a resumed (or re-evaluated) run may change
# them. Layout keys (`lmsgd.resume.LAYOUT_KEYS`) may change where the training's effects stay;
# every other key must equal the workdir's config.json.
OPERATIONAL_KEYS = (
    "eval_batch_size", "eval_every_epochs", "stop_after_steps", "num_cpu_devices",
    "distributed", "heartbeat_timeout_seconds", "compilation_cache", "checkpoint.", "logging.",
    "model.eval_stats_batches",
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
        self._fd = fd
        return self

    def record_holder(self) -> None:
        """Names this run (host, pid, start) in the lock file, for the message another run
        gets. Separate from taking the lock: a rerun refused after locking changes no file."""
        if self._fd is None:
            return
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(self._fd, 0)
        os.pwrite(
            self._fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {started}".encode(), 0
        )

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
    """`key: saved -> new` for every training key that differs: neither operational nor a
    layout key (those are compared through their effects, `lmsgd.resume`)."""
    old, new = _flatten(saved), _flatten(config_as_json(config))
    skipped = OPERATIONAL_KEYS + resume.LAYOUT_KEYS
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(skipped) or old.get(key) == new.get(key):
            continue
        diffs.append(
            f"{key}: {old.get(key, '<absent>')!r} in the workdir, {new.get(key, '<absent>')!r} now"
        )
    return diffs


def saved_run(workdir: str) -> tuple[dict[str, Any], resume.Layout | None] | None:
    """The config and layout of the run in `workdir` (read only), or None for a new one.

    The layout is `layout.json`'s; a workdir written before it existed gives its
    `summary.json` plan, else None (then the layout is taken as unchanged)."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    for name, keys in ((LAYOUT_FILE, ("num_devices", "num_processes")),
                       ("summary.json", ("plan",))):  # fmt: skip
        file = epath.Path(workdir) / name
        if file.exists():
            record = json.loads(file.read_text())
            record = record.get(keys[0]) if keys == ("plan",) else record
            if record and "num_devices" in record and "num_processes" in record:
                return saved, resume.Layout(record["num_devices"], record["num_processes"])
    return saved, None


def resolve_accumulation_steps(
    workdir: str, config: ml_collections.ConfigDict, layout: resume.Layout
) -> ml_collections.ConfigDict:
    """`config` with `accumulation_steps` set where it is None: for a new run the fewest
    micro-batches within `config.max_micro_batch` (1 without it; `lmsgd.layout`); on resume,
    the value (not below that where possible) that keeps the saved run's BN span and
    membership on `layout` (else 1, and `check_compatible` names what would keep them).
    Reads the workdir, writes nothing."""
    if config.accumulation_steps is not None:
        return config
    found = saved_run(workdir)
    try:  # the fewest micro-batches that fit config.max_micro_batch (lmsgd.layout)
        k = layout_lib.accumulation_steps(config, layout.num_devices)
    except ConfigError:
        if found is None:
            raise
        k = 1
    if found is not None:
        saved, saved_layout = found
        old = resume.effects(saved, saved_layout or layout)
        as_json = config_as_json(config)
        k = (resume.derive_accumulation_steps(old, as_json, layout, at_least=k)
             or resume.derive_accumulation_steps(old, as_json, layout) or 1)  # fmt: skip
        if k != (saved.get("accumulation_steps") or 1) or saved_layout != layout:
            log.info(
                "resuming on %s: accumulation_steps=%d keeps the run's BN span of %s examples "
                "(%s in the workdir)", resume.describe_layout({**config_as_json(config),
                "accumulation_steps": k}, layout), k, old["BN span"],
                resume.describe_layout(saved, saved_layout or layout),
            )  # fmt: skip
    config = copy.deepcopy(config)  # the caller's stays as given
    config.accumulation_steps = k
    return config


def check_compatible(
    workdir: str, config: ml_collections.ConfigDict, layout: resume.Layout | None = None
) -> None:
    """Refuses a config that would change the training of the run in the workdir.

    Compares the training keys (`config_differences`) and, on `layout` (the rerun's devices
    and processes; default: the saved one), the training's effects (`lmsgd.resume.effects`):
    one line naming the effect and the setting that would keep it. Writes nothing.
    """
    found = saved_run(workdir)
    if found is None:
        return
    saved, saved_layout = found
    path = epath.Path(workdir) / CONFIG_FILE
    diffs = config_differences(saved, config)
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise IncompatibleCheckpointError(
            f"--workdir {workdir} holds a run of another configuration ({shown}). Use a new "
            f"--workdir, or the configuration in {path}."
        )
    saved_layout = saved_layout or layout
    if layout is None or saved_layout is None:
        return
    new = config_as_json(config)
    old_effects, new_effects = resume.effects(saved, saved_layout), resume.effects(new, layout)
    changed = resume.differences(old_effects, new_effects)
    if not changed:
        return
    effect, was, now = changed[0]
    keep = resume.suggest_settings(old_effects, new, layout)
    fix = (f"rerun with {keep} to keep it" if keep
           else f"rerun on {saved_layout.num_devices} devices in {saved_layout.num_processes} "
                "process(es) to keep it")  # fmt: skip
    raise IncompatibleCheckpointError(
        f"--workdir {workdir} holds a run whose {effect} is {was} "
        f"({resume.describe_layout(saved, saved_layout)}); this rerun "
        f"({resume.describe_layout(new, layout)}) would make it {now} and change the "
        f"training: {fix}, or use a new --workdir."
    )


def write_layout(workdir: str, layout: resume.Layout) -> None:
    """Records the run's devices and processes, for the next rerun's `check_compatible`."""
    write_json(workdir, LAYOUT_FILE, layout.as_json())


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
