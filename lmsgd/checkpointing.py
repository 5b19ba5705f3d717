"""Checkpoints with orbax: asynchronous, atomic, refused when written under another config.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. `state` is the whole `TrainState`
(parameters, optimizer state, normalization state, step); the data position and the RNG are
functions of (seed, step), so they need no storage. `meta` records the config and a
fingerprint of what must match to resume. Orbax writes each checkpoint to a temporary directory
and renames it when complete, so a run killed mid-save leaves the previous one restorable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from lmsgd.errors import IncompatibleCheckpointError
from lmsgd.workdir import as_disk_full

log = logging.getLogger(__name__)

# Config entries that change the shapes or meaning of the saved state: the name they are
# recorded under, and where they are in the config. The dtype of rmsprop_warmup's Delta moved
# to config.optimizer.rmsprop_warmup (issue 25) and keeps its recorded name, so checkpoints
# written before still resume.
FINGERPRINT_KEYS = (
    ("model.name", ("model", "name")),
    ("model.num_classes", ("model", "num_classes")),
    ("model.width_multiplier", ("model", "width_multiplier")),
    ("model.norm_mode", ("model", "norm_mode")),
    ("optimizer.name", ("optimizer", "name")),
    ("optimizer.delta_dtype", ("optimizer", "rmsprop_warmup", "delta_dtype")),
)


def state_fingerprint(state: Any) -> dict[str, Any]:
    """Shapes and dtypes of every state leaf, hashed, plus a readable summary."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    desc = [f"{jax.tree_util.keystr(path)}:{tuple(x.shape)}:{x.dtype}" for path, x in leaves]
    return {
        "num_leaves": len(desc),
        "shapes_sha256": hashlib.sha256("\n".join(desc).encode()).hexdigest(),
    }


def config_fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, path in FINGERPRINT_KEYS:
        value = config
        for part in path:
            value = value[part]
        out[name] = value
    return out


