"""The stem's normalize + ReLU + max pool with its own derivative (`lmsgd.models.pooling`),
against JAX's derivative of the plain composition, and the ResNet that uses it on GPUs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmsgd.models.pooling import normalize_relu_max_pool
from lmsgd.models.resnet import BottleneckBlock, ResNet
from lmsgd.step import GPU_PLATFORMS, bind_model_to_mesh


def plain(x, mul, add, dtype):
    """The composition as the model writes it without `gpu_derivatives`."""
    h = nn.relu((x.astype(jnp.float32) * mul + add).astype(dtype))
    return nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def vjps(x, mul, add, dy, dtype):
    fused = lambda *a: normalize_relu_max_pool(*a, jnp.dtype(dtype))
    y1, vjp1 = jax.vjp(fused, x, mul, add)
    y0, vjp0 = jax.vjp(lambda *a: plain(*a, dtype), x, mul, add)
    return (y1, *jax.jit(vjp1)(dy)), (y0, *jax.jit(vjp0)(dy))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("hw", [(16, 16), (15, 13)], ids=["even", "odd"])
def test_gradient_routes_as_select_and_scatter_with_ties(dtype, hw):
    """Values on a coarse grid: many ties inside windows (and whole windows of ReLU zeros),
    and every sum exact in 16 bits, so the routing must match JAX's exactly: the first
    maximum in row-major order takes a window's cotangent, padding never does."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.round(rng.normal(size=(3, *hw, 8)) * 2) / 2, dtype)
    mul = jnp.asarray(2.0 ** rng.integers(-1, 2, 8), jnp.float32)
    add = jnp.asarray(np.round(rng.normal(size=8) * 2) / 4, jnp.float32)
    out = (3, (hw[0] + 1) // 2, (hw[1] + 1) // 2, 8)
    dy = jnp.asarray(np.round(rng.normal(size=out) * 4), dtype)
    got, want = vjps(x, mul, add, dy, dtype)
    assert got[0].shape == out and got[0].dtype == jnp.dtype(dtype)
    zero_windows = int(np.sum(np.asarray(want[0], np.float32) == 0))
    assert zero_windows > 10, "the data should have windows of ReLU zeros (ties)"
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert np.any(np.asarray(got[1], np.float32) != 0)


def test_gradient_matches_on_random_data_to_rounding():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(1.0, 2.0, (4, 14, 14, 16)), jnp.bfloat16)
    mul = jnp.asarray(rng.uniform(0.5, 2.0, 16), jnp.float32)
    add = jnp.asarray(rng.normal(size=16), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(4, 7, 7, 16)), jnp.bfloat16)
    got, want = vjps(x, mul, add, dy, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32))
    for a, b in zip(got[1:], want[1:]):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        # Overlapping windows' cotangents add in another order: bf16 rounding (2**-8).
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * np.abs(b).max())
    dx, dx_ref = np.asarray(got[1], np.float32), np.asarray(want[1], np.float32)
    assert np.mean(dx == dx_ref) > 0.9  # only where two windows' cotangents meet


def test_per_example_multiply_add_sums_back_to_its_shape():
    """Ghost batch normalization hands one multiply-add per example, `[B, 1, 1, C]`."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
    mul = jnp.asarray(rng.uniform(0.5, 2.0, (4, 1, 1, 3)), jnp.float32)
    add = jnp.asarray(rng.normal(size=(4, 1, 1, 3)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(4, 4, 4, 3)), jnp.float32)
    got, want = vjps(x, mul, add, dy, jnp.float32)
    assert got[2].shape == (4, 1, 1, 3)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dtype,ghost,tol",
    [(jnp.float32, 0, 1e-5), (jnp.float32, 2, 1e-5), (jnp.bfloat16, 0, 0.05)],
    ids=["f32", "f32-ghost", "bf16"],
)
def test_resnet_with_gpu_derivatives_has_the_same_loss_and_gradients(dtype, ghost, tol):
    """A small ImageNet-stem ResNet: `gpu_derivatives` (the fused stem pool and the
    recomputed statistics' derivative) against JAX's derivatives, one loss and gradient.
    float32: equal to rounding. bf16: the stem's cotangents round differently where windows
    overlap, and a flipped bf16 rounding moves later gradients by up to ~2% of a leaf's
    largest element (a wrong routing moves them by O(1))."""
    from lmsgd.models.normalization import BatchStatsNorm

    norm = functools.partial(BatchStatsNorm, group_size=1, virtual_batch_size=ghost)
    make = lambda gpu: ResNet(stage_sizes=(1, 1), block_cls=BottleneckBlock, num_classes=10,
                              width=16, dtype=dtype, norm=norm, gpu_derivatives=gpu)  # fmt: skip
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 4))
    variables = make(False).init(jax.random.key(0), images, train=False)

    def grads(gpu):
        def loss(params):
            logits, _ = make(gpu).apply({**variables, "params": params}, images, train=True,
                                        mutable=["batch_stats"])  # fmt: skip
            return jnp.mean(
                -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)
            )

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    (l1, g1), (l0, g0) = grads(True), grads(False)
    assert float(l1) == pytest.approx(float(l0), rel=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max() + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))  # fmt: skip


def test_train_step_picks_gpu_derivatives_by_platform():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    model = ResNet(stage_sizes=(1,), block_cls=BottleneckBlock)
    assert model.gpu_derivatives is None
    assert bind_model_to_mesh(model, mesh).gpu_derivatives is False  # CPU here
    assert bind_model_to_mesh(model.clone(gpu_derivatives=True), mesh).gpu_derivatives is True
    assert "cuda" in GPU_PLATFORMS and "gpu" in GPU_PLATFORMS and "tpu" not in GPU_PLATFORMS


@pytest.mark.parametrize("group_size", [1, 2], ids=["per-device", "pooled-over-2"])
def test_train_step_with_gpu_derivatives_on_8_devices(group_size):
    """The project's train step on 8 simulated devices, statistics per device or pooled over
    groups of 2 (their derivative then crosses devices): with `gpu_derivatives` forced on,
    one step gives the parameters, statistics and momentum of the step with JAX's
    derivatives, to float32 rounding."""
    import optax
    from helpers import max_rel_err

    from lmsgd.models import create_model
    from lmsgd.models.normalization import BatchStatsNorm
    from lmsgd.parallel import create_mesh
    from lmsgd.step import create_train_state, make_train_step

    mesh = create_mesh()
    norm = functools.partial(BatchStatsNorm, group_size=group_size)
    rng = np.random.default_rng(4)
    batch = {
        "image": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    tx = optax.sgd(0.1, momentum=0.9)

    def one_step(gpu):
        model = create_model("resnet18", num_classes=10, width_multiplier=0.125, norm=norm,
                             zero_init_residual=False).clone(gpu_derivatives=gpu)  # fmt: skip
        state = create_train_state(model, tx, jax.random.key(0), (16, 16, 3), mesh)
        state, metrics = make_train_step(model, tx, mesh)(state, batch)
        return state, float(metrics["loss"])

    (got, loss1), (want, loss0) = one_step(True), one_step(False)
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert max_rel_err(got.params, want.params) < 1e-5
    assert max_rel_err(got.batch_stats, want.batch_stats) < 1e-5
    assert max_rel_err(got.opt_state, want.opt_state) < 1e-5
