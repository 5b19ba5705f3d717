"""The optax contract, run over every optimizer the factory builds (in the style of optax's
own ``alias_test.py``): convergence, the wrappers users reach for, state access and dtypes,
each compared with an independent reference (float64 numpy, or a plainly built optimizer).

Rows: every recipe of ``config.optimizer.name`` as ``build_recipe`` builds it, plus the two
public transformations on their own (``rmsprop_warmup``, and ``scale_by_rmsprop_warmup``
followed by ``optax.scale_by_learning_rate``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmsgd.optim import (
    OPTIMIZER_NAMES,
    RMSpropWarmupState,
    build_recipe,
    default_optimizer_config,
    rmsprop_warmup,
    scale_by_rmsprop_warmup,
)

SPE = 10  # steps per epoch: the hand-over of rmsprop_warmup is centred on step 100
BUILD = dict(global_batch_size=256, steps_per_epoch=SPE, num_epochs=300)

# Constant rates with which each recipe solves the quadratic below in 2,000 steps.
RECIPE_SETTINGS = {
    "rmsprop_warmup": dict(base_learning_rate=0.02, rmsprop_warmup={"rmsprop_learning_rate": 3e-3}),
    "momentum": dict(base_learning_rate=0.02),
    "nesterov": dict(base_learning_rate=0.02),
    "lars": dict(base_learning_rate=0.02, lars={"trust_coefficient": 0.5}),
    "lamb": dict(base_learning_rate=0.02),
}
assert set(RECIPE_SETTINGS) == set(OPTIMIZER_NAMES), "every recipe is under test"


def recipe_config(name: str, **extra):
    cfg = default_optimizer_config()
    cfg.update(name=name, schedule="constant")
    for key, value in {**RECIPE_SETTINGS[name], **extra}.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def scale_by_rmsprop_warmup_then_lr(learning_rate, alpha_sgd, alpha_rmsprop, eps=1e-8):
    """The building block as a user chains it (numeric arguments only: inject-able)."""
    return optax.chain(
        scale_by_rmsprop_warmup(alpha_sgd, alpha_rmsprop, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


# Row -> (factory, kwargs, static_args): factory(**kwargs) is the transformation.
def _row(name: str):
    if name in OPTIMIZER_NAMES:
        built = build_recipe(recipe_config(name), **BUILD)
        return built.transform, dict(built.kwargs), built.static_args
    if name == "rmsprop_warmup alias":
        return rmsprop_warmup, dict(learning_rate=0.02, alpha_sgd=0.3), ()
    if name == "scale_by_rmsprop_warmup chain":
        kwargs = dict(learning_rate=0.02, alpha_sgd=0.3, alpha_rmsprop=0.7 * 3e-4 / 0.02)
        return scale_by_rmsprop_warmup_then_lr, kwargs, ()
    raise KeyError(name)


ROWS = (*OPTIMIZER_NAMES, "rmsprop_warmup alias", "scale_by_rmsprop_warmup chain")


def make(name: str, **overrides) -> optax.GradientTransformation:
    factory, kwargs, _ = _row(name)
    return factory(**{**kwargs, **overrides})


def make_injected(name: str, **overrides):
    """``inject_hyperparams`` around the row's factory. The recipes' learning rate is a
    (constant) schedule; here it is the number 0.02 it equals, so that it is a hyperparameter
    that can be set (inject_hyperparams evaluates a schedule itself, and tree_set on it would
    have no effect), and the inner state has the plain optimizer's structure (optax's
    scale_by_learning_rate keeps a count only for schedules)."""
    factory, kwargs, static = _row(name)
    kwargs = {**kwargs, "learning_rate": 0.02, **overrides}
    return optax.inject_hyperparams(factory, static_args=static)(**kwargs)


# ----------------------------------------------------------------------------- problems
TARGET = {"kernel": np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -0.5]]), "bias": np.array([0.3, -2, 1])}


def init_params(dtype=jnp.float32):
    return {"kernel": jnp.full((2, 3), -1.0, dtype), "bias": jnp.array([10.0, 1.0, -1.0], dtype)}


def quadratic(params):
    return sum(jnp.sum((params[k] - TARGET[k]) ** 2) for k in TARGET)


def random_grads(seed: int, n: int, dtype=np.float32):
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 1, size=n)  # RMSprop's normalization matters
    return [
        {k: (s * rng.normal(size=np.shape(v))).astype(dtype) for k, v in TARGET.items()}
        for s in scales
    ]


def run(tx, grads, params=None, state=None):
    """Updates and states of ``tx`` over ``grads`` (jitted update), params moving."""
    params = init_params() if params is None else params
    state = tx.init(params) if state is None else state
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append((u, state, params))
    return out


def assert_trees_close(a, b, rtol=1e-6, atol=0.0, what=""):
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol,
            err_msg=what,
        )  # fmt: skip


# ----------------------------------------------------------------------------- numpy references
def np_alpha_sgd(step, center=10.0, period=5.0, spe=SPE):
    e = step / spe
    if e < center:
        return 0.5 * math.exp(2 * (e - center) / period)
    return 0.5 + (e - center) / period if e < center + period / 2 else 1.0


def np_trust(p, u):
    pn, un = np.linalg.norm(p), np.linalg.norm(u)
    return pn / un if pn > 0 and un > 0 else 1.0


def numpy_reference(name: str, grads, params):
    """Float64 numpy: each recipe written out from its paper's / optax's equations with the
    config's hyperparameters (constant schedule), weight decay 1e-4 on every parameter."""
    cfg = recipe_config(name)
    lr, wd = cfg.base_learning_rate, cfg.weight_decay
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    state = {k: [np.zeros_like(v), np.zeros_like(v)] for k, v in p.items()}
    out = []
    for t, g in enumerate(grads):
        for k in p:
            gk, (a_buf, b_buf) = g[k].astype(np.float64), state[k]
            if name == "rmsprop_warmup":
                rw = cfg.rmsprop_warmup
                gk = gk + wd * p[k]
                a = np_alpha_sgd(t, rw.beta_center, rw.beta_period)
                a_buf = rw.decay * a_buf + (1 - rw.decay) * gk**2  # m
                alpha_rms = (1 - a) * rw.rmsprop_learning_rate / lr
                b_buf = rw.momentum * b_buf - (a + alpha_rms / (np.sqrt(a_buf) + rw.eps)) * gk
                p[k] = p[k] + lr * b_buf
            elif name in ("momentum", "nesterov"):
                mu = cfg[name].momentum
                gk = gk + wd * p[k]
                b_buf = mu * b_buf + gk
                step = gk + mu * b_buf if name == "nesterov" else b_buf
                p[k] = p[k] - lr * step
            elif name == "lars":
                c = cfg.lars
                adapts = p[k].ndim > 1 or not c.exclude_1d  # exclude_1d: no decay, no trust
                gk = gk + wd * p[k] if adapts else gk  # optax.lars: decay, trust, lr, momentum
                if adapts:
                    pn, gn = np.linalg.norm(p[k]), np.linalg.norm(gk)
                    if pn > 0 and gn > 0:
                        gk = gk * c.trust_coefficient * pn / (gn + c.eps)
                b_buf = c.momentum * b_buf - lr * gk  # trace of the lr-scaled update
                p[k] = p[k] + b_buf
            elif name == "lamb":
                c = cfg.lamb
                a_buf = c.b1 * a_buf + (1 - c.b1) * gk
                b_buf = c.b2 * b_buf + (1 - c.b2) * gk**2
                m_hat, v_hat = a_buf / (1 - c.b1 ** (t + 1)), b_buf / (1 - c.b2 ** (t + 1))
                u = m_hat / (np.sqrt(v_hat) + c.eps) + wd * p[k]
                p[k] = p[k] - lr * np_trust(p[k], u) * u
            state[k] = [a_buf, b_buf]
        out.append({k: v.copy() for k, v in p.items()})
    return out


