"""Multi-process start-up through JAX's own distributed runtime (never a home-made one)."""

from __future__ import annotations

import logging
import os
import pathlib
import uuid

import jax

log = logging.getLogger(__name__)

# The contract for explicit setups (Kubernetes, launch/local_multiprocess.sh).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def detected_multiprocess_environment() -> str | None:
    """Names the multi-process environment this process runs in, or None."""
    if os.environ.get(COORDINATOR_ENV):
        return "explicit (JAX_COORDINATOR_ADDRESS)"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
        return "Cloud TPU pod"
    return None


def maybe_initialize(mode: str | bool = "auto") -> None:
    """Calls `jax.distributed.initialize` once when asked or when an environment is detected.

    With JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set, those are passed on;
    otherwise JAX detects SLURM, Cloud TPU and other clusters by itself.
    """
    if mode is False or jax.distributed.is_initialized():
        return
    env = detected_multiprocess_environment()
    if mode == "auto" and env is None:
        return
    kwargs = {}
    if os.environ.get(COORDINATOR_ENV):
        kwargs = dict(
            coordinator_address=os.environ[COORDINATOR_ENV],
            num_processes=int(os.environ[NUM_PROCESSES_ENV]),
            process_id=int(os.environ[PROCESS_ID_ENV]),
            # Everything is given: skip JAX's own cluster probing (e.g. the Kubernetes API).
            cluster_detection_method="deactivate",
        )
    log.info("initializing jax.distributed (%s) %s", env or "requested", kwargs)
    jax.distributed.initialize(**kwargs)


def check_shared_workdir(workdir: str) -> None:
    """With several processes, fails clearly if the workdir is not one shared directory.

    Process 0 writes a token; every other process must see it. (Checkpoints of a multi-host
    run must land in one place: a shared filesystem or a bucket.)
    """
    if jax.process_count() == 1 or "://" in workdir:  # buckets are shared by construction
        return
    from jax.experimental import multihost_utils

    token = multihost_utils.broadcast_one_to_all(
        jax.numpy.asarray(uuid.uuid4().int % (2**31), jax.numpy.int32)
    )
    marker = pathlib.Path(workdir) / f".shared_check_{int(token)}"
    if jax.process_index() == 0:
        marker.write_text("lmsgd")
    multihost_utils.sync_global_devices("lmsgd_shared_workdir_written")
    seen = marker.exists()
    multihost_utils.sync_global_devices("lmsgd_shared_workdir_checked")
    if jax.process_index() == 0:
        marker.unlink(missing_ok=True)
    if not seen:
        raise RuntimeError(
            f"--workdir {workdir} is not shared between processes: process "
            f"{jax.process_index()} cannot see a file written there by process 0. Use a "
            "shared filesystem (NFS, Lustre) or a gs:// bucket for multi-host runs."
        )
