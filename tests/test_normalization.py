"""BatchStatsNorm against numpy: per-device, grouped and global spans, exact pooling, modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lmsgd.models.normalization import BatchStatsNorm, moments, pool_statistics

EPS = 1e-5
NDEV = 8


def np_norm(x, axes=(0, 1, 2)):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    return (x - mean) / np.sqrt(var + EPS), mean, var


def make_data(seed=0, per_device=3):
    rng = np.random.default_rng(seed)
    # Per-device means differ a lot, so pooled != mean of per-device variances.
    offsets = rng.normal(0, 3, size=(NDEV, 1, 1, 1, 5))
    x = rng.normal(0, 1.5, size=(NDEV, per_device, 4, 4, 5)) + offsets
    return x.reshape(NDEV * per_device, 4, 4, 5).astype(np.float32)


def run_sharded(mesh, axes, norm, x):
    """Runs `norm` in training mode per device under shard_map; returns outputs and stats."""
    variables = norm.init(jax.random.key(0), x[:1], train=True)

    def per_device(v, xb):
        y, updates = norm.apply(v, xb, train=True, mutable=["batch_stats"])
        stats = updates["batch_stats"]
        return y, stats["mean"][None], stats["var"][None]

    spec = P(axes)
    fn = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(P(), spec), out_specs=(spec, spec, spec))
    )
    x_sharded = jax.device_put(x, NamedSharding(mesh, spec))
    y, mean, var = fn(variables, x_sharded)
    return np.asarray(y), np.asarray(mean), np.asarray(var)


@pytest.fixture(scope="module")
def mesh_1d():
    return jax.make_mesh((NDEV,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


@pytest.fixture(scope="module")
def mesh_2d():
    return jax.make_mesh(
        (2, 4), ("host", "local"), axis_types=(jax.sharding.AxisType.Explicit,) * 2
    )


def check_groups(x, y, mean, var, group_size):
    per_device = x.shape[0] // NDEV
    rows = group_size * per_device
    for g in range(NDEV // group_size):
        xs = x[g * rows : (g + 1) * rows]
        ref_y, ref_mean, ref_var = np_norm(xs)
        np.testing.assert_allclose(y[g * rows : (g + 1) * rows], ref_y, rtol=1e-4, atol=1e-4)
        for d in range(g * group_size, (g + 1) * group_size):
            np.testing.assert_allclose(mean[d], ref_mean, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(var[d], ref_var, rtol=1e-5, atol=1e-5)


def test_per_device_statistics(mesh_1d):
    x = make_data()
    y, mean, var = run_sharded(mesh_1d, "data", BatchStatsNorm(axis_name=None), x)
    check_groups(x, y, mean, var, group_size=1)
    # Explicit axis with group_size=1 is the same thing.
    y1, _, _ = run_sharded(mesh_1d, "data", BatchStatsNorm(axis_name="data", group_size=1), x)
    np.testing.assert_allclose(y1, y, rtol=1e-6)


@pytest.mark.parametrize("group_size", [2, 4])
def test_grouped_statistics(mesh_1d, group_size):
    x = make_data(seed=group_size)
    y, mean, var = run_sharded(
        mesh_1d, "data", BatchStatsNorm(axis_name="data", group_size=group_size), x
    )
    check_groups(x, y, mean, var, group_size)


@pytest.mark.parametrize("group_size", [0, NDEV])
def test_global_statistics(mesh_1d, group_size):
    x = make_data(seed=3)
    y, mean, var = run_sharded(
        mesh_1d, "data", BatchStatsNorm(axis_name="data", group_size=group_size), x
    )
    check_groups(x, y, mean, var, NDEV)


@pytest.mark.parametrize("group_size", [2, 4, 0])
def test_grouped_statistics_on_2d_mesh(mesh_2d, group_size):
    """Groups are consecutive devices in the row-major order of ('host', 'local')."""
    x = make_data(seed=7)
    norm = BatchStatsNorm(axis_name=("host", "local"), group_size=group_size)
    y, mean, var = run_sharded(mesh_2d, ("host", "local"), norm, x)
    check_groups(x, y, mean, var, group_size or NDEV)


def test_group_size_must_divide_axis(mesh_1d):
    with pytest.raises(ValueError, match="group_size=3"):
        run_sharded(mesh_1d, "data", BatchStatsNorm(axis_name="data", group_size=3), make_data())


def test_pool_statistics_is_the_union_not_mean_of_variances():
    x = make_data(seed=11)
    chunks = x.reshape(NDEV, -1, 4, 4, 5)
    means = chunks.astype(np.float64).mean(axis=(1, 2, 3))
    variances = chunks.astype(np.float64).var(axis=(1, 2, 3))
    mean, var = pool_statistics(jnp.asarray(means), jnp.asarray(variances))
    _, ref_mean, ref_var = np_norm(x)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5)
    np.testing.assert_allclose(var, ref_var, rtol=1e-5)
    # The naive mean of variances is measurably different on this data.
    assert np.max(np.abs(variances.mean(0) - ref_var) / ref_var) > 0.1


def test_batch_stats_mode_keeps_no_moving_averages():
    x = make_data()
    norm = BatchStatsNorm()
    variables = norm.init(jax.random.key(0), x, train=True)
    assert set(variables["batch_stats"]) == {"mean", "var"}
    y, updates = norm.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(updates["batch_stats"]) == {"mean", "var"}
    ref_y, ref_mean, ref_var = np_norm(x)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], ref_mean, rtol=1e-5, atol=1e-6)
    # A second batch overwrites the record: nothing is averaged over time.
    x2 = make_data(seed=5)
    _, updates2 = norm.apply(variables, x2, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(updates2["batch_stats"]["var"], np_norm(x2)[2], rtol=1e-5)


def test_eval_mode_uses_supplied_statistics():
    x = make_data()
    norm = BatchStatsNorm()
    variables = norm.init(jax.random.key(0), x, train=False)
    rng = np.random.default_rng(1)
    mean = rng.normal(size=5).astype(np.float32)
    var = rng.uniform(0.5, 2, size=5).astype(np.float32)
    scale = rng.normal(size=5).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    variables = {
        "params": {"scale": scale, "bias": bias},
        "batch_stats": {"mean": mean, "var": var},
    }
    y = norm.apply(variables, x, train=False)
    ref = (x - mean) / np.sqrt(var + EPS) * scale + bias
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_moving_average_mode():
    norm = BatchStatsNorm(mode="moving_average", momentum=0.8)
    x1, x2 = make_data(seed=1), make_data(seed=2)
    variables = norm.init(jax.random.key(0), x1, train=True)
    ema_mean, ema_var = np.zeros(5), np.ones(5)
    for x in (x1, x2):
        _, updates = norm.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
        _, m, v = np_norm(x)
        ema_mean, ema_var = 0.8 * ema_mean + 0.2 * m, 0.8 * ema_var + 0.2 * v
    stats = variables["batch_stats"]
    np.testing.assert_allclose(stats["ema_mean"], ema_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["ema_var"], ema_var, rtol=1e-5)
    # Evaluation in this mode uses the moving averages, not the last batch.
    y = norm.apply(variables, x1, train=False)
    ref = (x1 - ema_mean) / np.sqrt(ema_var + EPS)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_gradient_matches_numerical_derivative():
    """The pooled statistics are differentiated through (as in true batch norm)."""
    x = make_data(per_device=1)[:6].astype(np.float64)
    w = np.random.default_rng(0).normal(size=x.shape)

    def loss_np(x):
        return float(np.sum(np_norm(x)[0] * w))

    norm = BatchStatsNorm()
    variables = norm.init(jax.random.key(0), jnp.asarray(x, jnp.float32), train=True)
    loss = lambda x: jnp.sum(norm.apply(variables, x, train=True, mutable=["batch_stats"])[0] * w)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(x, jnp.float32)))
    idx = (2, 1, 3, 4)
    h = 1e-4
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    numerical = (loss_np(xp) - loss_np(xm)) / (2 * h)
    np.testing.assert_allclose(grad[idx], numerical, rtol=2e-2, atol=2e-3)


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="allowed"):
        BatchStatsNorm(mode="ema").init(jax.random.key(0), jnp.ones((2, 3)), train=True)


def test_virtual_batches_normalize_each_chunk_and_record_the_union():
    x = make_data(seed=13, per_device=3)  # 24 examples, chunk offsets differ
    norm = BatchStatsNorm(virtual_batch_size=6)
    variables = norm.init(jax.random.key(0), x, train=True)
    y, updates = norm.apply(variables, x, train=True, mutable=["batch_stats"])
    for g in range(4):
        ref_y, _, _ = np_norm(x[g * 6 : (g + 1) * 6])
        np.testing.assert_allclose(y[g * 6 : (g + 1) * 6], ref_y, rtol=1e-4, atol=1e-4)
    _, ref_mean, ref_var = np_norm(x)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], ref_var, rtol=1e-5)
    # Evaluation is unaffected by the chunking.
    y_eval = norm.apply({**variables, **updates}, x, train=False)
    np.testing.assert_allclose(y_eval, np_norm(x)[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="virtual_batch_size=5 must divide"):
        BatchStatsNorm(virtual_batch_size=5).apply(variables, x, train=True, mutable=True)


def test_gradient_equals_plain_formula():
    """The centring mean is held constant for differentiation (d var / d mean = 0 exactly):
    gradients w.r.t. input, scale and bias equal those of the plain formula autodiffed through
    every term (float64), to float32 rounding (BatchStatsNorm computes in float32). Holding
    the wrong mean constant (the normalization's) would be off by O(1)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(8, 5, 5, 6)) * 3.0 + 2.0
    w = rng.normal(size=x.shape)
    scale, bias = rng.normal(size=(6,)), rng.normal(size=(6,))
    norm = BatchStatsNorm()
    variables = norm.init(jax.random.key(0), jnp.zeros(x.shape, jnp.float32), train=True)

    def ours(x, scale, bias):
        v = {**variables, "params": {"scale": scale, "bias": bias}}
        y, _ = norm.apply(v, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * w)

    def plain(x, scale, bias):
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean((x - mean) ** 2, axis=(0, 1, 2))
        return jnp.sum(jnp.sin((x - mean) / jnp.sqrt(var + EPS) * scale + bias) * w)

    f32 = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
    got = jax.grad(ours, argnums=(0, 1, 2))(*f32)
    with jax.enable_x64(True):
        want = jax.grad(plain, argnums=(0, 1, 2))(
            *[jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
        )
        want = [np.asarray(r) for r in want]
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-5 * np.max(np.abs(r)))


# One-pass statistics (sums of x - c and (x - c)**2 around a shift c) against float64.

RATIOS = [1.0, 1e1, 1e2, 1e3]  # |mean| / std of the channels
# Relative to the float64 statistics of the same (dtype-rounded) values: mean error over
# (|mean| + std), variance error over var; with a shift `k` std off the mean, VAR_TOL times
# (1 + k**2 / 10): the float32 rounding of sums of 1,568 squares ~ (1 + k**2) var each.
MEAN_TOL, VAR_TOL = 2e-6, 2e-5


def large_mean_data(ratio, dtype, seed, shape=(32, 7, 7, 16)):
    """Channels with std in [0.5, 2] and |mean| = ratio * std (signs mixed), rounded to
    `dtype`; also the channels' means and stds."""
    rng = np.random.default_rng(seed)
    std = rng.uniform(0.5, 2.0, size=shape[-1])
    mean = ratio * std * rng.choice([-1.0, 1.0], size=shape[-1])
    x = rng.normal(size=shape) * std + mean
    return np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)), mean, std


