"""Metrics people can watch: console lines, TensorBoard (clu) and a JSON-lines file.

Only process 0 writes; the others log nothing, so a pod produces one set of files.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax

log = logging.getLogger("lmsgd")


def _clean(value: Any) -> Any:
    value = float(value) if hasattr(value, "__float__") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricLogger:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self._writer = None
        self._jsonl = None
        if not self.active:
            return
        if tensorboard:
            from clu import metric_writers

            self._writer = metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)  # noqa: SIM115

    def write(self, step: int, kind: str, scalars: Mapping[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": int(step), "kind": kind, **{k: _clean(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._writer is not None:
            finite = {f"{kind}/{k}": v for k, v in record.items()
                      if k not in ("step", "kind") and isinstance(v, (int, float))}  # fmt: skip
            self._writer.write_scalars(int(step), finite)

    def info(self, msg: str, *args: Any) -> None:
        if self.active:
            log.info(msg, *args)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
