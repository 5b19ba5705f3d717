"""TensorBoard scalars without TensorFlow: event files through the `tensorboard` package.

The records are framed by tensorboard's own ``RecordWriter`` (length, masked CRC32C) and hold
its ``Event``/``Summary`` protos, so TensorBoard reads them as it reads ``tf.summary`` files.
tensorboard's ``EventFileWriter`` is not used: it opens files through ``tensorboard.compat.tf``,
which imports TensorFlow whenever it is installed (seconds of start-up, and the one import
the core path avoids). The file is named as TensorFlow names it, so TensorBoard finds it.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from lmsgd.workdir import is_remote
from lmsgd.writers import MetricWriter

_FILE_VERSION = "brain.Event:2"  # What TensorBoard expects first in an event file.
_counter = itertools.count()  # Two writers of one process in one second get distinct files.


def event_file_name(now: float | None = None) -> str:
    """``events.out.tfevents.<seconds>.<host>.<pid>.<n>``: TensorFlow's naming."""
    now = time.time() if now is None else now
    return (
        f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_counter)}"
    )


def _open(logdir: str) -> tuple[str, BinaryIO]:
    path = os.path.join(logdir, event_file_name())
    if is_remote(logdir):  # gs:// and the like: through epath (needs the store's client).
        epath.Path(logdir).mkdir(parents=True, exist_ok=True)
        return path, epath.Path(path).open("wb")
    os.makedirs(logdir, exist_ok=True)
    return path, open(path, "wb")  # noqa: SIM115 (closed by close())


class TensorBoardWriter(MetricWriter):
    """Writes every scalar as a TensorBoard scalar (``simple_value``) to a new event file."""

    def __init__(self, logdir: str):
        self.path, self._file = _open(logdir)
        self._records = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version=_FILE_VERSION))
        self.flush()

    def _write(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = [
            summary_pb2.Summary.Value(tag=name, simple_value=float(value))
            for name, value in scalars.items()
        ]
        summary = summary_pb2.Summary(value=values)
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
