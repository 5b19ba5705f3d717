"""Test setup: 8 simulated CPU devices, set before JAX initializes its backends."""

import os

# Must happen before the first `import jax` anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """`../shared/data` (or $LMSGD_SHARED_DATA); skips the test where it is absent."""
    path = pathlib.Path(os.environ.get("LMSGD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "cifar10-jpeg.tar.gz").exists():
        pytest.skip(f"shared data not found at {path} (set LMSGD_SHARED_DATA)")
    return path
