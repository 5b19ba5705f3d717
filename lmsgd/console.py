"""What a person reads while a run trains: one line per logging interval, one per evaluation,
and a summary at the end.

    12:00:05 step  25/200  epoch   5.0  loss 0.2822  top-1 91.0%  lr 0.05  alpha_sgd 0.660
             1,814 img/s (227/device)  ETA 0m25s                      (one line, folded here)
    12:00:06 eval  step 25  epoch   5.0  top-1 94.17%  top-5 100.00%  loss 0.1559  (360 examples)

`ConsoleWriter` is a `lmsgd.writers.MetricWriter`: the driver writes every scalar to it, to
TensorBoard and to `metrics.jsonl` alike, and it picks the few a person scans (``train/*`` and
``eval/*``); everything else (``steps_per_sec``, ``uptime``, norms) stays in the files. On a
terminal the training line is redrawn in place behind a progress bar and kept at each
evaluation; in a log file (not a terminal) every interval is its own line.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from lmsgd.writers import MetricWriter

log = logging.getLogger("lmsgd")

BAR_WIDTH = 20


def format_duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s``: a duration in whole seconds."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def train_line(
    step: int, total_steps: int, values: Mapping[str, float], eta_s: float | None
) -> str:
    """The interval's line from the driver's ``train/*`` scalars (names without ``train/``).

    ``top-1`` is the accuracy on the interval's last training batch; ``img/s`` is global, then
    per device.
    A scalar the run does not produce (``alpha_sgd`` outside rmsprop_warmup) is left out.
    """
    width = len(str(total_steps))
    parts = [f"step {step:>{width}}/{total_steps}"]
    if "epoch" in values:
        parts.append(f"epoch {values['epoch']:5.1f}")
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    if "accuracy" in values:
        parts.append(f"top-1 {_percent(values['accuracy'])}")
    if "learning_rate" in values:
        parts.append(f"lr {values['learning_rate']:.4g}")
    if "alpha_sgd" in values:
        parts.append(f"alpha_sgd {values['alpha_sgd']:.3f}")
    if "images_per_s" in values:
        rate = f"{values['images_per_s']:,.0f} img/s"
        if "images_per_s_per_device" in values:  # what a chip's roofline is compared with
            rate += f" ({values['images_per_s_per_device']:,.0f}/device)"
        parts.append(rate)
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return "  ".join(parts)


def eval_line(step: int, values: Mapping[str, float], epoch: float | None = None) -> str:
    """An evaluation's line from its ``eval/*`` scalars (names without ``eval/``)."""
    parts = [f"eval  step {step}"]
    if epoch is not None:
        parts.append(f"epoch {epoch:5.1f}")
    for key, label in (("top1", "top-1"), ("top5", "top-5")):
        if key in values:
            parts.append(f"{label} {100 * values[key]:.2f}%")
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    if "num_examples" in values:
        parts.append(f"({int(values['num_examples']):,} examples)")
    return "  ".join(parts)


def summary_line(summary: Mapping[str, Any], workdir: str) -> str:
    """The run's last line: where it ended, how long it took, what it reached, where it is."""
    trained = summary["step"] - summary.get("resumed_from_step", 0)
    parts = [
        f"done: {summary['step']} steps ({summary['epochs']:g} epochs)",
        f"trained {trained} in {format_duration(summary['train_wall_time_s'])}"
        + (f" at {summary['images_per_s']:,.0f} img/s" if trained else ""),
    ]
    if summary.get("eval_top1") is not None:
        parts.append(
            f"eval top-1 {100 * summary['eval_top1']:.2f}% top-5 "
            f"{100 * summary['eval_top5']:.2f}% on {summary['eval_examples']:,} examples"
        )
    parts.append(f"{workdir}/summary.json")
    return "; ".join(parts)


class _Bar:
    """The in-place line on a terminal; other log lines first end it (see `BarAwareFilter`)."""

    stream: TextIO | None = None

    @classmethod
    def draw(cls, stream: TextIO, text: str) -> None:
        # A line wider than the terminal wraps, and "\r" cannot return over the wrap.
        width = shutil.get_terminal_size((120, 24)).columns
        stream.write("\r\x1b[K" + text[: max(width - 1, 20)])
        stream.flush()
        cls.stream = stream

    @classmethod
    def end(cls) -> None:
        if cls.stream is not None:
            cls.stream.write("\n")
            cls.stream.flush()
            cls.stream = None


class BarAwareFilter(logging.Filter):
    """On a log handler: ends a progress bar drawn in place before the record is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        _Bar.end()
        return True


def _bar(fraction: float) -> str:
    filled = int(round(BAR_WIDTH * min(max(fraction, 0.0), 1.0)))
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


class ConsoleWriter(MetricWriter):
    """The console's writer (see the module docstring).

    Args:
      total_steps: the run's last step (for ``step/total``, the bar and the ETA).
      steps_per_epoch: to place an evaluation in epochs.
      stream: where a terminal's bar is drawn (default: stderr, with the log lines).
      tty: draw the bar in place (default: whether `stream` is a terminal).
    """

    def __init__(
        self,
        total_steps: int,
        steps_per_epoch: int,
        *,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ):
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._first: tuple[int, float] | None = None  # (step, time) of the first interval

    def _eta(self, step: int) -> float | None:
        """Remaining steps at the pace since the first interval (evaluations and checkpoints
        included; the first interval, which runs the step for the first time, not); None on
        the first line."""
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)
            return None
        first_step, first_t = self._first
        if step <= first_step:
            return None
        return (self.total_steps - step) * (now - first_t) / (step - first_step)

    def _emit(self, text: str) -> None:
        _Bar.end()
        log.info("%s", text)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        train = {k[6:]: float(v) for k, v in scalars.items() if k.startswith("train/")}
        evals = {k[5:]: float(v) for k, v in scalars.items() if k.startswith("eval/")}
        if train:
            line = train_line(step, self.total_steps, train, self._eta(step))
            if self._tty:
                stamp = time.strftime("%H:%M:%S")
                _Bar.draw(self._stream, f"{stamp} {_bar(step / self.total_steps)} {line}")
            else:
                self._emit(line)
        if evals:
            # On a terminal the bar's line stays: one training line per evaluation period.
            self._emit(eval_line(step, evals, step / self.steps_per_epoch))

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        _Bar.end()