# ============================================================================ the contract
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_matches_numpy_reference_step_by_step(name):
    grads = random_grads(0, 25)
    got = run(make(name), grads)
    ref = numpy_reference(name, grads, init_params())
    for t, ((_, _, p), want) in enumerate(zip(got, ref)):
        assert_trees_close(p, want, rtol=2e-5, atol=1e-6, what=f"{name} step {t}")


@pytest.mark.parametrize("name", ROWS)
def test_converges_on_a_quadratic_without_recompiling(name):
    tx = make(name)

    @jax.jit
    def step(params, state):
        grads = jax.grad(quadratic)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = init_params()
    state = tx.init(params)
    # A no-op map over the parameter-shaped state works (optax.tree_map_params).
    state = optax.tree_utils.tree_map_params(tx, lambda v: v, state)
    last = []
    for i in range(2000):
        params, state = step(params, state)
        if i >= 1800:
            last.append(params)
    assert step._cache_size() == 1, "the update recompiled"
    # Normalized updates (LAMB, LARS) at a constant rate do not settle: they circle the optimum
    # with a step of ~lr * |w| (0.05 here), in a phase that float rounding decides (jax 0.11.2
    # ends 0.075 off where 0.10.2 ends 0.01 off). The centre of the last 200 iterates is what
    # converges. Weight decay 1e-4 moves the optimum by ~1e-4 * target.
    centre = jax.tree.map(lambda *p: np.mean(np.stack(p), axis=0), *last)
    assert_trees_close(centre, TARGET, rtol=3e-2, atol=3e-2, what=name)


