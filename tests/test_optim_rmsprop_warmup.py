"""rmsprop_warmup against independent float64 numpy implementations of docs/recipe.md section 1."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmsgd.optim import RMSpropWarmupState, alpha_sgd_schedule, rmsprop_warmup

MU1, MU2, EPS, ETA_RMS = 0.9, 0.99, 1e-8, 3e-4
STEPS_PER_EPOCH = 4  # 60 steps = 15 epochs: crosses beta_center (step 40) and 12.5 (step 50)
NUM_STEPS = 60


# ----------------------------------------------------------------------------- references
def np_alpha_sgd(step, steps_per_epoch, center=10.0, period=5.0):
    """docs/recipe.md section 1, written out independently of lmsgd.optim.schedules."""
    e = step / steps_per_epoch
    if e < center:
        return 0.5 * math.exp(2 * (e - center) / period)
    if e < center + period / 2:
        return 0.5 + (e - center) / period
    return 1.0


def np_eta(step):
    # Changes mid-run (and not at an epoch boundary), so "eta outside Delta" is exercised.
    return 0.8 if step < 23 else (0.8 - 0.01 * (step - 23) if step < 45 else 0.12)


def jnp_eta(step):
    return jnp.where(step < 23, 0.8, jnp.where(step < 45, 0.8 - 0.01 * (step - 23), 0.12))


def np_rmsprop_warmup(theta, grads, etas, alphas, eta_rms=ETA_RMS, decay_per_element=0.0):
    """The three update equations, verbatim, in float64. Returns thetas, ms and Deltas.

    ``decay_per_element``: L2 weight decay added to each gradient element (docs/recipe.md s.4)."""
    theta = theta.astype(np.float64)
    m, delta = np.zeros_like(theta), np.zeros_like(theta)
    out = []
    for g, eta, a in zip(grads, etas, alphas):
        g = g + decay_per_element * theta
        m = MU2 * m + (1 - MU2) * g**2
        alpha_rmsprop = (1 - a) * eta_rms / eta
        delta = MU1 * delta - (a + alpha_rmsprop / (np.sqrt(m) + EPS)) * g
        theta = theta + eta * delta
        out.append((theta, m, delta))
    return out


def make_params(rng):
    # Mixed containers (dict, tuple) and ranks, including a scalar leaf.
    return {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=(4,))},
        "pair": (rng.normal(size=(5, 3)), rng.normal(size=())),
    }


def random_grads(rng, params, n):
    # Per-step scales over 4 orders of magnitude so that m really matters.
    scales = 10.0 ** rng.uniform(-3, 1, size=n)
    return [jax.tree.map(lambda p, s=s: s * rng.normal(size=np.shape(p)), params) for s in scales]


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def run_jax(tx, params, grads, dtype):
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        g = jax.tree.map(lambda x: jnp.asarray(x, dtype), g)
        updates, state = update(g, state)
        params = optax.apply_updates(params, updates)
        out.append((params, updates, state))
    return out


# ----------------------------------------------------------------------------- main check
@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("learning_rate_can_be_zero", [True, False])
def test_matches_numpy_reference_across_the_hand_over(learning_rate_can_be_zero, saturate):
    rng = np.random.default_rng(0)
    params = make_params(rng)
    grads = random_grads(rng, params, NUM_STEPS)
    etas = [np_eta(t) for t in range(NUM_STEPS)]
    alphas = [np_alpha_sgd(t, STEPS_PER_EPOCH) for t in range(NUM_STEPS)]
    # The run must cover all three branches of alpha_sgd.
    assert alphas[39] < 0.5 <= alphas[40] < 1.0 and alphas[49] < 1.0 == alphas[50]
    ref = np_rmsprop_warmup(flat(params), [flat(g) for g in grads], etas, alphas)

    with jax.enable_x64(True):
        tx = rmsprop_warmup(
            jnp_eta,
            alpha_sgd_schedule(STEPS_PER_EPOCH),
            rmsprop_learning_rate=ETA_RMS,
            learning_rate_can_be_zero=learning_rate_can_be_zero,
            saturate=saturate,
        )
        got = run_jax(tx, params, grads, jnp.float64)
        assert got[0][2].m["conv"]["kernel"].dtype == jnp.float64

    prev_theta = flat(params)
    for t, ((theta, m, delta), (p, u, s)) in enumerate(zip(ref, got)):
        err = f"step {t}"
        np.testing.assert_allclose(flat(p), theta, rtol=1e-6, err_msg=err)
        np.testing.assert_allclose(flat(u), theta - prev_theta, rtol=1e-6, err_msg=err)
        np.testing.assert_allclose(flat(s.m), m, rtol=1e-6, err_msg=err)
        np.testing.assert_allclose(flat(s.delta), delta, rtol=1e-6, err_msg=err)
        assert int(s.count) == t + 1
        prev_theta = theta


@pytest.mark.parametrize("learning_rate_can_be_zero", [True, False])
def test_weight_decay_inside_matches_numpy_reference(learning_rate_can_be_zero):
    """weight_decay (kernels only, via a mask) is L2 on the gradient before everything else."""
    rng = np.random.default_rng(3)
    params = make_params(rng)
    grads = random_grads(rng, params, 30)
    etas = [np_eta(t) for t in range(30)]
    alphas = [np_alpha_sgd(t, STEPS_PER_EPOCH) for t in range(30)]
    wd = 0.05  # large, so that a missing or unmasked decay shows
    mask = lambda tree: jax.tree.map(lambda p: np.ndim(p) > 1, tree)
    per_element = flat(
        jax.tree.map(lambda p, on: np.full(np.shape(p), wd * on), params, mask(params))
    )
    assert 0 < per_element.sum() < wd * per_element.size  # some leaves decay, some do not
    ref = np_rmsprop_warmup(flat(params), [flat(g) for g in grads], etas, alphas,
                            decay_per_element=per_element)  # fmt: skip

    with jax.enable_x64(True):
        tx = rmsprop_warmup(
            jnp_eta, alpha_sgd_schedule(STEPS_PER_EPOCH), rmsprop_learning_rate=ETA_RMS,
            learning_rate_can_be_zero=learning_rate_can_be_zero, weight_decay=wd,
            weight_decay_mask=mask,
        )  # fmt: skip
        p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        state, update = tx.init(p), jax.jit(tx.update)
        for t, (g, (theta, m, delta)) in enumerate(zip(grads, ref)):
            u, state = update(jax.tree.map(jnp.asarray, g), state, p)
            p = optax.apply_updates(p, u)
            np.testing.assert_allclose(flat(p), theta, rtol=1e-6, err_msg=f"step {t}")
            np.testing.assert_allclose(flat(state.m), m, rtol=1e-6, err_msg=f"step {t}")
            np.testing.assert_allclose(flat(state.delta), delta, rtol=1e-6, err_msg=f"step {t}")


def test_weight_decay_inside_equals_add_decayed_weights_in_float32():
    """Bit for bit what optax.add_decayed_weights before rmsprop_warmup computes."""
    rng = np.random.default_rng(4)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), make_params(rng))
    grads = random_grads(rng, params, 12)
    mask = lambda tree: jax.tree.map(lambda p: jnp.ndim(p) > 1, tree)
    lr, alpha = jnp_eta, alpha_sgd_schedule(1)
    inside = rmsprop_warmup(lr, alpha, weight_decay=1e-2, weight_decay_mask=mask)
    chained = optax.chain(optax.add_decayed_weights(1e-2, mask=mask), rmsprop_warmup(lr, alpha))

    def run(tx):
        p, state = params, tx.init(params)

        @jax.jit
        def step(p, state, g):
            u, state = tx.update(g, state, p)
            return optax.apply_updates(p, u), state

        for g in grads:
            p, state = step(p, state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g))
        return p

    np.testing.assert_array_equal(flat(run(inside)), flat(run(chained)))


def test_weight_decay_needs_params():
    tx = rmsprop_warmup(0.1, 0.5, weight_decay=1e-4)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="weight_decay needs `params`"):
        tx.update(params, tx.init(params))


def test_float32_tracks_float64_reference():
    # Same run in float32: each step rounds at ~6e-8 relative and errors in theta accumulate
    # additively over 60 steps, so 1e-5 relative is a loose but meaningful bound.
    rng = np.random.default_rng(1)
    params = make_params(rng)
    grads = random_grads(rng, params, NUM_STEPS)
    etas = [np_eta(t) for t in range(NUM_STEPS)]
    alphas = [np_alpha_sgd(t, STEPS_PER_EPOCH) for t in range(NUM_STEPS)]
    ref = np_rmsprop_warmup(flat(params), [flat(g) for g in grads], etas, alphas)
    tx = rmsprop_warmup(jnp_eta, alpha_sgd_schedule(STEPS_PER_EPOCH))
    got = run_jax(tx, params, grads, jnp.float32)
    np.testing.assert_allclose(flat(got[-1][0]), ref[-1][0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- edge cases
def test_alpha_zero_is_rmsprop_with_momentum():
    """alpha_sgd = 0, constant eta: v_t = mu1 v_{t-1} - eta_rms g / (sqrt(m) + eps)."""
    rng = np.random.default_rng(2)
    params = make_params(rng)
    grads = random_grads(rng, params, 30)
    theta, m, v = flat(params), 0.0, 0.0
    refs = []
    for g in map(flat, grads):
        m = MU2 * m + (1 - MU2) * g**2
        v = MU1 * v - ETA_RMS * g / (np.sqrt(m) + EPS)
        theta = theta + v
        refs.append(theta)
    with jax.enable_x64(True):
        got = run_jax(rmsprop_warmup(0.37, 0.0), params, grads, jnp.float64)
        # optax's own RMSprop with momentum is the same algorithm (eps outside the sqrt).
        ox = optax.rmsprop(ETA_RMS, decay=MU2, eps=EPS, eps_in_sqrt=False, momentum=MU1)
        got_optax = run_jax(ox, params, grads, jnp.float64)
    for t, ((p, _, _), (po, _, _), ref) in enumerate(zip(got, got_optax, refs)):
        np.testing.assert_allclose(flat(p), ref, rtol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(flat(po), ref, rtol=1e-6, err_msg=f"optax, step {t}")


def test_alpha_one_is_momentum_sgd_with_eta_outside():
    """alpha_sgd = 1: b_t = mu1 b_{t-1} + g_t, theta_t = theta_{t-1} - eta_t b_t."""
    rng = np.random.default_rng(3)
    params = make_params(rng)
    grads = random_grads(rng, params, NUM_STEPS)
    theta, b = flat(params), 0.0
    refs = []
    for t, g in enumerate(map(flat, grads)):
        b = MU1 * b + g
        theta = theta - np_eta(t) * b
        refs.append(theta)
    with jax.enable_x64(True):
        got = run_jax(rmsprop_warmup(jnp_eta, 1.0), params, grads, jnp.float64)
    for t, ((p, _, _), ref) in enumerate(zip(got, refs)):
        np.testing.assert_allclose(flat(p), ref, rtol=1e-6, err_msg=f"step {t}")


def test_zero_gradients_give_zero_updates_and_finite_state():
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = rmsprop_warmup(0.5, alpha_sgd_schedule(2))
    state = tx.init(params)
    for _ in range(3):
        updates, state = jax.jit(tx.update)(zeros, state)
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
    # Zero gradients after non-zero ones: momentum decays, no 0/0.
    ones = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(ones, state)
    updates, state = tx.update(zeros, state)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((updates, state)))
    assert all(np.all(np.asarray(u) != 0) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("scale", [1e15, 1e25, 1e30])
def test_very_large_gradients_stay_finite_in_float32(scale):
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    tx = rmsprop_warmup(0.1, alpha_sgd_schedule(2))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(10):
        g = {"w": jnp.asarray(scale * rng.normal(size=(4, 3)), jnp.float32)}
        updates, state = update(g, state)
        for x in jax.tree.leaves((updates, state)):
            assert np.all(np.isfinite(np.asarray(x, np.float64))), (scale, x)


def test_unsaturated_huge_gradients_behave_like_optax_scale_by_rms():
    """saturate=False: g^2 overflows to inf, m is inf and the RMSprop term 0 for that element
    (as optax.scale_by_rms); the update stays finite (no NaN), the SGD term exact."""
    params = {"w": jnp.zeros((3,), jnp.float32)}
    tx = rmsprop_warmup(0.1, 0.5, saturate=False)
    g = {"w": jnp.asarray([1e25, 1.0, -2.0], jnp.float32)}
    updates, state = jax.jit(tx.update)(g, tx.init(params))
    assert np.isinf(state.m["w"][0]) and np.all(np.isfinite(state.m["w"][1:]))
    assert np.all(np.isfinite(updates["w"])) and np.all(np.isfinite(state.delta["w"]))
    np.testing.assert_allclose(state.delta["w"][0], -0.5 * 1e25, rtol=1e-6)  # SGD part only
    m = optax.scale_by_rms(decay=MU2, eps=EPS, initial_scale=0.0, eps_in_sqrt=False)
    _, rms_state = m.update(g, m.init(params))
    np.testing.assert_array_equal(state.m["w"], rms_state.nu["w"])


def test_zero_and_tiny_learning_rate():
    """eta = 0: the update is the eta -> 0+ limit (the RMSprop step, finite) and Delta keeps
    only its SGD part; tiny eta is finite and close to that limit."""
    rng = np.random.default_rng(5)
    g = {"w": jnp.asarray(rng.normal(size=(6,)), jnp.float32)}
    a = 0.3
    g_np = np.asarray(g["w"], np.float64)
    rms_step = -(1 - a) * ETA_RMS * g_np / (np.sqrt((1 - MU2) * g_np**2) + EPS)
    results = {}
    for eta in (0.0, 1e-30, 1e-20):
        tx = rmsprop_warmup(eta, a)
        state = tx.init(g)
        u, state = jax.jit(tx.update)(g, state)
        assert np.all(np.isfinite(u["w"])) and np.all(np.isfinite(state.delta["w"]))
        np.testing.assert_allclose(u["w"], rms_step, rtol=1e-5)
        results[eta] = state
    np.testing.assert_allclose(results[0.0].delta["w"], -a * g_np, rtol=1e-6)
    # A schedule that starts at 0 (e.g. a warm-up from 0) then goes on normally.
    tx = rmsprop_warmup(lambda step: 0.1 * step, a)
    state = tx.init(g)
    for _ in range(5):
        u, state = jax.jit(tx.update)(g, state)
        assert np.all(np.isfinite(u["w"])) and np.all(np.isfinite(state.delta["w"]))


def test_learning_rate_declared_positive_gives_zero_step_at_zero():
    """learning_rate_can_be_zero=False: identical for eta > 0 (reference test above); a zero
    eta gives a zero step (not the limit) and the same finite Delta as the limit form."""
    g = {"w": jnp.asarray(np.random.default_rng(6).normal(size=(6,)), jnp.float32)}
    tx = rmsprop_warmup(0.0, 0.3, learning_rate_can_be_zero=False)
    u, state = jax.jit(tx.update)(g, tx.init(g))
    np.testing.assert_array_equal(u["w"], np.zeros(6, np.float32))
    np.testing.assert_allclose(state.delta["w"], -0.3 * np.asarray(g["w"]), rtol=1e-6)


# ----------------------------------------------------------------------------- state, dtypes
@pytest.mark.parametrize(
    ("param_dtype", "delta_dtype", "delta_bytes"),
    [(jnp.float32, None, 4), (jnp.bfloat16, None, 4), (jnp.bfloat16, jnp.bfloat16, 2)],
)
def test_state_is_two_parameter_sized_buffers(param_dtype, delta_dtype, delta_bytes):
    params = {
        "dense": {"kernel": jnp.ones((7, 5), param_dtype), "bias": jnp.ones((5,), param_dtype)},
        "scale": jnp.ones((), param_dtype),
    }
    n_params = sum(x.size for x in jax.tree.leaves(params))
    tx = rmsprop_warmup(0.1, alpha_sgd_schedule(10), delta_dtype=delta_dtype)
    state = tx.init(params)
    assert isinstance(state, RMSpropWarmupState)
    assert state.count.shape == () and state.count.dtype == jnp.int32
    # Leaves: the counter plus one per parameter for each of m and Delta, nothing more.
    assert len(jax.tree.leaves(state)) == 1 + 2 * len(jax.tree.leaves(params))
    assert jax.tree.structure(state.m) == jax.tree.structure(params)
    assert jax.tree.structure(state.delta) == jax.tree.structure(params)
    total_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    assert total_bytes == 4 + n_params * (4 + delta_bytes)  # m always float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.m))

    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, new_state = jax.jit(tx.update)(grads, state)
    # Updates come back in the parameter dtype; the state keeps its dtypes.
    assert all(u.dtype == param_dtype for u in jax.tree.leaves(updates))
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


def test_bfloat16_params_follow_float32_params():
    rng = np.random.default_rng(6)
    params = make_params(rng)
    grads = random_grads(rng, params, 20)
    tx = rmsprop_warmup(jnp_eta, alpha_sgd_schedule(1))  # epochs 0..19: all three branches
    f32 = run_jax(tx, params, grads, jnp.float32)
    bf16 = run_jax(tx, params, grads, jnp.bfloat16)
    for t, ((_, u32, _), (_, u16, s16)) in enumerate(zip(f32, bf16)):
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((s16.m, s16.delta)))
        # bf16 rounds gradients and updates at ~0.4%; the state is float32, so the error does
        # not grow over steps. Compared as norms: single entries can cancel to ~0.
        rel = np.linalg.norm(flat(u16) - flat(u32)) / np.linalg.norm(flat(u32))
        assert rel < 0.02, (t, rel)


def test_in_optax_chain_under_jit():
    rng = np.random.default_rng(7)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), make_params(rng))
    grads = [
        jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g) for g in random_grads(rng, params, 5)
    ]
    wd, lr, alpha = 1e-2, 0.3, alpha_sgd_schedule(1)
    chained = optax.chain(optax.add_decayed_weights(wd), rmsprop_warmup(lr, alpha))
    alone = rmsprop_warmup(lr, alpha)
    p1, p2 = params, params
    s1, s2 = chained.init(p1), alone.init(p2)
    step = jax.jit(chained.update)
    for g in grads:
        u1, s1 = step(g, s1, p1)
        u2, s2 = alone.update(jax.tree.map(lambda gi, pi: gi + wd * pi, g, p2), s2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    np.testing.assert_allclose(flat(p1), flat(p2), rtol=1e-6, atol=1e-7)


def test_schedules_see_step_before_increment():
    seen = []

    def lr(step):
        jax.debug.callback(lambda s: seen.append(int(s)), step)
        return 0.1

    tx = rmsprop_warmup(lr, 0.5)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(params, state)
    jax.effects_barrier()
    assert seen == [0, 1, 2] and int(state.count) == 3


# ----------------------------------------------------------------------------- memory traffic
@pytest.mark.parametrize(
    ("learning_rate_can_be_zero", "bytes_per_param"), [(True, 44), (False, 36)]
)
def test_compiled_update_keeps_no_parameter_sized_temporary(
    learning_rate_can_be_zero, bytes_per_param
):
    """XLA:CPU compiles one update into three single-output loops per tensor (m_t, Delta_t,
    the step) and keeps no parameter-sized temporary. Before, a select on eta = 0 made XLA
    keep the RMSprop direction as a buffer of its own (a fourth loop, 52 bytes per parameter);
    the exact eta = 0 limit costs the step loop a read of g and m_t (44); without it the step
    reads Delta_t alone (36, the least three single-output loops can move)."""
    if jax.default_backend() != "cpu":
        pytest.skip("fusion figures are those of XLA:CPU")
    shapes = [(3, 3, 64, 64), (256, 128), (128,)]
    params = {f"p{i}": jnp.zeros(s, jnp.float32) for i, s in enumerate(shapes)}
    n = sum(math.prod(s) for s in shapes)
    tx = rmsprop_warmup(
        jnp_eta,
        alpha_sgd_schedule(STEPS_PER_EPOCH),
        learning_rate_can_be_zero=learning_rate_can_be_zero,
    )
    compiled = jax.jit(tx.update).lower(params, tx.init(params)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 4 * min(math.prod(s) for s in shapes), temp  # scalars only
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # Floor 24 (read g, m, Delta; write m, Delta, step); three single-output loops (XLA:CPU
    # has no multi-output fusion) need 12 (m_t) + 16 (Delta_t) + 8 (step) at least.
    assert cost["bytes accessed"] <= bytes_per_param * n + 1024, cost["bytes accessed"] / n


def test_weight_decay_mask_must_be_static_bools_per_tensor():
    """A mask of traced values, of per-element arrays or of another structure is refused with
    one clear message; numpy bools work like Python bools."""
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    make = lambda mask: rmsprop_warmup(0.1, 0.5, weight_decay=0.1, weight_decay_mask=mask)
    tx = make(lambda p: {"w": np.bool_(True), "b": np.bool_(False)})
    ref = make(lambda p: {"w": True, "b": False})
    got = jax.jit(tx.update)(grads, tx.init(params), params)[0]
    want = jax.jit(ref.update)(grads, ref.init(params), params)[0]
    jax.tree.map(np.testing.assert_array_equal, got, want)
    for bad, says in [
        (lambda p: jax.tree.map(lambda x: jnp.any(x > 0), p), "known when tracing"),
        (lambda p: jax.tree.map(lambda x: np.ones(x.shape, bool), p), "one bool per"),
        (lambda p: {"w": True}, "shaped like the parameters"),
    ]:
        tx = make(bad)
        with pytest.raises(ValueError, match="weight_decay_mask") as info:
            jax.jit(tx.update)(grads, tx.init(params), params)
        assert says in str(info.value)


@pytest.mark.parametrize("learning_rate_can_be_zero", [True, False])
def test_without_rms_buffer_after_the_hand_over_follows_the_reference_and_the_full_update(
    learning_rate_can_be_zero,
):
    """From the hand-over on, the state without m (`without_rms_buffer`) gives the numpy
    reference's parameters and velocity, and in float32 the same bits as the update that
    still carries m; its compiled update reads no m."""
    from lmsgd.optim import handover_complete_step, with_rms_buffer, without_rms_buffer

    rng = np.random.default_rng(7)
    params = make_params(rng)
    grads = random_grads(rng, params, NUM_STEPS)
    alpha = alpha_sgd_schedule(STEPS_PER_EPOCH)
    switch = handover_complete_step(alpha, NUM_STEPS)
    assert switch == 51  # alpha_sgd = 1 from step 50 (epoch 12.5), one step of margin
    wd, mask = 0.05, (lambda tree: jax.tree.map(lambda p: np.ndim(p) > 1, tree))
    per_element = flat(
        jax.tree.map(lambda p, on: np.full(np.shape(p), wd * on), params, mask(params))
    )
    etas = [np_eta(t) for t in range(NUM_STEPS)]
    alphas = [np_alpha_sgd(t, STEPS_PER_EPOCH) for t in range(NUM_STEPS)]
    ref = np_rmsprop_warmup(flat(params), [flat(g) for g in grads], etas, alphas,
                            decay_per_element=per_element)  # fmt: skip
    tx = rmsprop_warmup(
        jnp_eta, alpha, rmsprop_learning_rate=ETA_RMS, weight_decay=wd, weight_decay_mask=mask,
        learning_rate_can_be_zero=learning_rate_can_be_zero,
    )  # fmt: skip
    update = jax.jit(tx.update)
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    s = tx.init(p)
    p_full, s_full = p, s
    for t, g in enumerate(grads):
        g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
        if t == switch:
            s = without_rms_buffer(s)
            assert s.m is None and s_full.m is not None
            # Its compiled update takes no m: three fewer buffers of each tensor's size.
            args = jax.jit(tx.update).lower(g, s, p).compile().memory_analysis()
            full_args = jax.jit(tx.update).lower(g, s_full, p).compile().memory_analysis()
            m_bytes = sum(x.size * 4 for x in jax.tree.leaves(s_full.m))
            assert full_args.argument_size_in_bytes - args.argument_size_in_bytes == m_bytes
        u, s = update(g, s, p)
        p = optax.apply_updates(p, u)
        u_full, s_full = update(g, s_full, p_full)
        p_full = optax.apply_updates(p_full, u_full)
        for a, b in zip(jax.tree.leaves((p, s.delta)), jax.tree.leaves((p_full, s_full.delta))):
            np.testing.assert_array_equal(a, b, err_msg=f"step {t}")
        theta, _, delta = ref[t]
        np.testing.assert_allclose(flat(p), theta, rtol=2e-4, atol=1e-5, err_msg=f"step {t}")
        np.testing.assert_allclose(flat(s.delta), delta, rtol=2e-4, atol=1e-4, err_msg=f"{t}")
    assert s.m is None and int(s.count) == NUM_STEPS
    # Back to the full layout (checkpoints): m where it was, delta untouched.
    back = with_rms_buffer(s, lambda d: jax.tree.map(lambda x: jnp.zeros_like(x), d))
    assert jax.tree.structure(back) == jax.tree.structure(s_full)
    assert all(not np.any(x) for x in jax.tree.leaves(back.m))
