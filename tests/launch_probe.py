"""Stand-in for `lmsgd.train` in the launcher tests: `python -m launch_probe [--workdir DIR]`.

Reads the multi-process contract the launchers set (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), initializes `jax.distributed` from it the way the driver does, runs one
cross-process `psum`, and prints one line `PROBE {json}`. Test-only switches:
  --fail-process K   process K exits 3 at once (before joining the others)
  --wait-for-term    print READY, then wait for SIGTERM and exit 0 (no JAX at all)
  --ignore-term      (the other processes) ignore SIGTERM and sleep: only SIGKILL ends them
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import time


def _read(path: pathlib.Path) -> str:
    return path.read_text() if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir")
    parser.add_argument("--config")
    parser.add_argument("--fail-process", type=int, default=-1)
    parser.add_argument("--wait-for-term", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    args, _ = parser.parse_known_args(argv)
    process_id = int(os.environ["JAX_PROCESS_ID"])

    if process_id == args.fail_process:
        if args.ignore_term:  # Fail only once the others ignore SIGTERM (see their logs).
            logs = pathlib.Path(args.workdir) / "logs"
            others = [p for p in range(int(os.environ["JAX_NUM_PROCESSES"])) if p != process_id]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                "IGNORING" in _read(logs / f"process_{p}.log") for p in others
            ):
                time.sleep(0.05)
        print(f"PROBE process {process_id} failing on purpose", flush=True)
        return 3

    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("IGNORING SIGTERM", flush=True)
        time.sleep(60)
        return 0

    if args.wait_for_term:
        got = []
        signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
        print("READY", flush=True)
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        print("TERM" if got else "TIMEOUT", flush=True)
        return 0 if got else 1

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=process_id,
    )
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    # Each device holds its global index; the sum over all of them proves the collective
    # crossed the process boundary.
    order = {d: i for i, d in enumerate(mesh.devices.flat)}
    shards = [jax.device_put(np.array([order[d]], np.float32), d) for d in jax.local_devices()]
    x = jax.make_array_from_single_device_arrays((jax.device_count(),), sharding, shards)
    total = float(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(x))
    result = dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        coordinator=os.environ["JAX_COORDINATOR_ADDRESS"],
        psum=total,
        workdir=args.workdir,
    )
    print("PROBE " + json.dumps(result), flush=True)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