@pytest.mark.parametrize("name", ROWS)
def test_inject_hyperparams_equals_the_plain_optimizer(name):
    grads = random_grads(1, 4)
    plain = run(make(name, learning_rate=0.02), grads)
    injected = run(make_injected(name), grads)
    # Injected numbers are float32 arrays, not double-precision constants: `1 - b2` of LAMB
    # (b2 = 0.999) differs by ~1e-5 relative; optax's own alias test allows 1e-3 / 1e-4.
    for t, ((u, s, _), (ui, si, _)) in enumerate(zip(plain, injected)):
        assert_trees_close(ui, u, rtol=1e-4, atol=1e-8, what=f"{name} updates {t}")
        assert_trees_close(si.inner_state, s, rtol=1e-4, atol=1e-8, what=f"{name} state {t}")


@pytest.mark.parametrize("name", ROWS)
def test_inject_hyperparams_values_change_between_steps_without_recompiling(name):
    """tree_set on the injected learning rate: the next step equals an optimizer built with
    that rate from the start (constant rates, so the history does not matter at step 0),
    and the jitted update compiles once."""
    lr_key = "learning_rate"
    tx = make_injected(name)
    params = init_params()
    state = tx.init(params)
    np.testing.assert_allclose(optax.tree_utils.tree_get(state, lr_key), 0.02, rtol=1e-6)
    update = jax.jit(tx.update)
    g = random_grads(2, 1)[0]
    state = optax.tree_utils.tree_set(state, **{lr_key: jnp.float32(0.05)})
    u, state = update(g, state, params)
    if name in OPTIMIZER_NAMES:
        built = build_recipe(recipe_config(name, base_learning_rate=0.05), **BUILD)
        reference = built()
    else:
        factory, kwargs, _ = _row(name)
        reference = factory(**{**kwargs, lr_key: 0.05})
    u_ref, _ = reference.update(g, reference.init(params), params)
    assert_trees_close(u, u_ref, rtol=1e-5, atol=1e-9, what=name)
    for value in (0.01, 0.0, 0.2):
        state = optax.tree_utils.tree_set(state, **{lr_key: jnp.float32(value)})
        u, state = update(g, state, params)
    assert update._cache_size() == 1


@pytest.mark.parametrize("name", ROWS)
def test_multisteps_accumulates_then_steps_like_one_mean_gradient(name):
    grads = random_grads(3, 3)
    tx = optax.MultiSteps(make(name), every_k_schedule=3)
    params = init_params()
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads[:2]:
        u, state = update(g, state, params)
        assert_trees_close(u, jax.tree.map(np.zeros_like, g), what=f"{name} accumulating")
    u, state = update(grads[2], state, params)
    mean = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *grads)
    plain = make(name)
    u_ref, s_ref = plain.update(mean, plain.init(params), params)
    assert_trees_close(u, u_ref, rtol=1e-5, atol=1e-8, what=name)
    assert_trees_close(state.inner_opt_state, s_ref, rtol=1e-5, atol=1e-8, what=name)


