"""Test setup: 8 simulated CPU devices, set before JAX initializes its backends; the fixtures
every module may use. Shared helpers (no fixtures) are in tests/helpers.py."""

import os

# Must happen before the first `import jax` anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# XLA:CPU's code generation without LLVM's optimizations: the tests' programs are tiny, so
# compiling them costs more than running them (test_remat's step comparison: 66 s -> 24 s;
# the full suite on 2 cores: 26 min). The HLO the tests inspect is the same (a train step's
# optimized HLO, memory and cost analysis, and bench step --target's XLA:GPU table compared
# at levels 0 and 2); a test that sets its own XLA_FLAGS may leave it out.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A persistent compilation cache shared by the session's tests and the processes they start:
# many tests compile the same tiny programs (model init, train step), which on 2 cores costs
# more than running them. Results are unchanged; only XLA's compile step is skipped.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmsgd_jax_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# lmsgd before jax (tests/helpers.py imports jax): its quiet start-up (lmsgd/_quiet.py) keeps
# an installed CUDA plugin from logging on a machine without a GPU.
__import__("lmsgd")

import pathlib  # noqa: E402

import pytest  # noqa: E402
from helpers import shared_data_path  # noqa: E402

from lmsgd.data.prepare import shared_data_dir as _archive_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The folder holding cifar10-jpeg.tar.gz ($LMSGD_SHARED_DATA); skips the test where it
    is absent."""
    path = shared_data_path()
    if path is None:
        pytest.skip(f"cifar10-jpeg.tar.gz not found in {_archive_dir()} (set LMSGD_SHARED_DATA)")
    return path


# The slow tier, by module (a module's tests share its cost: subprocesses, long compiles);
# single tests elsewhere carry @pytest.mark.slow. `pytest -m "not slow"` is the fast tier.
SLOW_MODULES = {
    "test_accumulation",  # N devices x K micro-batches against N*K devices: many compiles
    "test_allreduce_scale",  # 1,024 simulated devices in subprocesses
    "test_bench_all",  # every benchmark suite end to end
    "test_bench_allreduce",  # the benchmarks: ResNet-sized programs, libtpu compiles
    "test_bench_input",
    "test_bench_optimizer",
    "test_bench_step",
    "test_data_multiprocess",  # two JAX processes
    "test_driver_edges",  # the driver's failure paths, end to end
    "test_experiments",  # the recipe comparison's runner
    "test_gpu_step_layout",  # ResNet-50 (narrow) train steps compiled by XLA:GPU
    "test_launch",  # the launchers, several with real processes
    "test_multiprocess",  # several JAX processes
    "test_notebook",  # executes the notebook
    "test_plan",  # compiles for TPU slices through libtpu
    "test_sweep",  # real sweep runs
    "test_train",  # end-to-end training, resumption, preemption
}


# Tests of the fast modules that start a training process or compile ResNet-50 (each 50 s and
# more on 2 loaded cores).
SLOW_TESTS = {
    "test_cli_errors_are_one_line_without_traceback",
    "test_missing_and_broken_config_files_are_named",
    "test_resnet50_forward_and_gradient_at_small_resolution",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        if module in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
