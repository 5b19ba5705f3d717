"""When `maybe_initialize('auto')` starts `jax.distributed`: one test per environment.

lmsgd decides from public signals only (environment variables, TPU device files, the GCE
metadata server over HTTP). Here those are faked: environment variables, lmsgd's own
`_tpu_present` and `_metadata` (a dict, no network), and `jax.distributed.initialize` is
replaced by a recorder. `test_agrees_with_jax` runs JAX's own (private) cluster probes on the
same faked worlds as an independent reference: the tests may read JAX's internals, the
package must not (`test_no_private_imports`).
"""

from __future__ import annotations

import ast
import http.server
import logging
import pathlib
import threading

import jax
import pytest

from lmsgd import distributed

# Everything lmsgd's detection, JAX's probes or the explicit contract read from the environment.
_ENV = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_PORT",
    "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
    "SLURM_STEP_NUM_NODES", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_VERSION",
    "KUBERNETES_SERVICE_HOST", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
    "TPU_PROCESS_ADDRESSES_PATH", "TPU_WORKER_ID", "TPU_SKIP_MDS_QUERY", "GCE_METADATA_IP",
    "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID",
)  # fmt: skip


class FakeMetadata:
    """The GCE metadata server's instance attributes, as lmsgd's `_metadata` answers them:
    the text, None for a missing key, OSError for a key listed in `broken`."""

    def __init__(self):
        self.attributes: dict[str, str] = {}
        self.broken: set[str] = set()
        self.queried: list[str] = []

    def __call__(self, key: str) -> str | None:
        self.queried.append(key)
        if key in self.broken:
            raise OSError(f"metadata server unreachable ({key})")
        return self.attributes.get(key)


class World:
    """A faked machine: see the `world` fixture."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.metadata = FakeMetadata()
        self.tpu = False
        self.calls: list[dict] = []

    def setenv(self, **variables) -> None:
        for name, value in variables.items():
            self.monkeypatch.setenv(name, str(value))


@pytest.fixture
def world(monkeypatch):
    """A plain machine: no cluster variables, no TPU, no metadata server, and a recorder in
    place of `jax.distributed.initialize`."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    w = World(monkeypatch)
    monkeypatch.setattr(distributed, "_tpu_present", lambda: w.tpu)
    monkeypatch.setattr(distributed, "_metadata", w.metadata)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: w.calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    return w


def _slurm(w: World, ntasks: int, *, srun: bool = True) -> None:
    w.setenv(SLURM_JOB_ID=4242, SLURM_NTASKS=ntasks)
    if srun:  # srun sets the step variables; the batch script itself has none
        w.setenv(SLURM_STEP_NODELIST="gpu[003-006]", SLURM_PROCID=1, SLURM_LOCALID=0)


def _ompi(w: World, size: int) -> None:
    """mpirun of Open MPI 4 (ORTE)."""
    w.setenv(
        OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
        OMPI_COMM_WORLD_SIZE=size,
        OMPI_COMM_WORLD_RANK=0,
        OMPI_COMM_WORLD_LOCAL_RANK=0,
    )


def _tpu_vm(w: World, workers: int, *, old_format: bool = False) -> None:
    """A Cloud TPU VM (e.g. made by launch/tpu_pod.sh): its slice is known only through the
    metadata server."""
    w.tpu = True
    endpoints = [f"w-{i}:{i}:10.0.0.{i}" if old_format else f"10.0.0.{i}" for i in range(workers)]
    w.metadata.attributes.update(
        {
            "agent-worker-number": "1",
            "worker-network-endpoints": ",".join(endpoints),
            "tpu-env": "ACCELERATOR_TYPE: 'v4-32'\n",
        }
    )


def _gke_tpu(w: World, workers: int) -> None:
    """A GKE TPU pod: a TPU machine whose metadata has no worker number; the worker list is an
    environment variable."""
    w.tpu = True
    w.setenv(TPU_WORKER_HOSTNAMES=",".join(f"w-{i}.svc" for i in range(workers)), TPU_WORKER_ID=2)
    w.metadata.attributes["tpu-env"] = ""


def test_nothing_detected_on_a_plain_machine(world):
    assert distributed.detected_cluster() is None
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []
    assert world.metadata.queried == []  # no TPU: the metadata server is never asked


def test_slurm_job_with_several_tasks_initializes(world):
    _slurm(world, 4)
    assert distributed.detected_cluster() == ("SlurmCluster", 4)
    assert distributed.maybe_initialize("auto") == "SlurmCluster (4 processes)"
    assert world.calls == [{}]  # JAX detects SLURM itself


