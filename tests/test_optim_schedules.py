"""Schedules against docs/recipe.md's reference values and hand-written formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmsgd.optim import (
    alpha_sgd_schedule,
    constant_schedule,
    cosine_warmup_schedule,
    goyal_schedule,
    linear_scaling_rule,
    polynomial_warmup_schedule,
    slow_start_schedule,
)


def test_linear_scaling_rule():
    assert linear_scaling_rule(32768) == pytest.approx(12.8)  # docs/recipe.md section 2
    assert linear_scaling_rule(256) == pytest.approx(0.1)
    assert linear_scaling_rule(8192, base=0.2) == pytest.approx(6.4)
    assert linear_scaling_rule(1024, reference_batch=512) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="global_batch_size"):
        linear_scaling_rule(0)


# docs/recipe.md section 1, as printed there (beta_center = 10, beta_period = 5).
PAPER_ALPHA = {0: 0.0091578, 5: 0.0676676, 10: 0.5, 11: 0.7, 12: 0.9, 12.5: 1.0, 50: 1.0}


@pytest.mark.parametrize("jit", [False, True])
def test_alpha_sgd_reference_values(jit):
    steps_per_epoch = 1000  # every reference epoch is a whole step
    schedule = alpha_sgd_schedule(steps_per_epoch)
    if jit:
        schedule = jax.jit(schedule)
    for epoch, expected in PAPER_ALPHA.items():
        step = jnp.asarray(int(epoch * steps_per_epoch), jnp.int32)
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-6), epoch
    # Exact closed forms too (the printed values are rounded to 7 digits).
    assert float(schedule(0)) == pytest.approx(0.5 * math.exp(-4), rel=1e-6)
    assert float(schedule(5000)) == pytest.approx(0.5 * math.exp(-2), rel=1e-6)


def test_alpha_sgd_is_vectorized_and_monotone():
    steps = jnp.arange(0, 20 * 7)
    values = np.asarray(alpha_sgd_schedule(7)(steps))
    assert values.shape == steps.shape
    assert np.all(np.diff(values) >= 0) and values[0] > 0 and values[-1] == 1.0


def test_alpha_sgd_smooth_at_beta_center():
    center, period = 10.0, 5.0
    with jax.enable_x64(True):
        f = alpha_sgd_schedule(1, beta_center=center, beta_period=period)  # step == epoch
        value = lambda e: float(f(jnp.asarray(e, jnp.float64)))
        h = 1e-6
        # Continuous value ...
        assert value(center - h) == pytest.approx(0.5, abs=1e-5)
        assert value(center + h) == pytest.approx(0.5, abs=1e-5)
        # ... and continuous first derivative: one-sided slopes both equal 1 / period.
        left = (value(center) - value(center - h)) / h
        right = (value(center + h) - value(center)) / h
        assert left == pytest.approx(1 / period, rel=1e-4)
        assert right == pytest.approx(1 / period, rel=1e-4)
        # Reaches exactly 1 at the end of the ramp, with no overshoot anywhere.
        end = center + period / 2
        assert value(end - h) == pytest.approx(1.0, abs=1e-5)
        grid = np.asarray(f(jnp.linspace(0.0, 30.0, 3001)))
        assert grid.max() == 1.0


def test_alpha_sgd_rejects_bad_arguments():
    with pytest.raises(ValueError, match="beta_period"):
        alpha_sgd_schedule(10, beta_period=0.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        alpha_sgd_schedule(0)


def test_slow_start_table():
    base = linear_scaling_rule(32768)  # 12.8
    spe = 100
    schedule = jax.jit(slow_start_schedule(base, spe))
    # docs/recipe.md section 2: [0,40) 0.5, [40,70) 0.075, [70,85) 0.01, [85,90) 0.001 x eta_base.
    table = [
        (0, 6.4),
        (39.99, 6.4),
        (40, 0.96),
        (69.99, 0.96),
        (70, 0.128),
        (84.99, 0.128),
        (85, 0.0128),
        (89.99, 0.0128),
    ]
    for epoch, expected in table:
        step = int(round(epoch * spe))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6), epoch


def test_slow_start_with_fractional_boundary_steps():
    # 39 steps per epoch: epoch 40 starts at step 1560 exactly; a boundary at 2.5 epochs
    # starts at the first step whose epoch is >= 2.5 (step 98 = ceil(97.5)).
    s = slow_start_schedule(1.0, 39, boundaries=(2.5,), factors=(1.0, 0.5))
    assert float(s(97)) == 1.0 and float(s(98)) == 0.5
    s = slow_start_schedule(1.0, 39)
    assert float(s(1559)) == 0.5 and float(s(1560)) == pytest.approx(0.075)


def test_slow_start_rejects_mismatched_factors():
    with pytest.raises(ValueError, match="one more factor than boundaries"):
        slow_start_schedule(1.0, 10, boundaries=(40, 70), factors=(0.5, 0.1))
    with pytest.raises(ValueError, match="strictly increasing"):
        slow_start_schedule(1.0, 10, boundaries=(70, 40), factors=(0.5, 0.1, 0.01))


def test_goyal_schedule():
    base, spe = 3.2, 10  # batch 8192; warm-up 5 epochs = 50 steps
    init = 256 / 8192  # Goyal et al. start at the small-batch rate 0.1
    s = jax.jit(goyal_schedule(base, spe, warmup_init_factor=init))

    def hand(step):
        if step < 50:
            return base * (init + (1 - init) * step / 50)
        return base * 0.1 ** sum(step >= b * spe for b in (30, 60, 80))

    for step in (0, 1, 25, 49, 50, 51, 299, 300, 599, 600, 799, 800, 899):
        assert float(s(step)) == pytest.approx(hand(step), rel=1e-5), step
    assert float(s(0)) == pytest.approx(0.1, rel=1e-5)
    assert float(s(300)) == pytest.approx(0.32, rel=1e-5)


def test_polynomial_warmup_schedule():
    base, spe, epochs = 2.0, 10, 90  # 900 steps, 50 of warm-up
    s = jax.jit(polynomial_warmup_schedule(base, spe, epochs, warmup_epochs=5, power=2.0))

    def hand(step):
        if step < 50:
            return base * step / 50
        return base * (1 - (step - 50) / 850) ** 2

    for step in (0, 10, 49, 50, 100, 475, 899, 900, 1000):
        assert float(s(step)) == pytest.approx(hand(min(step, 900)), rel=1e-5, abs=1e-7), step
    end = polynomial_warmup_schedule(base, spe, epochs, end_factor=0.01)
    assert float(end(900)) == pytest.approx(0.02, rel=1e-6)


def test_cosine_warmup_schedule():
    base, spe, epochs = 2.0, 10, 90
    s = jax.jit(cosine_warmup_schedule(base, spe, epochs, warmup_epochs=5))

    def hand(step):
        if step < 50:
            return base * step / 50
        return base * 0.5 * (1 + math.cos(math.pi * (step - 50) / 850))

    for step in (0, 10, 49, 50, 100, 475, 899, 900):
        assert float(s(step)) == pytest.approx(hand(step), rel=1e-5, abs=1e-6), step


def test_warmup_longer_than_training_is_rejected():
    with pytest.raises(ValueError, match="must exceed warmup_epochs"):
        polynomial_warmup_schedule(1.0, 10, num_epochs=4, warmup_epochs=5)
    with pytest.raises(ValueError, match="must exceed warmup_epochs"):
        cosine_warmup_schedule(1.0, 10, num_epochs=5, warmup_epochs=5)
    with pytest.raises(ValueError, match="warm-up"):
        goyal_schedule(1.0, 10, warmup_epochs=5, boundaries=(3, 60))


def test_zero_warmup_and_constant():
    s = goyal_schedule(1.0, 10, warmup_epochs=0)
    assert float(s(0)) == 1.0 and float(s(300)) == pytest.approx(0.1)
    assert float(jax.jit(constant_schedule(0.7))(12345)) == pytest.approx(0.7)
