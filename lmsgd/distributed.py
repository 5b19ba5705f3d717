"""Multi-process start-up through JAX's own distributed runtime (never a home-made one)."""

from __future__ import annotations

import logging
import os
import pathlib
import urllib.error
import urllib.request
import uuid

import jax

from lmsgd._quiet import accelerator_present

log = logging.getLogger(__name__)

# The contract for explicit setups (Kubernetes, launch/local_multiprocess.sh).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


# Where JAX's own detection looks, read here from the same public signals (see `detected_cluster`).
SLURM_STEP_ENV = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
OMPI_ORTE_URI_ENV = "OMPI_MCA_orte_hnp_uri"  # set by mpirun/mpiexec of Open MPI < 5 (ORTE)
OMPI_WORLD_SIZE_ENV = "OMPI_COMM_WORLD_SIZE"
GKE_WORKERS_ENV = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")  # the first one set counts
TPU_DEVICE_FILES = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
METADATA_URL = "http://{host}/computeMetadata/v1/instance/attributes/{key}"
METADATA_TIMEOUT_S = 3.0


def _tpu_present() -> bool:
    """Whether this machine shows a TPU device file (what JAX's "running in a Cloud TPU VM"
    flag comes down to; its own check reads the PCI ids of the same chips)."""
    return accelerator_present(TPU_DEVICE_FILES)


