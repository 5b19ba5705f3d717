"""Failures stay quiet (issue 23): a full disk during a checkpoint write ends in a few lines
with the clear error last; the multi-host heartbeat timeout is a config value JAX gets."""

import inspect
import os
import pathlib
import resource
import subprocess
import sys

import jax
import pytest

from lmsgd import distributed
from lmsgd.config import base_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_full_disk_during_a_checkpoint_write_ends_in_a_few_lines_with_the_error_last(tmp_path):
    # The default model's checkpoint (~1 MB of OCDBT data, in files of 90-300 KB: their split
    # depends on the tensorstore version) outgrows a 64 KB file-size limit; metrics.jsonl and
    # config.json (a few KB) stay far below it. Asynchronous saves (the default): the failure
    # happens in orbax's writer threads.
    limit = 64 * 1024
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", "--config=configs/default.py",
         f"--workdir={tmp_path}", "--config.num_epochs=4", "--config.checkpoint.every_steps=5",
         "--config.logging.tensorboard=False", "--config.compilation_cache=",
         "--config.eval_every_epochs=100"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "XLA_FLAGS": "", "JAX_COMPILATION_CACHE_DIR": ""},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )  # fmt: skip
    lines = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 1, "\n".join(lines[-30:])
    first = next(i for i, line in enumerate(lines) if "too large" in line.lower())
    after = lines[first + 1 :]
    assert len(after) <= 20, "\n".join(after)
    assert lines[-1].startswith("lmsgd.train: error: could not write under ")
    assert "file too large" in lines[-1] and "Earlier checkpoints are intact" in lines[-1]
    text = "\n".join(lines)
    assert "Traceback" not in text and "Event loop is closed" not in text


def test_heartbeat_timeout_reaches_jax_distributed_initialize(monkeypatch):
    # The keyword exists in the installed JAX under this name.
    assert "heartbeat_timeout_seconds" in inspect.signature(jax.distributed.initialize).parameters
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    distributed.maybe_initialize(
        "auto", heartbeat_timeout_seconds=base_config().heartbeat_timeout_seconds
    )
    assert calls[0]["heartbeat_timeout_seconds"] == 60
    distributed.maybe_initialize(True, heartbeat_timeout_seconds=7)
    assert calls[1]["heartbeat_timeout_seconds"] == 7


@pytest.mark.parametrize("value", [0, -5, 1.5, "60"])
def test_bad_heartbeat_timeout_is_one_line(value):
    from lmsgd.config import validate_config
    from lmsgd.errors import ConfigError

    config = base_config()
    with config.ignore_type():
        config.heartbeat_timeout_seconds = value
    with pytest.raises(ConfigError, match="config.heartbeat_timeout_seconds"):
        validate_config(config)


def test_orphaned_orbax_write_errors_are_dropped_from_asyncio_log_only(monkeypatch):
    """asyncio's "Task exception was never retrieved" for a write that failed inside orbax is
    dropped (the caller reports the failure once); the same message for other code, and any
    other asyncio record, passes."""
    import logging
    import os

    from lmsgd.checkpointing import _OrbaxOrphanedWriteErrors

    def raised_in(filename: str):
        code = compile("def write():\n    raise ValueError('OUT_OF_RANGE: Error writing')\n",
                       filename, "exec")  # fmt: skip
        namespace: dict = {}
        exec(code, namespace)
        try:
            namespace["write"]()
        except ValueError as e:
            return (ValueError, e, e.__traceback__)

    def record(message: str, exc_info) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, "x.py", 1, message, None, exc_info)

    orbax = raised_in(os.path.join("site-packages", "orbax", "checkpoint", "_src", "s.py"))
    other = raised_in(os.path.join("site-packages", "mine", "s.py"))
    f = _OrbaxOrphanedWriteErrors()
    monkeypatch.delenv("LMSGD_DEBUG", raising=False)
    assert not f.filter(record("Task exception was never retrieved", orbax))
    assert not f.filter(record("_GatheringFuture exception was never retrieved", orbax))
    assert f.filter(record("Task exception was never retrieved", other))
    assert f.filter(record("Executing <Task> took 2.0 seconds", orbax))
    monkeypatch.setenv("LMSGD_DEBUG", "1")
    assert f.filter(record("Task exception was never retrieved", orbax))
