"""Two real JAX processes (CPU, 2 devices each): exact eval and disjoint training slices."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import write_solid_folder

import lmsgd.data as data

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    import numpy as np
    from jax.experimental import multihost_utils
    sys.path.insert(0, sys.argv[4])
    from helpers import ids_from_images
    import lmsgd.data as data

    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size = "image_folder", sys.argv[3], 16

    @jax.jit
    def metrics(batch):
        # Predict the true class for even labels only.
        labels = batch["label"]
        pred = jax.numpy.where(labels % 2 == 0, labels, (labels + 1) % 3)
        return data.masked_topk_correct(jax.nn.one_hot(pred, 3), labels, batch["mask"])

    eval_ids, totals, num_batches = [], {}, 0
    for batch in data.eval_batches(cfg, global_batch_size=8, sharding=sharding):
        num_batches += 1
        assert batch["image"].shape == (8, 16, 16, 3)
        for k, v in metrics(batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        full = multihost_utils.process_allgather(batch, tiled=True)
        eval_ids += ids_from_images(full["image"])[full["mask"] > 0].tolist()

    it = data.train_batches(cfg, global_batch_size=4, seed=3, sharding=None)
    train_ids = [ids_from_images(next(it)["image"]).tolist() for _ in range(4)]
    gt = data.train_batches(cfg, global_batch_size=4, seed=3, sharding=sharding)
    global_ids = [ids_from_images(multihost_utils.process_allgather(next(gt)["image"],
                  tiled=True)).tolist() for _ in range(4)]
    print("RESULT " + json.dumps(dict(eval_ids=eval_ids, totals=totals, batches=num_batches,
                                      train_ids=train_ids, global_ids=global_ids,
                                      devices=jax.device_count())))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_exact_eval_and_disjoint_train(tmp_path):
    root = write_solid_folder(tmp_path / "data", {"train": [6, 7, 5], "val": [6, 6, 5]})
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    addr = f"127.0.0.1:{_free_port()}"
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), addr, str(i), str(root), here],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out[-3000:]
            line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
            outs.append(json.loads(line[len("RESULT ") :]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r in outs:
        assert r["devices"] == 4 and r["batches"] == 3
        # Every example of the 17-image split exactly once, on both processes.
        assert sorted(r["eval_ids"]) == list(range(17))
        # Plain-loop reference: labels 0,0,0,0,0,0,1,...; even labels predicted right.
        labels = [0] * 6 + [1] * 6 + [2] * 5
        assert r["totals"]["count"] == 17
        assert r["totals"]["top1"] == sum(1 for lab in labels if lab % 2 == 0)
    # Training: the two processes' slices are disjoint and form the global batch; the same
    # global batches as a single process reading everything.
    a, b = outs[0]["train_ids"], outs[1]["train_ids"]
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size = "image_folder", str(root), 16
    single = data.train_batches(cfg, global_batch_size=4, seed=3, sharding=None)
    from helpers import ids_from_images

    for s in range(4):
        assert not set(a[s]) & set(b[s])
        ref = ids_from_images(next(single)["image"]).tolist()
        assert a[s] + b[s] == ref == outs[0]["global_ids"][s] == outs[1]["global_ids"][s]
    assert len({i for s in range(4) for i in a[s] + b[s]}) == 16
    assert np.all(np.array(a) >= 0)
