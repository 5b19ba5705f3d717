"""A quiet start-up: imported first by `lmsgd/__init__.py`, so every entry point gets it.

Without it a CPU run starts with lines nobody asked for: TensorFlow's C++ banner ("oneDNN
custom operations are on...", "All log messages before absl::InitializeLog()..."), and, with
libtpu or the CUDA plugin installed (the `plan` and `test` extras install both), JAX probing
accelerators that are not there ("Failed to find host bounds for accelerator type", a
TPU_WORKER_HOSTNAMES error, a CUDA plugin traceback).

Two environment defaults fix most of it, and neither overrides what the user set:

- ``TF_CPP_MIN_LOG_LEVEL=2``: TensorFlow's C++ logs errors only (it only feeds the input
  pipeline here);
- ``JAX_PLATFORMS=cpu``, only where the machine has no accelerator device file (no
  ``/dev/nvidia<N>``, ``/dev/accel<N>``, ``/dev/vfio/<N>`` or ``/dev/kfd``): a machine with
  GPUs or TPUs keeps JAX's own choice of backend.

TensorFlow 2.21 prints its oneDNN banner through absl below that setting's reach: the import
of `tensorflow`, whoever triggers it (tfds, our tf.data pipelines), runs with the process's
stderr captured, and every captured line that is not the banner is written back.

The CUDA plugin logs "Could not find cuda drivers" from C++ while `import jax` loads it and
again when JAX registers it, whatever JAX_PLATFORMS says and below TF_CPP_MIN_LOG_LEVEL's
reach. On a machine without an accelerator, where the plugin is installed, JAX is therefore
imported and its plugins registered here with the process's stderr captured; every captured
line that is not that known noise is written back. (The planner still compiles for GPUs and
TPUs it does not have through the plugins' deviceless compilers, under ``JAX_PLATFORMS=cpu``.)
"""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

ACCELERATOR_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*", "/dev/kfd")
CUDA_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin")
# What the CUDA plugin's C++ side prints on a machine without CUDA (absl's preamble included).
PLUGIN_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|cudart_stub\.cc|Could not find cuda drivers"
)
TF_NOISE = re.compile(r"All log messages before absl::InitializeLog|oneDNN custom operations")


def accelerator_present(patterns=ACCELERATOR_DEVICE_FILES) -> bool:
    """Whether this machine shows a GPU or TPU device file. (Not TPU_* variables: `import
    jax` with libtpu installed sets them itself on any machine.)"""
    return any(glob.glob(pattern) for pattern in patterns)


def quiet_environment(environ=os.environ, *, has_accelerator: bool | None = None) -> None:
    """Sets the defaults above in `environ` (only those the user left unset)."""
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if has_accelerator is None:
        has_accelerator = accelerator_present()
    if has_accelerator:
        return
    if "JAX_PLATFORMS" not in environ:
        environ["JAX_PLATFORMS"] = "cpu"
        _tell_jax_if_imported()
    # Also where the user chose the platform (a notebook's JAX_PLATFORMS=cpu): the plugin
    # loads with `import jax` whatever it says. Only its known lines are dropped.
    if environ is os.environ and any(importlib.util.find_spec(n) for n in CUDA_PLUGINS):
        with _stderr_without(PLUGIN_NOISE):
            _load_jax_and_plugins()


@contextlib.contextmanager
def _stderr_without(noise: re.Pattern):
    """Captures file descriptor 2 (C++ logs too) and writes back the lines `noise` misses."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(True)
                if not noise.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def _load_jax_and_plugins() -> None:
    """Imports jax and loads each installed CUDA plugin's PJRT library now, so that the C++
    lines its loading prints fall inside the caller's capture. JAX registers the plugin later
    (at its first backend) from the same file; the dynamic loader hands back the library
    already loaded, and nothing is printed again. (JAX's own plugin discovery is private.)"""
    import ctypes
    import pathlib

    import jax  # noqa: F401

    spec = importlib.util.find_spec("jax_plugins")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for library in sorted(pathlib.Path(folder).glob("xla_cuda*/*.so")):
            # A broken install raises again at JAX's registration, unfiltered.
            with contextlib.suppress(OSError):
                ctypes.CDLL(str(library))


def _tell_jax_if_imported() -> None:
    """A script that imported jax before lmsgd read JAX_PLATFORMS already: set the option
    itself. Before JAX's first backend this decides the platform; afterwards it changes
    nothing (JAX keeps the backends it made), so it is always safe to set."""
    jax = sys.modules.get("jax")
    if jax is None or not hasattr(jax, "config"):
        return
    if not jax.config.jax_platforms:
        jax.config.update("jax_platforms", "cpu")


class _QuietImport(importlib.abc.MetaPathFinder):
    """Imports the named top-level modules with stderr filtered through `noise`; nothing else
    about the import changes (the module's spec and loader are the real ones afterwards)."""

    def __init__(self, names: tuple[str, ...], noise: re.Pattern):
        self.names, self.noise = names, noise

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        sys.meta_path.remove(self)  # once per process: later imports are plain
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader, self.noise)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, noise: re.Pattern):
        self.loader, self.noise = loader, noise

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        with _stderr_without(self.noise):
            self.loader.exec_module(module)


def _drop_orbax_item_metadata_warning(record) -> bool:
    """orbax warns "Metadata file does not exist: .../<step>/state/_CHECKPOINT_METADATA" when
    one item of a CheckpointManager step is opened on its own (`load_state_arrays`): that file
    lives one folder up, in the step, by design. Nothing is missing; the line only alarms."""
    message = str(record.msg)
    return not (
        message.startswith("Metadata file does not exist")
        and "_CHECKPOINT_METADATA" in (message % record.args if record.args else message)
    )


quiet_environment()
logging.getLogger("absl").addFilter(_drop_orbax_item_metadata_warning)
if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport(("tensorflow",), TF_NOISE))
