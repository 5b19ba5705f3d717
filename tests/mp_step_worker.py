"""One process of the multi-process step test: `python tests/mp_step_worker.py OUT.npz`.

Reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (absent: one process),
builds the global ('data',) mesh, feeds this process's rows of three fixed global batches
through `jax.make_array_from_process_local_data`, runs three sharded train steps and, on
process 0, saves the final parameters.
"""

import os
import sys

import jax
import numpy as np
import optax

from lmsgd.distributed import maybe_initialize
from lmsgd.models import create_model
from lmsgd.parallel import batch_sharding, create_mesh
from lmsgd.step import create_train_state, make_train_step

GLOBAL_BATCH = 16


def main(out: str) -> None:
    maybe_initialize("auto")
    mesh = create_mesh()
    assert mesh.devices.size == 4, mesh
    model = create_model("cifar_resnet8", num_classes=10, width_multiplier=0.25,
                         zero_init_residual=False)  # fmt: skip
    tx = optax.sgd(0.5, momentum=0.9)
    state = create_train_state(model, tx, jax.random.key(0), (8, 8, 3), mesh)
    step = make_train_step(model, tx, mesh, allreduce_dtype="float32")
    rng = np.random.default_rng(0)
    sharding = batch_sharding(mesh)
    per_process = GLOBAL_BATCH // jax.process_count()
    rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    for _ in range(3):
        images = rng.normal(size=(GLOBAL_BATCH, 8, 8, 3)).astype(np.float32)
        labels = rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)
        batch = {
            "image": jax.make_array_from_process_local_data(sharding, images[rows]),
            "label": jax.make_array_from_process_local_data(sharding, labels[rows]),
        }
        state, _ = step(state, batch)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    arrays = {jax.tree_util.keystr(p): np.asarray(jax.device_get(x)) for p, x in leaves}
    if jax.process_index() == 0:
        np.savez(out, **arrays)
    print(f"process {jax.process_index()}/{jax.process_count()} done, step {int(state.step)}")


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main(sys.argv[1])