@pytest.mark.parametrize("name", ROWS)
def test_apply_if_finite_skips_a_nan_step(name):
    tx = optax.apply_if_finite(make(name), max_consecutive_errors=3)
    params = init_params()
    state0 = tx.init(params)
    g, bad = (
        random_grads(4, 1)[0],
        {k: np.full(np.shape(v), np.nan, np.float32) for k, v in TARGET.items()},
    )
    update = jax.jit(tx.update)
    u, state = update(bad, state0, params)
    assert_trees_close(u, jax.tree.map(np.zeros_like, g), what=f"{name} skipped")
    assert_trees_close(state.inner_state, state0.inner_state, what=f"{name} state unchanged")
    assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
    u, state = update(g, state, params)
    plain = make(name)
    u_ref, _ = plain.update(g, plain.init(params), params)
    assert_trees_close(u, u_ref, rtol=1e-6, what=name)
    assert int(state.notfinite_count) == 0


@pytest.mark.parametrize("name", ROWS)
def test_chain_with_clipping_equals_clipping_the_gradient_first(name):
    g = {k: 10.0 * v for k, v in random_grads(5, 1)[0].items()}
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in g.values()))
    assert norm > 1.0
    clipped = {k: (v / norm).astype(np.float32) for k, v in g.items()}  # numpy clip to norm 1
    tx = optax.chain(optax.clip_by_global_norm(1.0), make(name))
    params = init_params()
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    plain = make(name)
    u_ref, _ = plain.update(clipped, plain.init(params), params)
    assert_trees_close(u, u_ref, rtol=1e-5, atol=1e-9, what=name)


@pytest.mark.parametrize("name", ROWS)
def test_masked_and_multi_transform_act_only_on_their_parameters(name):
    g = random_grads(6, 1)[0]
    params = init_params()
    kernel_only = {"kernel": params["kernel"]}
    plain = make(name)
    ref, _ = plain.update({"kernel": g["kernel"]}, plain.init(kernel_only), kernel_only)

    masked = optax.masked(make(name), {"kernel": True, "bias": False})
    u, _ = jax.jit(masked.update)(g, masked.init(params), params)
    assert_trees_close(u["kernel"], ref["kernel"], rtol=1e-6, what=f"{name} masked")
    np.testing.assert_array_equal(u["bias"], g["bias"])  # masked out: passed through

    multi = optax.multi_transform(
        {"ours": make(name), "sgd": optax.sgd(0.1)}, {"kernel": "ours", "bias": "sgd"}
    )
    u, _ = jax.jit(multi.update)(g, multi.init(params), params)
    assert_trees_close(u["kernel"], ref["kernel"], rtol=1e-6, what=f"{name} multi_transform")
    np.testing.assert_allclose(u["bias"], -0.1 * g["bias"], rtol=1e-6)


@pytest.mark.parametrize("name", ROWS)
def test_accepts_extra_args(name):
    tx = make(name)
    params = init_params()
    g = random_grads(7, 1)[0]
    u, _ = jax.jit(functools.partial(tx.update, some_extra_arg_it_ignores=1))(
        g, tx.init(params), params
    )
    u_ref, _ = tx.update(g, tx.init(params), params)
    assert_trees_close(u, u_ref, what=name)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("name", ROWS)
def test_low_precision_params_keep_update_and_state_dtypes(name, dtype):
    """Updates come back in the gradient's dtype; state dtypes are stable through a step (a
    lax.cond over the step must type-check); rmsprop_warmup keeps its state in float32."""
    tx = make(name)
    params = init_params(dtype)
    state = tx.init(params)
    grads = jax.grad(lambda p: quadratic(jax.tree.map(lambda x: x.astype(jnp.float32), p)))(params)

    @jax.jit
    def step(params, state, take):
        return jax.lax.cond(
            take, lambda: tx.update(grads, state, params), lambda: (grads, state)
        )  # fails to trace if the update changed a state dtype or shape

    updates, new_state = step(params, state, True)
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates)), name
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    ours = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, RMSpropWarmupState))
            if isinstance(s, RMSpropWarmupState)]  # fmt: skip
    assert bool(ours) == ("rmsprop_warmup" in name)
    for s in ours:
        assert {x.dtype for x in jax.tree.leaves((s.m, s.delta))} == {jnp.dtype(jnp.float32)}
        assert s.count.dtype == jnp.int32
    # bfloat16 parameters follow float32 parameters (the state is float32 either way)
    if name.startswith("rmsprop_warmup") and dtype == jnp.bfloat16:
        u32, _ = make(name).update(
            jax.tree.map(lambda x: x.astype(jnp.float32), grads),
            tx.init(init_params()), init_params(),
        )  # fmt: skip
        assert_trees_close(updates, u32, rtol=1e-2, what=name)


