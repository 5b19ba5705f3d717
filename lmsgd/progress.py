"""Per-step hooks of the training loop: the steps/s report and the profiler window.

They take over what clu's ``periodic_actions`` did here (clu imports TensorFlow): the same
``steps_per_sec`` and ``uptime`` scalars in ``metrics.jsonl`` and TensorBoard, and a
``jax.profiler`` trace of a configured step range.
"""

from __future__ import annotations

import logging
import time

import jax

from lmsgd.writers import MetricWriter

log = logging.getLogger("lmsgd")


class ReportProgress:
    """Writes ``steps_per_sec`` (since the last report) and ``uptime`` (since construction)
    every ``every_steps`` steps. Called after every step; the first call only starts the clock,
    so the first report measures whole steps, not the one that was running at construction."""

    def __init__(self, writer: MetricWriter, every_steps: int):
        self._writer, self._every = writer, every_steps
        self._t0 = time.monotonic()
        self._last: tuple[int, float] | None = None  # (step, time) of the last report

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self._last is None:
            self._last = (step, now)
            return
        last_step, last_t = self._last
        if step % self._every or step == last_step or now <= last_t:
            return
        self._writer.write_scalars(
            step,
            {"steps_per_sec": (step - last_step) / (now - last_t), "uptime": now - self._t0},
        )
        self._last = (step, now)


class Profile:
    """A ``jax.profiler`` trace into ``logdir`` from after step ``first`` to after ``last``
    (so it holds steps first+1..last). A failure to start is logged, never fatal."""

    def __init__(self, logdir: str, first: int, last: int):
        self._logdir, self._first, self._last = logdir, first, last
        self._running = False

    def __call__(self, step: int) -> None:
        if self._running and step >= self._last:
            self.close()
        elif not self._running and step == self._first:
            try:
                jax.profiler.start_trace(self._logdir)
                self._running = True
            except Exception as e:  # noqa: BLE001 - a profile is never worth a failed run
                log.warning("could not start the profiler: %s", e)

    def close(self) -> None:
        """Ends a trace still running (a run that stopped inside the window)."""
        if self._running:
            self._running = False
            jax.profiler.stop_trace()
