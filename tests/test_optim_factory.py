"""The optimizer factory: config defaults, validation, each optimizer training a tiny MLP."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lmsgd.optim import (
    OPTIMIZER_CONFIG_DOCS,
    OPTIMIZER_NAMES,
    SCHEDULE_NAMES,
    create_optimizer,
    default_optimizer_config,
    rmsprop_warmup,
    schedule_reaches_zero,
    validate_optimizer_config,
)

BUILD = dict(global_batch_size=32768, steps_per_epoch=39, num_epochs=90)


# ----------------------------------------------------------------------------- config
def test_default_config_is_the_paper_recipe():
    cfg = default_optimizer_config()
    assert isinstance(cfg, ml_collections.ConfigDict)
    validate_optimizer_config(cfg)
    expected = {
        "name": "rmsprop_warmup",
        "schedule": "slow_start",
        "base_learning_rate": None,
        "lr_per_256": 0.1,
        "weight_decay": 1e-4,
        "weight_decay_exclude_1d": False,
        "rmsprop_warmup.momentum": 0.9,
        "rmsprop_warmup.rmsprop_learning_rate": 3e-4,
        "rmsprop_warmup.decay": 0.99,
        "rmsprop_warmup.eps": 1e-8,
        "rmsprop_warmup.beta_center": 10.0,
        "rmsprop_warmup.beta_period": 5.0,
        "rmsprop_warmup.delta_dtype": "float32",
        "slow_start.boundaries": (40.0, 70.0, 85.0),
        "slow_start.factors": (0.5, 0.075, 0.01, 0.001),
    }
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    for key, value in expected.items():
        assert flat[key] == value, key
    # Every key is documented, and only keys that exist are.
    assert set(OPTIMIZER_CONFIG_DOCS) == set(flat)
    assert all(doc.strip() for doc in OPTIMIZER_CONFIG_DOCS.values())


def test_default_schedules_follow_the_paper():
    tx, schedules = create_optimizer(default_optimizer_config(), **BUILD)
    assert isinstance(tx, optax.GradientTransformation)
    assert set(schedules) == {"learning_rate", "alpha_sgd"}
    lr, alpha = schedules["learning_rate"], schedules["alpha_sgd"]
    spe = BUILD["steps_per_epoch"]
    assert float(lr(0)) == pytest.approx(6.4)  # 0.5 x 12.8
    assert float(lr(40 * spe)) == pytest.approx(0.96)
    assert float(lr(85 * spe)) == pytest.approx(0.0128)
    assert float(alpha(10 * spe)) == pytest.approx(0.5)
    assert float(alpha(0)) == pytest.approx(0.0091578, abs=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_name_and_schedule_builds(name, schedule):
    cfg = default_optimizer_config()
    cfg.name, cfg.schedule = name, schedule
    cfg.base_learning_rate = 2.0
    tx, schedules = create_optimizer(cfg, **BUILD)
    assert ("alpha_sgd" in schedules) == (name == "rmsprop_warmup")
    assert np.isfinite(float(schedules["learning_rate"](100)))
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    updates, _ = tx.update(params, tx.init(params), params)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


def test_schedule_reaches_zero_checks_every_step():
    assert not schedule_reaches_zero(lambda step: 0.1 + 0.0 * step, 10)
    assert schedule_reaches_zero(lambda step: 0.1 * step, 10)  # 0 at step 0
    assert schedule_reaches_zero(lambda step: jnp.where(step == 9, 0.0, 0.1), 10)
    assert not schedule_reaches_zero(lambda step: jnp.where(step == 10, 0.0, 0.1), 10)
    assert schedule_reaches_zero(lambda step: jnp.where(step == 3, jnp.nan, 0.1), 10)


@pytest.mark.parametrize(("warmup_init_factor", "limit_compiled"), [(0.0, True), (0.1, False)])
def test_rmsprop_warmup_keeps_the_eta_zero_limit_where_the_schedule_reaches_zero(
    warmup_init_factor, limit_compiled
):
    """A warm-up from 0 needs the eta -> 0+ limit at step 0 (a non-zero RMSprop step);
    a schedule that stays positive gets the cheaper update (36 vs 44 bytes per parameter)."""
    cfg = default_optimizer_config()
    cfg.schedule = "goyal"
    cfg.goyal.warmup_epochs, cfg.goyal.warmup_init_factor = 5.0, warmup_init_factor
    tx, schedules = create_optimizer(cfg, **BUILD)
    params = {"w": jnp.ones((64, 64))}
    grads = {"w": jnp.full((64, 64), 0.5)}
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    rms_step = (1 - float(schedules["alpha_sgd"](0))) * cfg.rmsprop_warmup.rmsprop_learning_rate
    # Step 0 with eta = 0: -eta_rms (1 - alpha) g / (sqrt((1 - mu2) g^2) + eps) (+ 0 * decay).
    if limit_compiled:
        expected = -rms_step / np.sqrt(1 - cfg.rmsprop_warmup.decay)
        np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)
    else:
        assert float(schedules["learning_rate"](0)) > 0
    compiled = jax.jit(tx.update).lower(grads, tx.init(params), params).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    per_param = cost["bytes accessed"] / 4096
    # The weight-decay loop (reads p, g; writes g + wd p: 12) + the update (44 or 36).
    if jax.default_backend() == "cpu":
        assert per_param <= (12 + (44 if limit_compiled else 36)) + 0.1, per_param


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("name", "adam", r"optimizer\.name='adam'.*one of \('rmsprop_warmup'"),
        ("schedule", "step", r"optimizer\.schedule='step'.*'slow_start', 'goyal'"),
        ("rmsprop_warmup.momentum", 1.0, r"optimizer\.rmsprop_warmup\.momentum=1\.0.*\[0, 1\)"),
        ("rmsprop_warmup.decay", -0.1, r"optimizer\.rmsprop_warmup\.decay=-0\.1"),
        ("weight_decay", -1e-4, r"optimizer\.weight_decay=.*non-negative"),
        ("rmsprop_warmup.eps", 0.0, r"optimizer\.rmsprop_warmup\.eps=0\.0.*positive"),
        ("rmsprop_warmup.beta_period", 0.0, r"optimizer\.rmsprop_warmup\.beta_period"),
        ("base_learning_rate", -1.0, r"optimizer\.base_learning_rate=-1\.0.*None or"),
        ("rmsprop_warmup.delta_dtype", "float8", r"delta_dtype='float8'.*'bfloat16'"),
        ("slow_start.boundaries", (70.0, 40.0, 85.0), r"strictly increasing"),
        ("slow_start.factors", (0.5, 0.1), r"slow_start\.factors has 2 entries.*expected 4"),
        ("weight_decay_exclude_1d", 1, r"weight_decay_exclude_1d=1.*True or False"),
        ("momentum.momentum", "0.9", r"optimizer\.momentum\.momentum='0\.9'"),
        ("lars.trust_coefficient", 0.0, r"optimizer\.lars\.trust_coefficient=0\.0.*positive"),
        ("lamb.b2", 1.0, r"optimizer\.lamb\.b2=1\.0"),
        ("goyal.boundaries", (3.0, 2.0), r"optimizer\.goyal\.boundaries=.*increasing"),
        ("lr_per_256", float("nan"), r"optimizer\.lr_per_256=nan"),
        # misplaced keys: a recipe's key at the top, in another recipe, or a pre-registry name
        ("lars_eps", 1e-5, r"optimizer\.lars_eps belongs .*: config\.optimizer\.lars\.eps$"),
        ("beta_center", 5.0, r"config\.optimizer\.rmsprop_warmup\.beta_center$"),
        ("rmsprop_decay", 0.9, r"belongs .*: config\.optimizer\.rmsprop_warmup\.decay$"),
        (
            "goyal.power",
            2.0,
            r"unknown config key config\.optimizer\.goyal\.power: the 'goyal' "
            r"schedule has keys .*; did you mean config\.optimizer\.polynomial",
        ),
        ("lars.weight_decay", 0.1, r"did you mean config\.optimizer\.weight_decay\?"),
        (
            "lars.trust_coefficent",
            0.1,
            r"optimizer\.lars\.trust_coefficent; did you mean "
            r"'trust_coefficient'",
        ),
        ("lamb", 0.5, r"optimizer\.lamb=0\.5 is invalid; expected the section of the 'lamb'"),
    ],
)
def test_bad_values_raise(key, value, match):
    cfg = default_optimizer_config().to_dict()  # a plain dict: no ConfigDict type locking
    *section, last = key.split(".")
    (cfg[section[0]] if section else cfg)[last] = value
    with pytest.raises(ValueError, match=match) as err:
        validate_optimizer_config(cfg)
    assert "\n" not in str(err.value)  # one line
    with pytest.raises(ValueError, match=match):
        validate_optimizer_config(cfg)
    with pytest.raises(ValueError, match=match):
        create_optimizer(cfg, **BUILD)


def test_unknown_and_missing_keys_raise():
    cfg = default_optimizer_config()
    cfg.learning_rate = 0.1  # a plausible typo for base_learning_rate
    with pytest.raises(
        ValueError, match=r"unknown config key config.optimizer.learning_rate; did you mean"
    ):
        create_optimizer(cfg, **BUILD)
    cfg = default_optimizer_config().to_dict()
    del cfg["rmsprop_warmup"]["beta_center"]
    with pytest.raises(
        ValueError, match=r"config is missing config.optimizer.rmsprop_warmup.beta_center"
    ):
        validate_optimizer_config(cfg)
    cfg = default_optimizer_config().to_dict()
    del cfg["lars"]
    with pytest.raises(ValueError, match=r"config is missing config.optimizer.lars \(the keys"):
        validate_optimizer_config(cfg)


@pytest.mark.parametrize(
    ("arg", "value"), [("global_batch_size", 0), ("steps_per_epoch", 0), ("num_epochs", -1)]
)
def test_bad_build_arguments_raise(arg, value):
    with pytest.raises(ValueError, match=arg):
        create_optimizer(default_optimizer_config(), **{**BUILD, arg: value})


def test_warmup_longer_than_run_raises():
    cfg = default_optimizer_config()
    cfg.schedule, cfg.cosine.warmup_epochs = "cosine", 10.0
    with pytest.raises(ValueError, match="warmup_epochs"):
        create_optimizer(cfg, global_batch_size=256, steps_per_epoch=10, num_epochs=8)


# ----------------------------------------------------------------------------- momentum form
def test_optax_sgd_puts_the_learning_rate_outside_the_momentum_buffer():
    """b_t = mu b_{t-1} + g_t, theta_t = theta_{t-1} - eta_t b_t (numpy): optax.sgd, the
    factory's 'momentum', and rmsprop_warmup at alpha_sgd = 1 all follow it while eta changes
    (the form with eta inside the buffer would lag behind each change)."""
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(4,)).astype(np.float32) for _ in range(12)]
    cfg = default_optimizer_config()
    cfg.update(name="momentum", schedule="goyal", weight_decay=0.0, base_learning_rate=1.0)
    cfg.goyal.update(warmup_epochs=2.0, boundaries=(4.0, 6.0, 8.0))  # eta moves every 2 steps
    factory_tx, schedules = create_optimizer(
        cfg, global_batch_size=256, steps_per_epoch=1, num_epochs=12
    )
    eta = schedules["learning_rate"]
    txs = {
        "optax.sgd": optax.sgd(eta, momentum=0.9),
        "factory momentum": factory_tx,
        "rmsprop_warmup(alpha=1)": rmsprop_warmup(eta, 1.0),
    }
    b, theta, refs = 0.0, np.zeros(4), []
    for t, g in enumerate(grads):
        b = 0.9 * b + g
        theta = theta - float(eta(t)) * b
        refs.append(theta)
    assert len({round(float(eta(t)), 6) for t in range(12)}) >= 4
    for label, tx in txs.items():
        p = jnp.zeros(4)
        state = tx.init(p)
        for t, g in enumerate(grads):
            u, state = tx.update(jnp.asarray(g), state, p)
            p = optax.apply_updates(p, u)
            np.testing.assert_allclose(p, refs[t], rtol=1e-5, atol=1e-6, err_msg=f"{label} {t}")


# ----------------------------------------------------------------------------- weight decay
def _params():
    return {
        "dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 2.0)},
        "norm": {"scale": jnp.full((2,), 2.0)},
    }


@pytest.mark.parametrize("name", ["momentum", "rmsprop_warmup", "nesterov"])
@pytest.mark.parametrize("exclude", [False, True])
def test_weight_decay_mask_excludes_1d_params(name, exclude):
    cfg = default_optimizer_config()
    cfg.update(
        name=name,
        schedule="constant",
        base_learning_rate=1.0,
        weight_decay=0.01,
        weight_decay_exclude_1d=exclude,
    )
    cfg.rmsprop_warmup.beta_center = 1000.0  # alpha_sgd ~ 0: updates are RMSprop steps
    tx, _ = create_optimizer(cfg, **BUILD)
    params = _params()
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
    # With zero gradients, only weight decay moves parameters.
    assert np.all(np.asarray(updates["dense"]["kernel"]) < 0)
    for leaf in (updates["dense"]["bias"], updates["norm"]["scale"]):
        if exclude:
            np.testing.assert_array_equal(leaf, 0.0)
        else:
            assert np.all(np.asarray(leaf) < 0)
    if name == "momentum":  # exactly -lr * wd * param on the first step
        np.testing.assert_allclose(updates["dense"]["kernel"], -0.02, rtol=1e-6)


@pytest.mark.parametrize("lars_exclude", [False, True])
def test_lars_excludes_1d_params_from_decay_and_adaptation(lars_exclude):
    cfg = default_optimizer_config()
    cfg.update(name="lars", schedule="constant", base_learning_rate=1.0, weight_decay=0.0)
    cfg.lars.exclude_1d = lars_exclude
    tx, _ = create_optimizer(cfg, **BUILD)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Without adaptation the update is -lr * g = -0.5; with it, -lr * tc * |w|/|g| * g.
    trust = cfg.lars.trust_coefficient * 2.0 / 0.5
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5 * trust, rtol=1e-5)
    expected_1d = -0.5 if lars_exclude else -0.5 * trust
    np.testing.assert_allclose(updates["norm"]["scale"], expected_1d, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["bias"], expected_1d, rtol=1e-5)


# ----------------------------------------------------------------------------- training
class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(32)(x)
        x = nn.LayerNorm()(x)  # 1-D scale and bias, like BN's
        x = nn.relu(x)
        return nn.Dense(4)(x)


# Constant rates that make ~30 steps of each optimizer visibly reduce the loss.
TRAIN_SETTINGS = {
    "rmsprop_warmup": dict(base_learning_rate=0.1, rmsprop_warmup={"rmsprop_learning_rate": 3e-3}),
    "momentum": dict(base_learning_rate=0.05),
    "nesterov": dict(base_learning_rate=0.05),
    "lars": dict(base_learning_rate=5.0),
    "lamb": dict(base_learning_rate=0.01),
}


@pytest.fixture(scope="module")
def tiny_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 16)).astype(np.float32)
    teacher = rng.normal(size=(16, 4))
    y = np.argmax(x @ teacher, axis=1)
    model = TinyMLP()
    params = model.init(jax.random.key(0), x[:1])["params"]
    return model, params, jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_each_optimizer_trains_a_tiny_mlp(name, tiny_problem):
    model, params, x, y = tiny_problem
    cfg = default_optimizer_config()
    cfg.update(name=name, schedule="constant", **TRAIN_SETTINGS[name])
    # 1 step per epoch: rmsprop_warmup hands over to SGD within the run (alpha = 1 at 12.5).
    tx, _ = create_optimizer(cfg, global_batch_size=128, steps_per_epoch=1, num_epochs=30)

    def loss_fn(p):
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = tx.init(params)
    losses = []
    for _ in range(30):
        params, state, loss = train_step(params, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("exclude_1d", [False, True])
def test_rmsprop_warmup_state_keeps_the_layout_of_checkpoints_with_separate_decay(
    tmp_path, exclude_1d
):
    """Weight decay moved inside rmsprop_warmup (one loop over memory fewer); the chain keeps
    the state at opt_state[1], so checkpoints written when decay was a separate
    add_decayed_weights transformation restore unchanged (same fingerprint, same leaves)."""
    from lmsgd.checkpointing import Checkpointer, state_fingerprint
    from lmsgd.config import base_config
    from lmsgd.optim import multi_dim_mask, rmsprop_warmup

    cfg = default_optimizer_config()
    cfg.weight_decay_exclude_1d = exclude_1d
    tx, schedules = create_optimizer(cfg, **BUILD)
    old = optax.chain(  # what create_optimizer built before
        optax.add_decayed_weights(cfg.weight_decay, mask=multi_dim_mask if exclude_1d else None),
        rmsprop_warmup(schedules["learning_rate"], schedules["alpha_sgd"]),
    )
    params = _params()
    grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
    _, old_state = old.update(grads, old.init(params), params)
    template = tx.init(params)
    assert state_fingerprint(template) == state_fingerprint(old_state)

    ckpt = Checkpointer(str(tmp_path), every_steps=1, keep=1, async_save=False)
    config = base_config()
    ckpt.save(1, old_state, config, force=True)
    ckpt.wait()
    restored, step = ckpt.restore(template, config)
    assert step == 1
    assert jax.tree.structure(restored) == jax.tree.structure(template)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(old_state)):
        np.testing.assert_array_equal(a, b)
    # and the restored state steps on like the old chain
    new_updates, _ = tx.update(grads, restored, params)
    old_updates, _ = old.update(grads, old_state, params)
    for a, b in zip(jax.tree.leaves(new_updates), jax.tree.leaves(old_updates)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    ckpt.close()


def test_checkpoint_fingerprint_keeps_the_names_it_was_recorded_under():
    """delta_dtype moved to config.optimizer.rmsprop_warmup; checkpoints record it under its
    old name, so those written before the registry still resume (restore compares names)."""
    from lmsgd.checkpointing import config_fingerprint
    from lmsgd.config import base_config

    config = base_config()
    before_the_registry = {  # what checkpoints written before issue 25 hold
        "model.name": "resnet50",
        "model.num_classes": None,
        "model.width_multiplier": 1.0,
        "model.norm_mode": "batch_stats",
        "optimizer.name": "rmsprop_warmup",
        "optimizer.delta_dtype": "float32",
    }
    assert config_fingerprint(config) == before_the_registry
    config.optimizer.rmsprop_warmup.delta_dtype = "bfloat16"
    assert config_fingerprint(config)["optimizer.delta_dtype"] == "bfloat16"


# ----------------------------------------------------------------------------- registry
def test_a_new_optimizer_is_one_registration(monkeypatch):
    """What recipes.py does for each optimizer is all a new one needs: its section is in the
    defaults (and base_config), validated with one-line errors, scaled by scale_epochs, and
    create_optimizer builds it (here optax.adamw, compared with optax.adamw itself)."""
    from lmsgd.config import base_config, validate_config
    from lmsgd.optim import registry, scale_epochs
    from lmsgd.schema import Key, positive

    def build(section, ctx):
        kwargs = dict(learning_rate=ctx.learning_rate, b2=section["b2"],
                      weight_decay=ctx.weight_decay, mask=ctx.weight_decay_mask)  # fmt: skip
        return registry.Built(optax.adamw, kwargs)

    recipe = registry.OptimizerRecipe(
        name="adamw_for_test",
        doc="optax.adamw",
        keys={
            "b2": Key(0.999, "second-moment decay", positive, "a positive number"),
            "decay_epochs": Key(30.0, "an epoch-valued setting", positive, "epochs"),
        },
        build=build,
        epoch_keys=("decay_epochs",),
    )
    monkeypatch.setitem(registry.OPTIMIZERS, recipe.name, recipe)  # removed afterwards
    config = base_config()
    assert config.optimizer.adamw_for_test.b2 == 0.999
    config.optimizer.name = "adamw_for_test"
    config.optimizer.schedule = "constant"
    config.optimizer.base_learning_rate = 0.01
    config.optimizer.adamw_for_test.b2 = 0.99
    validate_config(config)
    assert scale_epochs(config.optimizer, 45.0).adamw_for_test.decay_epochs == 15.0
    tx, schedules = create_optimizer(config.optimizer, **BUILD)
    params, grads = _params(), jax.tree.map(lambda p: 0.3 * p, _params())
    ref = optax.adamw(0.01, b2=0.99, weight_decay=config.optimizer.weight_decay)
    u, _ = tx.update(grads, tx.init(params), params)
    u_ref, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    bad = config.optimizer.to_dict()
    bad["adamw_for_test"]["b1"] = 0.9
    with pytest.raises(ValueError, match=r"unknown config key config\.optimizer\.adamw_for_test"):
        validate_optimizer_config(bad)
    with pytest.raises(ValueError, match="cannot register 'lars'"):
        registry.register_optimizer(registry.OptimizerRecipe("lars", "", {}, build))
