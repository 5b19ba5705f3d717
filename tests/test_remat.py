"""`model.remat`: the train step recomputing each block's normalize + ReLU in the backward
pass gives the plain step's results, and keeps less in memory."""

import math
import re

import jax
import numpy as np
import optax
import pytest
from helpers import IMAGE, batches, max_rel_err, tiny_model

from lmsgd.models import create_model
from lmsgd.parallel import create_mesh
from lmsgd.step import create_train_state, global_norm, make_train_step


@pytest.fixture(scope="module")
def mesh():
    return create_mesh()


def _run(mesh, model, steps, **kw):
    tx = optax.sgd(0.5, momentum=0.9)
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    step = make_train_step(model, tx, mesh, **kw)
    losses = []
    for batch in steps:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


def _rel_l2(a, b):
    """||a - b|| / ||b|| over every leaf of two trees."""
    return float(global_norm(jax.tree.map(lambda x, y: x - y, a, b)) / global_norm(b))


# bfloat16: XLA:CPU rounds the two programs' bfloat16 arithmetic differently (it drops some
# float32 -> bfloat16 -> float32 round trips, and which depends on the fusion): compared as
# a whole (relative L2), at bfloat16's precision. float32: element by element, at the level
# float reassociation reaches in two steps (its noise grows ~30x a step at lr 0.5 with
# momentum: 2.7e-5 on jax 0.12.0.1, under 1e-5 on jax 0.10.2); a wrong policy is off by O(1).
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_remat_step_trains_like_the_plain_step(mesh, dtype, tol):
    """Steps with and without rematerialization: the same losses, updates (new parameters
    minus the initial ones), statistics and momentum, up to float rounding (the backward
    pass recomputes the forward pass's operations on the same values)."""
    model = tiny_model(dtype=dtype)
    steps = batches(2, seed=7)
    init = create_train_state(model, optax.sgd(0.5), jax.random.key(0), IMAGE, mesh)
    init_params = jax.tree.map(np.asarray, init.params)
    plain, plain_losses = _run(mesh, model, steps)
    remat, remat_losses = _run(mesh, model, steps, remat=True)
    np.testing.assert_allclose(remat_losses, plain_losses, rtol=tol / 10)
    moved = lambda s: jax.tree.map(lambda a, b: np.asarray(a) - b, s.params, init_params)
    err = max_rel_err if dtype == "float32" else _rel_l2
    assert err(moved(remat), moved(plain)) < tol
    assert err(remat.batch_stats, plain.batch_stats) < tol
    assert err(remat.opt_state, plain.opt_state) < tol


def test_remat_keeps_fewer_residuals_and_the_step_recomputes(mesh, capsys):
    """Under the step's policy the backward pass keeps the convolution and block outputs
    and statistics, not the inner normalize + ReLU outputs: fewer residual bytes (JAX's own
    count; XLA:CPU merges the recomputation back, so its memory analysis shows no change:
    docs/performance.md has XLA:GPU's figures). The rematerializing step's program carries
    the recomputation (behind an optimization barrier); the plain one does not."""
    from jax.ad_checkpoint import print_saved_residuals

    from lmsgd.models.resnet import REMAT_SAVED

    model = create_model("resnet18", num_classes=10, width_multiplier=0.25, dtype="bfloat16")
    image = (32, 32, 3)
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(model, tx, jax.random.key(0), image, mesh)
    x = np.zeros((4, *image), np.float32)

    def residual_bytes(remat):
        def forward(p):
            logits, _ = model.apply(
                {"params": p, "batch_stats": state.batch_stats}, x, train=True,
                mutable=["batch_stats"],
            )  # fmt: skip
            return logits

        if remat:
            policy = jax.checkpoint_policies.save_only_these_names(*REMAT_SAVED)
            forward = jax.checkpoint(forward, policy=policy)
        capsys.readouterr()
        print_saved_residuals(lambda p: forward(p).sum(), state.params)
        total = 0  # activations: 4-D residuals of the batch's 4 examples (not parameters)
        for line in capsys.readouterr().out.splitlines():
            found = re.match(r"(bf16|f32)\[4,(\d+),(\d+),(\d+)\]", line)
            if found and "argument" not in line:
                size = math.prod(int(d) for d in found.groups()[1:])
                total += 4 * size * (2 if found[1] == "bf16" else 4)
        return total

    plain, remat = residual_bytes(False), residual_bytes(True)
    assert remat < 0.75 * plain, (remat, plain)

    batch = {"image": np.zeros((32, *image), np.float32), "label": np.zeros((32,), np.int32)}
    text = lambda **kw: make_train_step(model, tx, mesh, **kw).lower(state, batch).as_text()
    assert "optimization_barrier" in text(remat=True)
    assert "optimization_barrier" not in text()
