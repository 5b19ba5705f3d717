"""When `maybe_initialize('auto')` starts `jax.distributed`: one test per environment.

The decision runs JAX's own cluster probes (`jax._src.clusters`), fed with faked inputs:
environment variables, the "running on a Cloud TPU VM" flag and the metadata server (a
dict, no network). `jax.distributed.initialize` itself is replaced by a recorder.
"""

from __future__ import annotations

import jax
import pytest
from jax._src import clusters
from jax._src.clusters import cloud_tpu_cluster

from lmsgd import distributed

# Everything any of JAX's probes (or the explicit contract) reads from the environment.
_ENV = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_PORT",
    "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
    "SLURM_STEP_NUM_NODES", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST",
    "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID", "TPU_SKIP_MDS_QUERY",
    "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID",
)  # fmt: skip


class FakeMetadata:
    """The GCE metadata server's instance attributes; a missing key answers 404."""

    def __init__(self, attributes: dict[str, str] | None = None):
        self.attributes = attributes or {}
        self.queried: list[str] = []

    def __call__(self, key: str) -> tuple[str, int]:
        self.queried.append(key)
        if key in self.attributes:
            return self.attributes[key], 200
        return "", 404


@pytest.fixture
def world(monkeypatch):
    """A plain machine: no cluster variables, not a TPU VM, no metadata server, and a
    recorder in place of `jax.distributed.initialize`."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", False)
    metadata = FakeMetadata()
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", metadata)
    calls: list[dict] = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)

    class World:
        pass

    w = World()
    w.calls, w.metadata, w.monkeypatch = calls, metadata, monkeypatch
    return w


def _slurm(monkeypatch, ntasks: int, *, srun: bool = True) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", str(ntasks))
    if srun:  # srun sets the step variables; the batch script itself has none
        monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[003-006]")
        monkeypatch.setenv("SLURM_PROCID", "1")
        monkeypatch.setenv("SLURM_LOCALID", "0")


def _tpu_vm(w, workers: int) -> None:
    """A Cloud TPU VM (e.g. made by launch/tpu_pod.sh): JAX knows its slice only through
    the metadata server."""
    w.monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    w.metadata.attributes.update(
        {
            "agent-worker-number": "1",
            "worker-network-endpoints": ",".join(f"10.0.0.{i}" for i in range(workers)),
            "tpu-env": "ACCELERATOR_TYPE: 'v4-32'\n",
        }
    )


def test_nothing_detected_on_a_plain_machine(world):
    assert distributed.detected_cluster() is None
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_slurm_job_with_several_tasks_initializes(world):
    _slurm(world.monkeypatch, 4)
    assert distributed.detected_cluster() == ("SlurmCluster", 4)
    assert distributed.maybe_initialize("auto") == "SlurmCluster (4 processes)"
    assert world.calls == [{}]  # JAX detects SLURM itself...
    # ...and derives the same job from it (what initialize() will use).
    address, count, pid, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 10
    )
    assert (address.split(":")[0], count, pid) == ("gpu003", 4, 1)


def test_single_task_slurm_job_does_not_initialize(world):
    _slurm(world.monkeypatch, 1)
    assert distributed.detected_cluster() == ("SlurmCluster", 1)
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_slurm_batch_script_outside_srun_does_not_initialize(world):
    # SLURM_NTASKS=4 but no srun step: one process, and JAX sees no SLURM cluster.
    _slurm(world.monkeypatch, 4, srun=False)
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_cloud_tpu_vm_pod_initializes_through_the_metadata_server(world):
    # The bug this fixes: no TPU_WORKER_HOSTNAMES on a TPU VM, only the metadata server.
    _tpu_vm(world, workers=4)
    assert distributed.detected_cluster() == ("GceTpuCluster", 4)
    assert distributed.maybe_initialize("auto") == "GceTpuCluster (4 processes)"
    assert world.calls == [{}]
    assert "agent-worker-number" in world.metadata.queried


def test_single_host_tpu_vm_does_not_initialize(world):
    _tpu_vm(world, workers=1)  # v4-8 / v5p-8: one host
    assert distributed.detected_cluster() == ("GceTpuCluster", 1)
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_gke_tpu_pod_initializes(world):
    # GKE: a TPU VM whose metadata has no worker number; the worker list is an env variable.
    world.monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    world.monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w-0.svc,w-1.svc,w-2.svc,w-3.svc")
    world.monkeypatch.setenv("TPU_WORKER_ID", "2")
    world.metadata.attributes["tpu-env"] = ""
    assert distributed.detected_cluster() == ("GkeTpuCluster", 4)
    assert distributed.maybe_initialize("auto") == "GkeTpuCluster (4 processes)"
    assert world.calls == [{}]


def test_tpu_worker_hostnames_alone_is_not_a_tpu(world):
    # The variable without a TPU VM (JAX's GKE probe needs both): not a cluster.
    world.monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "a,b")
    assert distributed.maybe_initialize("auto") is None


def test_unknown_process_count_does_not_initialize(world):
    _tpu_vm(world, workers=4)

    def broken(key):
        if key == "worker-network-endpoints":
            raise RuntimeError("metadata server unreachable")
        return FakeMetadata.__call__(world.metadata, key)

    world.monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", broken)
    assert distributed.detected_cluster() == ("GceTpuCluster", None)
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_explicit_variables_are_passed_on_and_win(world):
    _slurm(world.monkeypatch, 4)  # ignored: the explicit contract comes first
    world.monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.1.2.3:1234")
    world.monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    world.monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.maybe_initialize("auto") == "explicit (JAX_COORDINATOR_ADDRESS)"
    assert world.calls == [
        {
            "coordinator_address": "10.1.2.3:1234",
            "num_processes": 2,
            "process_id": 1,
            "cluster_detection_method": "deactivate",
        }
    ]


def test_explicit_contract_needs_all_three(world):
    world.monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.1.2.3:1234")
    world.monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed.maybe_initialize("auto")


def test_mode_true_and_false(world):
    assert distributed.maybe_initialize(True) == "requested"
    assert world.calls == [{}]
    _slurm(world.monkeypatch, 4)
    assert distributed.maybe_initialize(False) is None
    assert world.calls == [{}]