def test_single_task_slurm_job_does_not_initialize(world):
    _slurm(world, 1)
    assert distributed.detected_cluster() == ("SlurmCluster", 1)
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_slurm_batch_script_outside_srun_does_not_initialize(world):
    # SLURM_NTASKS=4 but no srun step: one process, and JAX sees no SLURM cluster.
    _slurm(world, 4, srun=False)
    assert distributed.detected_cluster() is None
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_open_mpi_with_several_ranks_initializes(world):
    _ompi(world, 8)
    assert distributed.detected_cluster() == ("OmpiCluster", 8)
    assert distributed.maybe_initialize("auto") == "OmpiCluster (8 processes)"
    assert world.calls == [{}]


def test_single_rank_open_mpi_does_not_initialize(world):
    _ompi(world, 1)
    assert distributed.detected_cluster() == ("OmpiCluster", 1)
    assert distributed.maybe_initialize("auto") is None


def test_open_mpi_5_is_not_detected_but_named(world, caplog):
    # No ORTE URI: JAX 0.10 does not detect it, newer JAX only through mpi4py.
    world.setenv(OMPI_VERSION="5.0.3", OMPI_COMM_WORLD_SIZE=4, OMPI_COMM_WORLD_RANK=0)
    world.setenv(OMPI_COMM_WORLD_LOCAL_RANK=0)
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        assert distributed.maybe_initialize("auto") is None
    assert world.calls == []
    assert "Open MPI 5" in caplog.text


def test_cloud_tpu_vm_pod_initializes_through_the_metadata_server(world):
    # No TPU_WORKER_HOSTNAMES on a TPU VM, only the metadata server.
    _tpu_vm(world, workers=4)
    assert distributed.detected_cluster() == ("GceTpuCluster", 4)
    assert distributed.maybe_initialize("auto") == "GceTpuCluster (4 processes)"
    assert world.calls == [{}]
    assert "agent-worker-number" in world.metadata.queried


def test_old_worker_endpoint_format_counts_the_same(world):
    _tpu_vm(world, workers=4, old_format=True)  # name:id:ip triples
    assert distributed.detected_cluster() == ("GceTpuCluster", 4)


def test_single_host_tpu_vm_does_not_initialize(world):
    _tpu_vm(world, workers=1)  # v4-8 / v5p-8: one host
    assert distributed.detected_cluster() == ("GceTpuCluster", 1)
    assert distributed.maybe_initialize("auto") is None
    assert world.calls == []


def test_multislice_counts_every_slice(world):
    _tpu_vm(world, workers=1)  # one host per slice, two slices: two processes
    world.metadata.attributes["tpu-env"] += "MEGASCALE_NUM_SLICES: '2'\n"
    assert distributed.detected_cluster() == ("GceTpuCluster", 2)
    world.setenv(MEGASCALE_NUM_SLICES=3)  # the environment wins over the metadata
    assert distributed.detected_cluster() == ("GceTpuCluster", 3)


def test_gke_tpu_pod_initializes(world):
    _gke_tpu(world, workers=4)
    assert distributed.detected_cluster() == ("GkeTpuCluster", 4)
    assert distributed.maybe_initialize("auto") == "GkeTpuCluster (4 processes)"
    assert world.calls == [{}]


def test_tpu_worker_hostnames_alone_is_not_a_tpu(world):
    # The variable without a TPU (JAX's GKE probe needs both): not a cluster.
    world.setenv(TPU_WORKER_HOSTNAMES="a,b")
    assert distributed.detected_cluster() is None
    assert distributed.maybe_initialize("auto") is None


def test_tpu_without_metadata_server_is_not_a_cluster(world):
    world.tpu = True
    world.metadata.broken.add("agent-worker-number")  # not on GCE (or the server is down)
    assert distributed.detected_cluster() is None
    world.metadata.broken.clear()  # a server without the key (not a TPU VM slice)
    assert distributed.detected_cluster() is None
    world.setenv(TPU_SKIP_MDS_QUERY=1)  # JAX's own "no metadata server here"
    world.metadata.queried.clear()
    assert distributed.detected_cluster() is None
    assert world.metadata.queried == []


@pytest.mark.parametrize("broken", ["worker-network-endpoints", "tpu-env"])
def test_unknown_process_count_does_not_initialize(world, broken, caplog):
    _tpu_vm(world, workers=4)
    world.metadata.broken.add(broken)
    assert distributed.detected_cluster() == ("GceTpuCluster", None)
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        assert distributed.maybe_initialize("auto") is None
    assert world.calls == []
    assert broken in caplog.text and "process count is unknown" in caplog.text


def test_explicit_variables_are_passed_on_and_win(world):
    _slurm(world, 4)  # ignored: the explicit contract comes first
    world.setenv(JAX_COORDINATOR_ADDRESS="10.1.2.3:1234", JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=1)
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
    world.setenv(JAX_COORDINATOR_ADDRESS="10.1.2.3:1234", JAX_NUM_PROCESSES=2)
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed.maybe_initialize("auto")


