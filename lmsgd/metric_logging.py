"""Metric writers: the console (`lmsgd.console`), TensorBoard and a JSON-lines file.

Every scalar goes to TensorBoard and `metrics.jsonl`; the console shows the few a person
scans. Process 0 writes files; the other processes only print their console lines (as in
Flax's ImageNet example), so a pod produces one set of files. Scalars are named
`<kind>/<name>` (`train/loss`, `eval/top1`); `metrics.jsonl` holds one record per step and
kind: `{"step": 50, "kind": "train", "loss": ..., ...}`.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

from lmsgd.console import ConsoleWriter
from lmsgd.console import format_duration as format_duration
from lmsgd.tensorboard_writer import TensorBoardWriter
from lmsgd.workdir import is_remote, write_text
from lmsgd.writers import MetricWriter, MultiWriter

log = logging.getLogger("lmsgd")

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    value = float(value) if hasattr(value, "__float__") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


class JsonlWriter(MetricWriter):
    """Appends scalars to a JSON-lines file, one record per (step, kind).

    A name `kind/key` goes to the record of that kind; names without a kind to kind 'progress'.
    """

    def __init__(self, path: str, remote_write_interval_s: float = 30.0):
        # An object store (gs://) cannot append: a remote file is kept in memory and written
        # whole at most every `remote_write_interval_s` seconds and on flush/close.
        if is_remote(path):
            self._path = epath.Path(path)
            self._lines = self._path.read_text().splitlines(True) if self._path.exists() else []
            self._interval, self._dirty = remote_write_interval_s, False
            self._written_at = time.monotonic()
            self._file = None
        else:
            self._file = open(path, "a", buffering=1)  # noqa: SIM115 (closed by close())

    def _write_line(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line)
            return
        self._lines.append(line)
        self._dirty = True
        if time.monotonic() - self._written_at >= self._interval:
            self.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        records: dict[str, dict[str, Any]] = collections.defaultdict(dict)
        for name, value in scalars.items():
            kind, _, key = name.rpartition("/")
            records[kind or "progress"][key] = _clean(value)
        for kind, values in records.items():
            self._write_line(json.dumps({"step": int(step), "kind": kind, **values}) + "\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        elif self._dirty:
            self._path.write_text("".join(self._lines))
            self._written_at, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self.flush()


def create_writer(
    workdir: str,
    *,
    tensorboard: bool = True,
    total_steps: int | None = None,
    steps_per_epoch: int = 1,
) -> MetricWriter:
    """Console + TensorBoard + `metrics.jsonl` on process 0; the console only elsewhere.

    The console (`lmsgd.console.ConsoleWriter`) needs the run's `total_steps`; without it
    nothing is printed. Synchronous, so that a failed write (e.g. a full disk) surfaces in the
    loop where it can be reported, not in a background thread.
    """
    writers: list[MetricWriter] = []
    if total_steps is not None:
        writers.append(ConsoleWriter(total_steps, steps_per_epoch))
    if jax.process_index() == 0:
        if tensorboard:
            writers.append(TensorBoardWriter(os.path.join(workdir, "tensorboard")))
        writers.append(JsonlWriter(os.path.join(workdir, METRICS_FILE)))
    return MultiWriter(writers)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of `<workdir>/metrics.jsonl` (empty if there is none)."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_metrics_after(workdir: str, step: int) -> int:
    """Removes records after `step` (a resumed run writes them again); returns how many.

    Rewrites the file atomically (temporary file + rename; one object write on `gs://`).
    """
    records = read_metrics(workdir)
    kept = [r for r in records if r["step"] <= step]
    if len(kept) == len(records):
        return 0
    write_text(workdir, METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)