def assert_close_to_float64(x, mean, var, var_tol=VAR_TOL):
    ref = x.astype(np.float64)
    ref_mean, ref_var = ref.mean(axis=(0, 1, 2)), ref.var(axis=(0, 1, 2))
    mean_err = np.abs(np.asarray(mean, np.float64) - ref_mean) / (
        np.abs(ref_mean) + np.sqrt(ref_var)
    )
    var_err = np.abs(np.asarray(var, np.float64) - ref_var) / ref_var
    assert mean_err.max() < MEAN_TOL, mean_err.max()
    assert var_err.max() < var_tol, var_err.max()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_training_statistics_are_float64_exact_for_large_means(ratio, dtype):
    """The layer's one pass centres on the mean it recorded at the previous step: at the
    second step (other examples of the same channels) its statistics match float64 to the
    tolerances up to |mean| / std = 1e3, for float32 and bfloat16 inputs. The first step
    (shift 0 at init) already records an accurate mean, which is all the shift needs."""
    both, _, _ = large_mean_data(ratio, dtype, seed=1, shape=(64, 7, 7, 16))
    first, second = both[:32], both[32:]
    norm = BatchStatsNorm()
    variables = norm.init(jax.random.key(0), jnp.asarray(first[:1], dtype), train=True)
    for batch in (first, second):
        _, updates = norm.apply(variables, jnp.asarray(batch, dtype), train=True, mutable=True)
        variables = {**variables, **updates}
        stats = updates["batch_stats"]
    assert_close_to_float64(second, stats["mean"], stats["var"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("offset", [0.0, 3.0, 10.0])
def test_one_pass_moments_tolerate_a_shift_off_by_some_std(ratio, dtype, offset):
    """`moments` with a shift `offset` standard deviations away from the batch mean (a
    stale previous-step mean) stays within the tolerances; without a shift (two passes) too."""
    x, mean, std = large_mean_data(ratio, dtype, seed=3)
    shift = jnp.asarray(mean + offset * std, jnp.float32)
    got = moments(jnp.asarray(x, dtype), (0, 1, 2), shift=shift)
    assert_close_to_float64(x, *got, var_tol=VAR_TOL * (1 + offset**2 / 10))
    assert_close_to_float64(x, *moments(jnp.asarray(x, dtype), (0, 1, 2)))


def test_plain_one_pass_variance_would_fail_these_tolerances():
    """Shift 0 (the plain E[x**2] - E[x]**2) at |mean| / std = 1e3: what the shift is for."""
    x, _, _ = large_mean_data(1e3, jnp.float32, seed=3)
    mean, var = moments(jnp.asarray(x), (0, 1, 2), shift=jnp.zeros(16))
    ref_var = x.astype(np.float64).var(axis=(0, 1, 2))
    assert np.max(np.abs(np.asarray(var) - ref_var) / ref_var) > 100 * VAR_TOL


def test_one_pass_statistics_pool_exactly_over_devices(mesh_1d):
    """Per-device one-pass statistics around a shared shift (the replicated recorded mean),
    pooled over all devices, equal float64's of the global batch at |mean| / std = 1e3."""
    x = make_data(seed=5) + 1e3 * 1.5
    norm = BatchStatsNorm(axis_name="data", group_size=0)
    variables = norm.init(jax.random.key(0), x[:1], train=True)
    shift = x.astype(np.float64).mean(axis=(0, 1, 2)) + 1.5  # a step-old mean, off by 1 std
    variables = {**variables, "batch_stats": {"mean": jnp.asarray(shift, jnp.float32),
                                              "var": jnp.ones(5)}}  # fmt: skip

    def per_device(v, xb):
        _, updates = norm.apply(v, xb, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]["mean"][None], updates["batch_stats"]["var"][None]

    spec = P("data")
    fn = jax.jit(jax.shard_map(per_device, mesh=mesh_1d, in_specs=(P(), spec),
                               out_specs=(spec, spec)))  # fmt: skip
    mean, var = map(np.asarray, fn(variables, jax.device_put(x, NamedSharding(mesh_1d, spec))))
    for d in range(NDEV):
        assert_close_to_float64(x, mean[d], var[d])


def test_gradient_with_a_stale_shift_equals_float64_two_pass():
    """With the recorded mean 2 std off this batch's and |mean| / std = 100, gradients
    w.r.t. input, scale and bias equal jax.grad of the float64 two-pass formula."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(8, 5, 5, 6)) * 3.0 + 300.0
    w = rng.normal(size=x.shape)
    scale, bias = rng.normal(size=(6,)), rng.normal(size=(6,))
    norm = BatchStatsNorm()
    variables = norm.init(jax.random.key(0), jnp.zeros(x.shape, jnp.float32), train=True)
    stale = jnp.asarray(x.mean(axis=(0, 1, 2)) + 6.0, jnp.float32)
    variables = {**variables, "batch_stats": {"mean": stale, "var": jnp.ones(6)}}

    def ours(x, scale, bias):
        v = {**variables, "params": {"scale": scale, "bias": bias}}
        y, _ = norm.apply(v, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * w)

    def plain(x, scale, bias):
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean((x - mean) ** 2, axis=(0, 1, 2))
        return jnp.sum(jnp.sin((x - mean) / jnp.sqrt(var + EPS) * scale + bias) * w)

    got = jax.grad(ours, argnums=(0, 1, 2))(
        *[jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
    )
    with jax.enable_x64(True):
        want = jax.grad(plain, argnums=(0, 1, 2))(
            *[jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
        )
        want = [np.asarray(r) for r in want]
    # Input gradients carry float32 rounding of x ~ 300 (3e-5 relative to the spread).
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-3 * np.max(np.abs(r)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize(
    "shape,axes", [((6, 5, 5, 8), (0, 1, 2)), ((3, 4, 3, 3, 8), (1, 2, 3))], ids=["nhwc", "ghost"]
)
def test_shifted_sums_derivative_is_autodiffs_bit_for_bit(dtype, shape, axes):
    """The one-pass sums' hand-written derivative for 16-bit inputs (recomputing `x - c` in
    the backward pass instead of saving it) equals JAX's derivative of the plain formula
    exactly, jitted and not; and so do the whole `BatchStatsNorm`'s input and parameter
    gradients (float32 inputs keep JAX's own derivative)."""
    from lmsgd.models import normalization

    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(3.0, 2.0, shape), dtype)
    c = jnp.asarray(rng.normal(3.0, 1.0, shape[-1]), jnp.float32)
    out_shape = [s for i, s in enumerate(shape) if i not in axes]
    g = tuple(jnp.asarray(rng.normal(size=out_shape), jnp.float32) for _ in range(2))

    def vjp(f, x):
        return jax.vjp(lambda x: f(x, c, axes), x)

    for wrap in (jax.jit, lambda f: f):
        got, got_vjp = vjp(normalization._shifted_sums, x)
        want, want_vjp = vjp(normalization._shifted_moments, x)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        (dx,), (dx_ref,) = wrap(got_vjp)(g), wrap(want_vjp)(g)
        assert dx.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))
        assert np.any(np.asarray(dx, np.float32) != 0)

    # The layer: normalize + statistics with `recompute_centred` (the GPU choice), against
    # the same layer with JAX's derivative (the default).
    ghost = 3 if len(shape) == 5 else 0
    xs = x.reshape(-1, *shape[-3:]) if len(shape) == 5 else x
    variables = BatchStatsNorm(dtype=dtype).init(jax.random.key(0), xs, train=False)
    variables = {**variables, "batch_stats": {"mean": c, "var": jnp.ones_like(c)}}
    dy = jnp.asarray(rng.normal(size=xs.shape), dtype)

    def grads(recompute):
        norm = BatchStatsNorm(dtype=dtype, virtual_batch_size=ghost, recompute_centred=recompute)

        def loss(params, x):
            y, _ = norm.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])  # fmt: skip
            return jnp.sum(y.astype(jnp.float32) * dy.astype(jnp.float32))

        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], xs)

    got = grads(True)
    want = grads(False)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