def test_mode_true_and_false(world):
    assert distributed.maybe_initialize(True) == "requested"
    assert world.calls == [{}]
    _slurm(world, 4)
    assert distributed.maybe_initialize(False) is None
    assert world.calls == [{}]


# --- JAX's own probes as the reference -------------------------------------------------------

_WORLDS = {
    "plain": lambda w: None,
    "slurm-4": lambda w: _slurm(w, 4),
    "slurm-1": lambda w: _slurm(w, 1),
    "slurm-batch": lambda w: _slurm(w, 4, srun=False),
    "ompi-8": lambda w: _ompi(w, 8),
    "ompi-then-slurm": lambda w: (_ompi(w, 2), _slurm(w, 4)),  # mpirun inside an allocation
    "tpu-vm-4": lambda w: _tpu_vm(w, 4),
    "tpu-vm-1": lambda w: _tpu_vm(w, 1),
    "tpu-vm-old-format": lambda w: _tpu_vm(w, 4, old_format=True),
    "tpu-vm-2-slices": lambda w: (_tpu_vm(w, 2), w.setenv(MEGASCALE_NUM_SLICES=2)),
    "tpu-vm-broken": lambda w: (_tpu_vm(w, 4), w.metadata.broken.add("worker-network-endpoints")),
    "gke-4": lambda w: _gke_tpu(w, 4),
    "gke-no-tpu": lambda w: w.setenv(TPU_WORKER_HOSTNAMES="a,b"),
    "tpu-no-metadata": lambda w: setattr(w, "tpu", True),
    "tpu-skip-mds": lambda w: (_tpu_vm(w, 4), w.setenv(TPU_SKIP_MDS_QUERY=1)),
}


def _jax_detected_cluster(w: World):
    """What JAX's own cluster probes (private, as of jax 0.10-0.12) make of world `w`: the
    first non-opt-in environment present, in JAX's order, with JAX's process count."""
    clusters = pytest.importorskip("jax._src.clusters")
    cloud_tpu_cluster = pytest.importorskip("jax._src.clusters.cloud_tpu_cluster")

    def get_metadata(key):  # JAX's signature: (text, status code)
        text = w.metadata(key)
        return ("", 404) if text is None else (text, 200)

    w.monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", w.tpu)
    w.monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", get_metadata)
    for env in clusters.ClusterEnv._cluster_types:
        if env.opt_in_only_method or not env.is_env_present():
            continue
        try:
            return env.__name__, int(env.get_process_count())
        except Exception:  # noqa: BLE001 - JAX cannot count them
            return env.__name__, None
    return None


@pytest.mark.parametrize("name", list(_WORLDS))
def test_agrees_with_jax(world, name):
    _WORLDS[name](world)
    assert distributed.detected_cluster() == _jax_detected_cluster(world)


def test_jax_derives_the_same_slurm_job(world):
    # What initialize() itself will use once SLURM is detected.
    clusters = pytest.importorskip("jax._src.clusters")
    _slurm(world, 4)
    address, count, pid, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 10
    )
    assert (address.split(":")[0], count, pid) == ("gpu003", 4, 1)


# --- the real metadata query, against a local server ------------------------------------------


@pytest.fixture
def metadata_server(monkeypatch):
    """A local HTTP server standing in for the metadata server (GCE_METADATA_IP points at it)."""
    seen: list[tuple[str, str | None]] = []
    answers = {"/computeMetadata/v1/instance/attributes/agent-worker-number": (200, "3")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Metadata-Flavor")))
            code, body = answers.get(self.path, (404, "not found"))
            if self.headers.get("Metadata-Flavor") != "Google":
                code, body = 403, "missing Metadata-Flavor"
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{server.server_port}")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # bypassed: would refuse
    yield answers, seen
    server.shutdown()
    server.server_close()


def test_metadata_query_over_http(metadata_server):
    answers, seen = metadata_server
    assert distributed._metadata("agent-worker-number") == "3"
    assert seen == [("/computeMetadata/v1/instance/attributes/agent-worker-number", "Google")]
    assert distributed._metadata("worker-network-endpoints") is None  # 404: no such key
    answers["/computeMetadata/v1/instance/attributes/tpu-env"] = (500, "oops")
    with pytest.raises(OSError):
        distributed._metadata("tpu-env")


def test_metadata_query_fails_fast_without_a_server(monkeypatch):
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(OSError):
        distributed._metadata("agent-worker-number")


def test_no_private_imports():
    """lmsgd/distributed.py imports no private module (jax._src or any `_name` of another
    package): private names moved between JAX versions."""
    tree = ast.parse(pathlib.Path(distributed.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            if module.startswith("lmsgd") or module == "__future__":
                continue
            assert not any(part.startswith("_") for part in module.split(".")), module
