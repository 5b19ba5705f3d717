"""Batch iterators that know their position, and finding dropped (corrupt) examples.

Shared by the tf.data and the in-memory pipelines; no TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np

from lmsgd.data import sharding as shard_lib
from lmsgd.errors import DataError

log = logging.getLogger(__name__)

_MAX_RECORDED = 100  # Skipped paths kept on the iterator (all are counted and logged).


class BatchIterator:
    """Iterator of batch dicts that knows its position and what it skipped.

    Attributes:
      epoch, step: position of the *next* batch (what to store in a checkpoint to resume).
      num_skipped: corrupt/unreadable images skipped so far (skip_corrupt=True).
      skipped: their paths (the first 100).
      steps_per_epoch: batches per epoch (None for evaluation).
    """

    def __init__(
        self,
        stream: Iterator[dict],
        *,
        tracker: GapTracker | None = None,
        start_epoch: int = 0,
        start_step: int = 0,
        steps_per_epoch: int | None = None,
    ):
        self._stream = stream
        self._tracker = tracker
        self._start = (start_epoch, start_step)
        self._served = 0
        self.steps_per_epoch = steps_per_epoch

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict:
        batch = next(self._stream)
        self._served += 1
        return batch

    @property
    def epoch(self) -> int:
        return self._position()[0]

    @property
    def step(self) -> int:
        return self._position()[1]

    def _position(self) -> tuple[int, int]:
        e, s = self._start
        if not self.steps_per_epoch:
            return e, s + self._served
        e, s = divmod(e * self.steps_per_epoch + s + self._served, self.steps_per_epoch)
        return e, s

    @property
    def num_skipped(self) -> int:
        return self._tracker.count if self._tracker else 0

    @property
    def skipped(self) -> list[str]:
        return list(self._tracker.recorded) if self._tracker else []


class GapTracker:
    """Finds dropped (corrupt) examples as gaps in the (epoch, pos) sequence of a stream.

    ``per_epoch``: examples per epoch of this process when known (index sources), which also
    finds a gap at the very end of an epoch; ``None`` (TFDS) checks within epochs only.
    ``end``: for evaluation, the number of real examples, checked when padding begins.
    """

    def __init__(
        self,
        describe: Callable[[int, int], str],
        *,
        skip: bool,
        per_epoch: int | None = None,
        start: tuple[int, int] = (0, 0),
        end: int | None = None,
    ):
        self.describe = describe
        self.skip = skip
        self.per_epoch = per_epoch
        self.epoch, self.pos = start
        self.end = end
        self.count = 0
        self.recorded: list[str] = []

    def _missing(self, epoch: int, pos: int) -> None:
        what = self.describe(epoch, pos)
        if not self.skip:
            raise DataError(
                f"unreadable or corrupt image: {what}. Remove or replace the file, or set "
                "config.data.skip_corrupt=True to skip such files (they are counted)"
            )
        self.count += 1
        if len(self.recorded) < _MAX_RECORDED:
            self.recorded.append(what)
        log.warning("skipped unreadable or corrupt image %s (%d skipped so far)", what, self.count)

    def _advance(self) -> None:
        self.pos += 1
        if self.per_epoch is not None and self.pos == self.per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0

    def check(self, epochs: np.ndarray, positions: np.ndarray) -> None:
        """Account for one batch; ``positions`` < 0 are evaluation padding."""
        n = len(positions)
        if (
            n
            and positions[-1] >= 0
            and np.all(epochs == self.epoch)
            and np.array_equal(positions, np.arange(self.pos, self.pos + n))
            and (self.per_epoch is None or self.pos + n < self.per_epoch)
        ):
            self.pos += n  # Fast path: no gap, no epoch boundary.
            return
        for e, q in zip(epochs.tolist(), positions.tolist()):
            if q < 0:  # Padding: all real examples must have been seen.
                if self.end is not None:
                    while self.pos < self.end:
                        self._missing(self.epoch, self.pos)
                        self.pos += 1
                self.end = None
                continue
            if self.per_epoch is None and e != self.epoch:
                self.epoch, self.pos = e, 0  # Unknown epoch length: start counting anew.
            while (self.epoch, self.pos) < (e, q):
                self._missing(self.epoch, self.pos)
                self._advance()
            self._advance()

    def finish(self) -> None:
        """End of an evaluation stream with no padding at all."""
        self.check(np.zeros(1, np.int64), np.full(1, -1, np.int64))


def checked(
    stream: Iterator[dict], tracker: GapTracker, sharding, size: int, eval_mode: bool = False
) -> Iterator[dict]:
    """Check for gaps, drop bookkeeping keys, convert to global arrays, prefetch."""

    def gen():
        for batch in stream:
            tracker.check(batch.pop("epoch"), batch.pop("pos"))
            yield shard_lib.to_global(batch, sharding)
        if eval_mode:
            tracker.finish()

    return shard_lib.prefetch(gen(), size)