def _drop_closed_loop_noise_after_failed_writes() -> None:
    """Drops the "Event loop is closed" unraisable exceptions a failed save leaves behind.

    Why (measured: 282 tracebacks on a full disk): orbax runs a save's coroutine in a fresh
    event loop and closes it when the save raises. When one tensorstore write fails (a full
    disk), the others are still in flight; each then completes into the closed loop, and
    Python prints its "RuntimeError: Event loop is closed" as an unraisable exception. Their
    error is the one already raised. Python's public `sys.unraisablehook` drops exactly that
    message and passes everything else on (orbax's own event-loop helper is private API).
    """
    previous = sys.unraisablehook
    if getattr(previous, "_lmsgd_drops_closed_loop", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._lmsgd_drops_closed_loop = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


_ORBAX_SOURCE = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"


def logged_by_orbax(record: logging.LogRecord) -> bool:
    """Whether orbax emitted `record`. absl's logger names its own module as the record's
    path, so the caller is found on the stack (a logging filter runs in the caller's frame)."""
    if _ORBAX_SOURCE in (record.pathname or ""):
        return True
    frame = sys._getframe(1)
    for _ in range(20):  # logging + absl add fewer than 20 frames above the caller
        if frame is None:
            return False
        if _ORBAX_SOURCE in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class _OrbaxReRaisedTracebacks(logging.Filter):
    """Drops orbax's own log of an exception it raises on to us (`logging.exception` in its
    writer threads and in `wait_until_finished`): the caller reports that exception once, as
    one line (a full disk: `DiskFullError`). Without it one failed save prints a traceback per
    thread. Kept under LMSGD_DEBUG=1."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or os.environ.get("LMSGD_DEBUG"):
            return True
        return not logged_by_orbax(record)


class _OrbaxOrphanedWriteErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for orbax's write tasks: when one
    tensorstore write of a save fails (a full disk), orbax raises that error and leaves the
    other writes of the same save to finish into the closed loop, each failing the same way;
    asyncio logs each with its traceback when the task is collected. The caller reports the
    failure once. Only tracebacks that run through orbax are dropped; kept under LMSGD_DEBUG=1.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("LMSGD_DEBUG") or "never retrieved" not in record.getMessage():
            return True
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if _ORBAX_SOURCE in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


def _quiet_orbax_reraised_tracebacks() -> None:
    absl_logger = logging.getLogger("absl")  # orbax logs through absl.logging
    if not any(isinstance(f, _OrbaxReRaisedTracebacks) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxReRaisedTracebacks())
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxOrphanedWriteErrors) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_OrbaxOrphanedWriteErrors())


class Checkpointer:
    """Saves and restores `TrainState`s in `<workdir>/checkpoints`.

    Args:
      workdir: the run directory (local path or gs:// bucket).
      every_steps: save interval (orbax's `save_interval_steps`); `save(..., force=True)`
        saves regardless (the final step, a preemption).
      keep: number of newest checkpoints kept.
      async_save: write in a background thread (orbax); `wait()` before exiting. A
        checkpoint counts only once committed (`latest_step` after `wait`).
    """

    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool):
        _drop_closed_loop_noise_after_failed_writes()
        _quiet_orbax_reraised_tracebacks()
        self._in_flight = False  # a save started and not yet waited for
        self._closed = False
        self.directory = os.path.join(os.path.abspath(workdir) if "://" not in workdir
                                      else workdir, "checkpoints")  # fmt: skip
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    @contextlib.contextmanager
    def _disk_full_as_error(self):
        """A full disk (or file-size limit) under the checkpoint folder raised as DiskFullError;
        tensorstore reports it as a ValueError, the OS as an OSError."""
        try:
            yield
        except (OSError, ValueError) as e:
            full = as_disk_full(e, self.directory)
            if full is None:
                raise
            raise full from e

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self._manager.should_save(step)

    def save(
        self, step: int, state: Any, config: Mapping[str, Any], *, force: bool = False
    ) -> bool:
        """Saves `state` as checkpoint `step` if the interval says so (or `force`); returns
        whether a save started. Raises DiskFullError if the disk is full."""
        meta = {
            "step": int(step),
            "config": json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config),
            "config_fingerprint": config_fingerprint(config),
            "state_fingerprint": state_fingerprint(state),
        }
        with self._disk_full_as_error():
            started = self._manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=force,
            )
            self._in_flight = self._in_flight or started
            return started

    def restore(self, state_template: Any, config: Mapping[str, Any], step: int | None = None):
        """Restores the given (default: latest) checkpoint into the template's shardings.

        `state_template`: a `TrainState` of arrays or of `jax.ShapeDtypeStruct`s with
        shardings (`lmsgd.run.Run.abstract_state`: nothing is initialized or compiled).

        Raises IncompatibleCheckpointError, naming what differs, if it was written under a
        configuration with other model/optimizer settings or state shapes.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]
        ours = config_fingerprint(config)
        theirs = meta.get("config_fingerprint", {})
        diffs = [f"{k}: checkpoint {theirs.get(k)!r} vs config {v!r}"
                 for k, v in ours.items() if theirs.get(k) != v]  # fmt: skip
        if not diffs and meta.get("state_fingerprint") != state_fingerprint(state_template):
            diffs.append("parameter or optimizer-state shapes differ")
        if diffs:
            raise IncompatibleCheckpointError(
                f"checkpoint {step} in {self.directory} was written under another "
                f"configuration ({'; '.join(diffs)}). Use a new --workdir, or the config it "
                "was written with (saved in its meta and in <workdir>/config.json)."
            )
        # The target's shardings are the new mesh's: orbax reads each array into them,
        # whatever mesh (device count, processes, sharding) wrote the checkpoint.
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return restored["state"], step

    def check_for_errors(self) -> None:
        """Raises the error of a finished background save (DiskFullError for a full disk)
        without waiting for the pending one: a failed save stops the run at the next step
        boundary, not at the next save's `wait` hundreds of steps later."""
        with self._disk_full_as_error():
            self._manager.check_for_errors()
            # orbax raises a failed commit only from `wait_until_finished`; once the save is
            # no longer in progress that returns at once, with its error if it failed.
            if self._in_flight and not self._manager.is_saving_in_progress():
                self._in_flight = False
                self._manager.wait_until_finished()

    def reached_preemption(self, step: int) -> bool:
        """True on every process once any was told to stop (multi-process runs)."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending saves are committed (raises their errors)."""
        if self._closed:  # closing waited already
            return
        with self._disk_full_as_error():
            self._in_flight = False
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Closes the manager (joins its threads); a second call does nothing."""
        if not self._closed:
            self._closed = True
            self._manager.close()


def load_state_arrays(workdir: str, step: int | None = None) -> tuple[int, Any]:
    """The saved `TrainState` of a run as host (numpy) arrays, on any machine or topology.

    For inspection, export and tests; training resumes through `Checkpointer.restore`.
    Returns (step, nested dict of arrays).
    """
    directory = os.path.join(workdir, "checkpoints")
    if step is None:
        steps = [int(p) for p in os.listdir(directory) if p.isdigit()]
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        step = max(steps)
    path = os.path.join(directory, str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    state = checkpointer.restore(path, target)
    return step, jax.tree.map(lambda x: jax.device_get(x), state)