def _metadata(key: str) -> str | None:
    """One instance attribute from the GCE metadata server; None where it has no such key.

    One try with a short timeout (JAX's own query retries for seconds): raises OSError when
    the server cannot be reached or answers anything but 200 or 404. Proxies are bypassed:
    the server is link-local. `GCE_METADATA_IP` overrides the host, as it does for JAX.
    """
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    request = urllib.request.Request(
        METADATA_URL.format(host=host, key=key), headers={"Metadata-Flavor": "Google"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=METADATA_TIMEOUT_S) as response:
            return response.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def _int_env(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def _tpu_slices() -> int | None:
    """MEGASCALE_NUM_SLICES (a multislice job), from the environment or the metadata's
    `tpu-env`, as JAX reads it; 1 where neither names it, None where it cannot be read."""
    value = os.environ.get("MEGASCALE_NUM_SLICES")
    if value is None:
        try:
            tpu_env = _metadata("tpu-env") or ""
        except OSError as e:
            log.warning("cannot read the TPU metadata (tpu-env): %r", e)
            return None
        for line in tpu_env.splitlines():  # lines like MEGASCALE_NUM_SLICES: '2'
            name, _, rest = line.partition(":")
            if name.strip() == "MEGASCALE_NUM_SLICES":
                value = rest.strip().strip("'")
    try:
        return int(value) if value else 1
    except ValueError:
        return None


def _gce_tpu_workers() -> int | None:
    """Workers in this TPU VM slice (`worker-network-endpoints`: one entry per host, either
    a hostname or a name:id:ip triple), or None where the list cannot be read."""
    try:
        endpoints = _metadata("worker-network-endpoints")
    except OSError as e:
        log.warning("cannot read the TPU metadata (worker-network-endpoints): %r", e)
        return None
    if endpoints is None:
        log.warning("the TPU metadata has no worker-network-endpoints")
        return None
    workers = endpoints.split(",")
    if any(len(w.split(":")) not in (1, 3) for w in workers):
        log.warning("unsupported worker-network-endpoints format: %r", endpoints)
        return None
    return len(workers)


def _times(workers: int | None, slices: int | None) -> int | None:
    return None if workers is None or slices is None else workers * slices


def _is_gce_tpu_vm() -> bool:
    """A Cloud TPU VM whose metadata names this worker (`agent-worker-number`), as JAX's
    GceTpuCluster asks. TPU_SKIP_MDS_QUERY (set by JAX's start-up on a machine without TPU
    chips, or by the user) skips the query, as it does for JAX."""
    if os.environ.get("TPU_SKIP_MDS_QUERY") is not None:
        return False
    try:
        return _metadata("agent-worker-number") is not None
    except OSError as e:
        log.info("TPU device present but the GCE metadata server is not reachable: %r", e)
        return False


def detected_cluster() -> tuple[str, int | None] | None:
    """The cluster environment `jax.distributed.initialize()` would detect, with its process
    count, or None.

    Read from public signals only, the same ones JAX's cluster probes read, in JAX's order:

    - 'OmpiCluster': Open MPI's `mpirun` (OMPI_MCA_orte_hnp_uri; the count is
      OMPI_COMM_WORLD_SIZE). Open MPI 5 has no such variable: JAX handles it only in newer
      versions and only through mpi4py, so it is not detected here (a warning says so).
    - 'SlurmCluster': an `srun` step (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
      SLURM_PROCID and SLURM_LOCALID all set; the count is SLURM_NTASKS). A batch script
      outside `srun` has no step variables and is not detected.
    - 'GkeTpuCluster': a TPU machine with TPU_PROCESS_ADDRESSES or TPU_WORKER_HOSTNAMES (GKE
      sets them; the count is the list's length times the number of slices).
    - 'GceTpuCluster': a TPU machine whose GCE metadata server answers `agent-worker-number`
      (a Cloud TPU VM, e.g. from `launch/tpu_pod.sh`; the count is the length of
      `worker-network-endpoints` times the number of slices). The server is asked only where
      a TPU device file exists, once per key, with a short timeout.

    Anything else (Kubernetes without the explicit variables, mpi4py) is not detected.

    Returns:
      `(name, processes)`: `name` is the name of JAX's cluster class; `processes` is what
      JAX would pass as `num_processes`, or None where it cannot be read here (then
      `jax.distributed.initialize()` would most likely fail on it too; a warning says why).

    JAX's own probes (`jax._src.clusters`) are not used: they are private, their names and
    behaviour moved between JAX versions, and lmsgd imports no private module.
    tests/test_distributed.py checks this against them on the same faked environments.
    """
    if os.environ.get(OMPI_ORTE_URI_ENV) is not None:
        return "OmpiCluster", _int_env(OMPI_WORLD_SIZE_ENV)
    if (_int_env(OMPI_WORLD_SIZE_ENV) or 0) > 1:
        log.warning(
            "Open MPI 5 launch with %s processes is not initialized automatically: set "
            "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or distributed: true "
            "with a JAX that detects Open MPI 5 (through mpi4py)",
            os.environ[OMPI_WORLD_SIZE_ENV],
        )
    if all(name in os.environ for name in SLURM_STEP_ENV):
        return "SlurmCluster", _int_env("SLURM_NTASKS")
    if not _tpu_present():
        return None
    gke_workers = next((os.environ[v] for v in GKE_WORKERS_ENV if v in os.environ), None)
    if gke_workers is not None:
        return "GkeTpuCluster", _times(len(gke_workers.split(",")), _tpu_slices())
    if _is_gce_tpu_vm():
        return "GceTpuCluster", _times(_gce_tpu_workers(), _tpu_slices())
    return None


def detected_multiprocess_environment() -> str | None:
    """Names the multi-process environment this process runs in, or None.

    Explicit `JAX_COORDINATOR_ADDRESS` first (whatever `JAX_NUM_PROCESSES` says: the user
    asked); otherwise an environment JAX would recognize (`detected_cluster`) *and* that
    counts more than one process. A single-task SLURM job, a single-host TPU VM (v4-8,
    v5p-8) or an environment whose process count cannot be read is not multi-process: `auto`
    does not initialize there (`jax.distributed.initialize()` would have nothing to
    coordinate, or would fail on the same missing count).
    """
    if os.environ.get(COORDINATOR_ENV):
        return "explicit (JAX_COORDINATOR_ADDRESS)"
    found = detected_cluster()
    if found is None:
        return None
    name, processes = found
    if processes is None:
        log.warning("%s detected but its process count is unknown: not initializing", name)
        return None
    if processes <= 1:
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
    other clusters by itself, from the signals `detected_cluster` just read.

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
