"""The metric-writer interface the driver writes to, and a writer that fans out to several.

lmsgd writes scalars only, so this is all of clu's ``MetricWriter`` it needs (clu's writers
import TensorFlow, which the core path must not).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any


class MetricWriter(abc.ABC):
    """Takes ``{name: scalar}`` at a step; ``flush`` makes them durable, ``close`` ends it."""

    @abc.abstractmethod
    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    def flush(self) -> None:  # noqa: B027 - nothing to flush unless a writer buffers
        pass

    def close(self) -> None:
        self.flush()


class MultiWriter(MetricWriter):
    """Writes every scalar to each of ``writers``, in order."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self._writers = tuple(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        for w in self._writers:
            w.write_scalars(step, scalars)

    def flush(self) -> None:
        for w in self._writers:
            w.flush()

    def close(self) -> None:
        for w in self._writers:
            w.close()
