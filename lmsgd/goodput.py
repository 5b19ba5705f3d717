"""Where a run's wall time went: start-up, compilation, training steps, evaluation,
blocking checkpoint time and data waits (goodput = the fraction in training steps).

Each part is measured, none is derived from the others: `Goodput.phase(name)` times a
section of the driver, and compilation is what JAX itself reports through `jax.monitoring`
(tracing, lowering and XLA compilation or a persistent-cache load) wherever it happens, so it
is taken out of the phase it happened in (the first evaluation compiles the eval step: that
is compilation, not evaluation). Phases nest: an inner phase's time is not counted again in
the outer one. What no phase covers is reported as `unaccounted_s`.

Hand-written: JAX reports compile durations but keeps no per-run account, and Google's
ml-goodput-measurement needs Cloud Logging; this is the ~100 lines in between.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import jax

PARTS = ("imports", "build", "restore", "compile", "train_steps", "eval", "checkpoint",
         "data_wait")  # fmt: skip
STARTUP = ("imports", "build", "restore")
LABELS = {
    "imports": "imports", "build": "build", "restore": "restore", "compile": "compile",
    "train_steps": "steps", "eval": "eval", "checkpoint": "checkpoints",
    "data_wait": "data waits",
}  # fmt: skip

# JAX's duration events for getting an executable (lmsgd counts them all as compilation).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",  # includes a persistent-cache load
)

_lock = threading.Lock()
_compile_s = {"main": 0.0}  # seconds compiled in this process's main thread so far
_registered = False


def _on_duration(event: str, duration_secs: float, **kwargs) -> None:
    # Compilation in other threads (none in lmsgd) would overlap the main thread's phases.
    if event in COMPILE_EVENTS and threading.current_thread() is threading.main_thread():
        with _lock:
            _compile_s["main"] += duration_secs


def _register() -> None:
    global _registered
    if not _registered:
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _registered = True


def compile_seconds() -> float:
    """Seconds the main thread has spent getting executables so far (JAX's own events)."""
    with _lock:
        return _compile_s["main"]


def process_start_time() -> float | None:
    """When this process started (Unix seconds, from /proc; 10 ms resolution), or None."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class Goodput:
    """Accounts a run's wall time to `PARTS`.

    Args:
      since_process_start: start the clock when the process started (the command line: the
        part before the first phase is `imports`, i.e. the interpreter, imports and parsing);
        False starts it now (a library call: `imports` is 0).
    """

    def __init__(self, since_process_start: bool = False):
        _register()
        self.parts = dict.fromkeys(PARTS, 0.0)
        self._t0 = time.monotonic()
        started = process_start_time() if since_process_start else None
        if started is not None:
            self.parts["imports"] = max(0.0, time.time() - started)
            self._t0 -= self.parts["imports"]
        self._stack: list[list[float]] = []  # per open phase: [nested s, nested compile s]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Counts the time of the block, less nested phases and compilation, as `name`."""
        if name not in PARTS:
            raise ValueError(f"unknown goodput part {name!r}; one of {PARTS}")
        start, compiled = time.monotonic(), compile_seconds()
        self._stack.append([0.0, 0.0])  # nested phases' elapsed and compile seconds
        try:
            yield
        finally:
            children, children_compile = self._stack.pop()
            elapsed = time.monotonic() - start
            compile_s = compile_seconds() - compiled  # includes the nested phases'
            own_compile = compile_s - children_compile  # theirs is counted already
            self.parts["compile"] += own_compile
            self.parts[name] += max(0.0, elapsed - children - own_compile)
            if self._stack:
                self._stack[-1][0] += elapsed
                self._stack[-1][1] += compile_s

    def wall_s(self) -> float:
        return time.monotonic() - self._t0

    def summary(self) -> dict:
        """`{'wall_s', 'parts_s': {part: s}, 'startup_s', 'unaccounted_s',
        'train_steps_fraction'}` (seconds)."""
        wall = self.wall_s()
        parts = {k: round(v, 3) for k, v in self.parts.items()}
        return {
            "wall_s": round(wall, 3),
            "parts_s": parts,
            "startup_s": round(sum(self.parts[k] for k in STARTUP), 3),
            "unaccounted_s": round(wall - sum(self.parts.values()), 3),
            "train_steps_fraction": round(self.parts["train_steps"] / wall, 4) if wall else 0.0,
        }

    def line(self) -> str:
        """One log line: 'time: 61.2 s = start-up 8.1 (imports 3.2, build 2.0, restore 2.9)
        + compile 12.0 + steps 30.1 (49%) + ...'."""
        s = self.summary()
        p = s["parts_s"]
        startup = ", ".join(f"{LABELS[k]} {p[k]:.1f}" for k in STARTUP)
        rest = " + ".join(
            f"{LABELS[k]} {p[k]:.1f}" + (f" ({s['train_steps_fraction']:.0%})"
                                         if k == "train_steps" else "")
            for k in PARTS if k not in STARTUP
        )  # fmt: skip
        return (f"time: {s['wall_s']:.1f} s = start-up {s['startup_s']:.1f} ({startup}) + "
                f"{rest} + other {s['unaccounted_s']:.1f}")  # fmt: skip