@pytest.mark.parametrize("name", ROWS)
def test_state_is_reachable_with_optax_tree_utils(name):
    tx = make(name)
    params = init_params()
    _, state = tx.update(random_grads(8, 1)[0], tx.init(params), params)
    if "rmsprop_warmup" not in name:
        return
    delta = optax.tree_utils.tree_get(state, "delta")
    m = optax.tree_utils.tree_get(state, "m")
    assert jax.tree.structure(delta) == jax.tree.structure(params)
    assert int(optax.tree_utils.tree_get(state, "RMSpropWarmupState").count) == 1
    zeroed = optax.tree_utils.tree_set(state, delta=jax.tree.map(jnp.zeros_like, delta))
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(
        optax.tree_utils.tree_get(zeroed, "delta")))  # fmt: skip
    assert all(float(jnp.min(x)) > 0 for x in jax.tree.leaves(m))


# ============================================================================ acceptance
def np_rmsprop_warmup_steps(theta, grads, etas, alphas, epss, eta_rms, mu1=0.9, mu2=0.99):
    """The paper's three equations in float64 with per-step eta, alpha_sgd and eps."""
    m, delta, out = np.zeros_like(theta), np.zeros_like(theta), []
    for g, eta, a, eps in zip(grads, etas, alphas, epss):
        m = mu2 * m + (1 - mu2) * g**2
        delta = mu1 * delta - (a + (1 - a) * eta_rms / eta / (np.sqrt(m) + eps)) * g
        theta = theta + eta * delta
        out.append((theta, m, delta))
    return out


def test_inject_hyperparams_learning_rate_alpha_sgd_and_eps_follow_numpy():
    """The acceptance check: learning rate, alpha_sgd and eps changed by hand between steps
    (``tree_set`` on the injected state) change every step exactly as numpy says. Gradients
    near eps in size, so that eps matters."""
    rng = np.random.default_rng(11)
    n = 8
    theta0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) * 10.0 ** rng.uniform(-6, -3) for _ in range(n)]
    etas = [0.5, 0.5, 0.1, 2.0, 0.3, 0.3, 1.0, 0.05]
    alphas = [0.0, 0.2, 0.2, 0.9, 0.5, 1.0, 0.7, 0.1]
    epss = [1e-8, 1e-4, 1e-4, 1e-6, 1e-3, 1e-5, 1e-8, 1e-4]
    eta_rms = 3e-4
    ref = np_rmsprop_warmup_steps(theta0, grads, etas, alphas, epss, eta_rms)
    fixed = np_rmsprop_warmup_steps(theta0, grads, [etas[0]] * n, [alphas[0]] * n,
                                    [epss[0]] * n, eta_rms)  # fmt: skip
    assert np.max(np.abs(ref[-1][0] - fixed[-1][0])) > 1e-6  # the changes matter

    with jax.enable_x64(True):
        tx = optax.inject_hyperparams(rmsprop_warmup)(
            learning_rate=etas[0], alpha_sgd=alphas[0], eps=epss[0], rmsprop_learning_rate=eta_rms
        )
        p = jnp.asarray(theta0)
        state = tx.init(p)
        update = jax.jit(tx.update)
        for t, (g, (theta, m, delta)) in enumerate(zip(grads, ref)):
            state = optax.tree_utils.tree_set(
                state, learning_rate=etas[t], alpha_sgd=alphas[t], eps=epss[t]
            )
            u, state = update(jnp.asarray(g), state, p)
            p = optax.apply_updates(p, u)
            inner = state.inner_state
            np.testing.assert_allclose(p, theta, rtol=1e-12, err_msg=f"step {t}")
            np.testing.assert_allclose(inner.m, m, rtol=1e-12, err_msg=f"step {t}")
            np.testing.assert_allclose(inner.delta, delta, rtol=1e-9, err_msg=f"step {t}")
        assert update._cache_size() == 1


