"""Several real JAX processes on this machine (gloo on CPU) against one process."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from lmsgd.checkpointing import load_state_arrays

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.multiprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)  # fmt: skip
    return env


def test_sharded_step_two_processes_equal_one_process(tmp_path):
    worker = str(REPO / "tests" / "mp_step_worker.py")
    addr = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(tmp_path / "two.npz")],
            cwd=REPO,
            env=env_for(
                2, JAX_COORDINATOR_ADDRESS=addr, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    single = subprocess.run(
        [sys.executable, worker, str(tmp_path / "one.npz")], cwd=REPO, env=env_for(4),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert single.returncode == 0, single.stderr
    assert "process 1/2 done, step 3" in outputs[1]
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert sorted(two.files) == sorted(one.files)
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-6, atol=1e-7, err_msg=key)


# float32 all-reduce and momentum SGD: the two runs then differ only by the order of float32
# additions (gloo vs. in-process). RMSprop's g / sqrt(m) would amplify that on near-zero
# gradients, float16 would add its rounding.
TINY = [
    "--config.allreduce.dtype=float32", "--config.optimizer.name=momentum",
    "--config.model.width_multiplier=0.25", "--config.data.image_size=8",
    "--config.global_batch_size=64", "--config.eval_batch_size=64", "--config.num_epochs=0.3",
    "--config.logging.tensorboard=False", "--config.checkpoint.every_steps=3",
    "--config.checkpoint.async_save=False", "--config.logging.every_steps=2",
]  # fmt: skip


def test_local_multiprocess_launcher_trains_like_one_process(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    launcher = subprocess.run(
        ["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "2", "--",
         "--config", "configs/default.py", f"--workdir={multi}", *TINY],
        cwd=REPO, env=env_for(2, PYTHON=sys.executable), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert launcher.returncode == 0, launcher.stdout[-3000:] + launcher.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", "--config", "configs/default.py",
         f"--workdir={single}", "--config.num_cpu_devices=4", *TINY],
        cwd=REPO, env=env_for(4), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    # Only process 0 wrote metrics: exactly as many records as the single-process run.
    lines = lambda w: (w / "metrics.jsonl").read_text().splitlines()
    assert len(lines(multi)) == len(lines(single)) > 0
    logs = sorted(p.name for p in (multi / "logs").iterdir())
    assert logs == ["process_0.log", "process_1.log"]
    assert "4 devices" in (multi / "logs" / "process_0.log").read_text()
    # The checkpoint restores (orbax) and equals the one-process run's.
    (s_multi, multi_state), (s_single, single_state) = (
        load_state_arrays(str(multi)),
        load_state_arrays(str(single)),
    )
    assert s_multi == s_single
    import jax

    for a, b in zip(jax.tree.leaves(multi_state), jax.tree.leaves(single_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # And the evaluate entry point restores it too.
    ev = subprocess.run(
        [sys.executable, "-m", "lmsgd.evaluate", "--config", "configs/default.py",
         f"--workdir={multi}", "--config.num_cpu_devices=4", *TINY],
        cwd=REPO, env=env_for(4), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert '"num_examples": 360' in ev.stdout
