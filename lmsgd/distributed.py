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


def _jax_cluster_environments() -> list[type]:
    """JAX's own cluster environments, in the order `jax.distributed.initialize()` probes them.

    Private API (`jax._src.clusters.ClusterEnv`, checked against jax 0.10.2), used here and
    nowhere else: JAX has no public "which cluster is this" query, and deciding with JAX's
    own probes means the decision matches what `initialize()` then does (SLURM under srun,
    Open MPI, Cloud TPU VMs through the metadata server, GKE TPU pods, Kubernetes) instead
    of a copy that drifts (the copy this replaced saw TPU VM pods only through the GKE
    variable TPU_WORKER_HOSTNAMES and never initialized on `launch/tpu_pod.sh` slices).
    Opt-in-only environments (mpi4py) are skipped, as `initialize()` skips them by default.
    """
    from jax._src import clusters

    return [env for env in clusters.ClusterEnv._cluster_types if not env.opt_in_only_method]


def detected_cluster() -> tuple[str, int | None] | None:
    """The first cluster environment JAX recognizes, with its process count, or None.

    Returns:
      `(name, processes)`: `name` is JAX's class name (e.g. 'SlurmCluster', 'GceTpuCluster',
      'GkeTpuCluster'); `processes` is what JAX would pass as `num_processes`, or None
      where JAX recognizes the environment but cannot count its processes (then
      `jax.distributed.initialize()` would fail the same way). On a Cloud TPU VM both
      queries read the metadata server (JAX's code, with its retries).
    """
    for env in _jax_cluster_environments():
        if env.is_env_present():
            try:
                return env.__name__, int(env.get_process_count())
            except Exception as e:  # noqa: BLE001 - any failure of JAX's probe means "unknown"
                log.warning("%s detected but its process count is unknown: %r", env.__name__, e)
                return env.__name__, None
    return None


def detected_multiprocess_environment() -> str | None:
    """Names the multi-process environment this process runs in, or None.

    Explicit `JAX_COORDINATOR_ADDRESS` first (whatever `JAX_NUM_PROCESSES` says: the user
    asked); otherwise an environment JAX itself recognizes *and* counts more than one
    process in. A single-task SLURM job, a single-host TPU VM (v4-8, v5p-8) or an
    environment whose process count JAX cannot read is not multi-process: `auto` does not
    initialize there (`jax.distributed.initialize()` would have nothing to coordinate, or
    would fail on the same missing count).
    """
    if os.environ.get(COORDINATOR_ENV):
        return "explicit (JAX_COORDINATOR_ADDRESS)"
    found = detected_cluster()
    if found is None:
        return None
    name, processes = found
    if processes is None or processes <= 1:
        log.info("%s with %s process(es): not initializing jax.distributed", name, processes)
        return None
    return f"{name} ({processes} processes)"


def maybe_initialize(
    mode: str | bool = "auto", *, heartbeat_timeout_seconds: int | None = None
) -> str | None:
    """Calls `jax.distributed.initialize` once when asked or when an environment is detected.

    Args:
      mode: 'auto' (initialize when `detected_multiprocess_environment()` names one), True
        (always; JAX detects the cluster itself, or the explicit variables are used) or
        False (never).
    Returns:
      What was initialized (the environment, 'requested'), or None when nothing was.

    With JAX_COORDINATOR_ADDRESS set, it and JAX_NUM_PROCESSES / JAX_PROCESS_ID are passed on
    and JAX's own probing is switched off; otherwise JAX detects SLURM, Cloud TPU and the
    other clusters by itself, the same way `detected_cluster` just did.

    `heartbeat_timeout_seconds` (config.heartbeat_timeout_seconds; None: JAX's 100 s): after
    this long without a heartbeat from a process, JAX's coordination service declares it dead
    and ends every other process (with an error naming the dead task). A rerun of the same
    commands then resumes from the last committed checkpoint (docs/resuming.md).
    """
    if mode is False or jax.distributed.is_initialized():
        return None
    env = detected_multiprocess_environment()
    if mode == "auto" and env is None:
        return None
    kwargs = {}
    if os.environ.get(COORDINATOR_ENV):
        missing = [v for v in (NUM_PROCESSES_ENV, PROCESS_ID_ENV) if not os.environ.get(v)]
        if missing:
            raise ValueError(f"{COORDINATOR_ENV} is set but {', '.join(missing)} is not")
        kwargs = dict(
            coordinator_address=os.environ[COORDINATOR_ENV],
            num_processes=int(os.environ[NUM_PROCESSES_ENV]),
            process_id=int(os.environ[PROCESS_ID_ENV]),
            # Everything is given: skip JAX's own cluster probing (e.g. the Kubernetes API).
            cluster_detection_method="deactivate",
        )
    if heartbeat_timeout_seconds is not None:
        kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout_seconds)
    log.info("initializing jax.distributed (%s) %s", env or "requested", kwargs)
    jax.distributed.initialize(**kwargs)
    return env or "requested"


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