def test_inject_hyperparams_on_scale_by_rmsprop_warmup_follows_numpy():
    """The building block with alpha_sgd, alpha_rmsprop and eps injected and changed between
    steps: its direction is -Delta_t of the paper's equations (numpy)."""
    rng = np.random.default_rng(12)
    grads = [rng.normal(size=(5,)) * 10.0 ** rng.uniform(-5, -3) for _ in range(6)]
    alphas, alpha_rms, epss = [0.1, 0.4, 0.4, 1.0, 0.0, 0.6], [2.0, 0.5, 3.0, 0.0, 1.0, 0.1], [
        1e-8, 1e-4, 1e-3, 1e-6, 1e-5, 1e-4]  # fmt: skip
    with jax.enable_x64(True):
        tx = optax.inject_hyperparams(scale_by_rmsprop_warmup)(
            alpha_sgd=alphas[0], alpha_rmsprop=alpha_rms[0], eps=epss[0]
        )
        state, update = tx.init(jnp.zeros(5)), jax.jit(tx.update)
        m, delta = np.zeros(5), np.zeros(5)
        for t, g in enumerate(grads):
            m = 0.99 * m + 0.01 * g**2
            delta = 0.9 * delta - (alphas[t] + alpha_rms[t] / (np.sqrt(m) + epss[t])) * g
            state = optax.tree_utils.tree_set(
                state, alpha_sgd=alphas[t], alpha_rmsprop=alpha_rms[t], eps=epss[t]
            )
            u, state = update(jnp.asarray(g), state)
            np.testing.assert_allclose(u, -delta, rtol=1e-10, err_msg=f"step {t}")
        assert update._cache_size() == 1


def test_scale_by_then_learning_rate_equals_the_alias_for_positive_rates():
    lr = lambda step: 0.4 * (1.0 + 0.5 * (step >= 3))
    alpha = lambda step: jnp.minimum(0.1 * step, 1.0)
    chained = optax.chain(
        scale_by_rmsprop_warmup(alpha, lambda step: (1 - alpha(step)) * 3e-4 / lr(step)),
        optax.scale_by_learning_rate(lr),
    )
    alias = rmsprop_warmup(lr, alpha, rmsprop_learning_rate=3e-4)
    grads = random_grads(9, 8)
    for t, ((u, s, _), (ua, sa, _)) in enumerate(zip(run(chained, grads), run(alias, grads))):
        assert_trees_close(u, ua, rtol=2e-6, atol=1e-9, what=f"update {t}")
        assert_trees_close(s[0].delta, sa.delta, rtol=2e-6, atol=1e-9, what=f"delta {t}")


def _bytes_per_param(tx, n=256 * 256):
    params = {"w": jnp.zeros((256, 256))}
    grads = {"w": jnp.ones((256, 256))}

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads)
    cost = compiled.compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["bytes accessed"] / n


@pytest.mark.parametrize("weight_decay", [None, 1e-4])
def test_injected_hyperparameters_cost_no_memory_traffic(weight_decay):
    """With every hyperparameter traced (inject_hyperparams), the update and apply still read
    g, m, Delta, the parameter once and write m, Delta, the parameter once on XLA:CPU
    (40 B/param; 48 with weight decay, which reads the parameter in two loops): the same
    bytes as with constants, up to the scalars."""
    kwargs = dict(learning_rate=0.1, alpha_sgd=0.3, learning_rate_can_be_zero=False,
                  saturate=False, weight_decay=weight_decay)  # fmt: skip
    plain = _bytes_per_param(rmsprop_warmup(**kwargs))
    injected = _bytes_per_param(optax.inject_hyperparams(rmsprop_warmup)(**kwargs))
    assert injected == pytest.approx(plain, abs=0.01)
    if jax.default_backend() == "cpu":
        assert plain == pytest.approx(40.0 if weight_decay is None else 48.0, abs=0.01)
