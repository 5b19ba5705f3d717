"""Errors a user can fix: the command line prints their message in one line, no traceback.

Everything else is a bug and keeps its traceback. `lmsgd.cli` maps these to exit codes.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment; the message names the value and what is allowed."""


class ConfigError(UserError, ValueError):
    """A config key, value or file is wrong (or does not fit the devices or the data)."""


class DataError(UserError, ValueError):
    """The dataset is missing, unprepared or holds a corrupt file."""


class WorkdirError(UserError, RuntimeError):
    """The workdir is locked by another run, not writable, or holds another run."""


class IncompatibleCheckpointError(WorkdirError, ValueError):
    """The workdir holds a checkpoint (or config.json) of another configuration."""


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced a NaN/inf loss or state; the bad state was not saved."""


class DiskFullError(UserError, OSError):
    """A write failed for lack of space or a file-size limit; earlier checkpoints are intact."""


class MissingDependencyError(UserError, ImportError):
    """An optional package this configuration needs is not installed; the message says which
    and the pip command that installs it."""
