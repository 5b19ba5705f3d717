"""Learning-rate and hand-over schedules (docs/recipe.md sections 1 and 2, plus baselines).

Every schedule is an ``optax.Schedule``: a jit-safe function of the optimizer step (number of
updates applied so far, 0 for the first update). Durations and boundaries are given in epochs
and converted with ``steps_per_epoch`` (optimizer steps per epoch, i.e. per pass over the
training set with the *global* minibatch). Learning rates are global values, for gradients
averaged over the global minibatch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def linear_scaling_rule(
    global_batch_size: int, base: float = 0.1, reference_batch: int = 256
) -> float:
    """Linear scaling rule: ``base * global_batch_size / reference_batch`` (a global rate).

    Goyal et al. (2017): 0.1 per 256 images; 12.8 at the paper's global batch of 32,768.
    """
    if global_batch_size <= 0 or reference_batch <= 0:
        raise ValueError(
            f"global_batch_size and reference_batch must be positive, got "
            f"{global_batch_size} and {reference_batch}"
        )
    return base * global_batch_size / reference_batch


def _check_steps_per_epoch(steps_per_epoch: float) -> None:
    if not steps_per_epoch > 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")


def _epochs_to_steps(epochs: float, steps_per_epoch: float) -> int:
    """A duration in epochs as a whole number of optimizer steps (rounded to nearest)."""
    return int(round(epochs * steps_per_epoch))


def _check_boundaries(boundaries: Sequence[float]) -> None:
    if any(b < 0 for b in boundaries) or any(
        b1 >= b2 for b1, b2 in zip(boundaries, boundaries[1:])
    ):
        raise ValueError(
            f"boundaries must be non-negative and strictly increasing epochs, got {boundaries}"
        )


def alpha_sgd_schedule(
    steps_per_epoch: float, beta_center: float = 10.0, beta_period: float = 5.0
) -> optax.Schedule:
    """The smooth RMSprop -> SGD hand-over ``alpha_sgd`` of docs/recipe.md section 1.

    At fractional epoch ``e = step / steps_per_epoch``: ``0.5 * exp(2 (e - c) / p)`` before
    ``c = beta_center``, then ``0.5 + (e - c) / p`` up to ``c + p / 2``, then 1 (``p =
    beta_period``). Continuous with continuous first derivative at ``c``.

    Args:
      steps_per_epoch: optimizer steps per epoch.
      beta_center: epoch at which alpha_sgd = 0.5.
      beta_period: epochs; alpha_sgd reaches 1 at ``beta_center + beta_period / 2``.

    The reference values of docs/recipe.md section 1, at 39 steps per epoch:

    >>> alpha = alpha_sgd_schedule(39, beta_center=10.0, beta_period=5.0)
    >>> [round(float(alpha(e * 39)), 7) for e in (0, 5, 10, 11, 12, 12.5, 50)]
    [0.0091578, 0.0676676, 0.5, 0.7, 0.9, 1.0, 1.0]
    """
    _check_steps_per_epoch(steps_per_epoch)
    if not beta_period > 0:
        raise ValueError(f"beta_period must be positive (epochs), got {beta_period}")
    ramp_end = beta_center + beta_period / 2.0

    def schedule(step):
        epoch = jnp.asarray(step, dtype=jnp.result_type(float)) / steps_per_epoch
        # Clamp the exponent so the unselected branch cannot overflow to inf for late epochs.
        exponential = 0.5 * jnp.exp(
            2.0 * (jnp.minimum(epoch, beta_center) - beta_center) / beta_period
        )
        linear = 0.5 + (epoch - beta_center) / beta_period
        return jnp.where(epoch < beta_center, exponential, jnp.where(epoch < ramp_end, linear, 1.0))

    return schedule


def _piecewise_constant_in_epochs(
    values: Sequence[float], boundaries: Sequence[float], steps_per_epoch: float
) -> optax.Schedule:
    """``values[i]`` for epochs in ``[boundaries[i-1], boundaries[i])``; exact values, no products.

    Boundaries stay fractional steps, so value ``i`` starts at the first step whose epoch
    ``step / steps_per_epoch`` is >= ``boundaries[i-1]``.
    """
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"need one more factor than boundaries, got {len(values)} factors for "
            f"{len(boundaries)} boundaries"
        )
    _check_boundaries(boundaries)
    return optax.join_schedules(
        [optax.constant_schedule(float(v)) for v in values],
        [b * steps_per_epoch for b in boundaries],
    )


def _with_linear_warmup(
    init_value: float, peak_value: float, warmup_steps: int, after: optax.Schedule
) -> optax.Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then ``after``
    (which sees the step counted from the end of the warm-up)."""
    if warmup_steps <= 0:
        return after
    warmup = optax.linear_schedule(init_value, peak_value, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def slow_start_schedule(
    base_learning_rate: float,
    steps_per_epoch: float,
    boundaries: Sequence[float] = (40, 70, 85),
    factors: Sequence[float] = (0.5, 0.075, 0.01, 0.001),
) -> optax.Schedule:
    """The paper's slow-start schedule (docs/recipe.md section 2): ``factors[i] *
    base_learning_rate`` on epochs ``[boundaries[i-1], boundaries[i])``. No warm-up (RMSprop
    warm-up replaces it).
    """
    _check_steps_per_epoch(steps_per_epoch)
    values = [base_learning_rate * f for f in factors]
    return _piecewise_constant_in_epochs(values, boundaries, steps_per_epoch)


def goyal_schedule(
    base_learning_rate: float,
    steps_per_epoch: float,
    warmup_epochs: float = 5.0,
    boundaries: Sequence[float] = (30, 60, 80),
    decay_factor: float = 0.1,
    warmup_init_factor: float = 0.0,
) -> optax.Schedule:
    """Goyal et al. (2017): linear warm-up over ``warmup_epochs`` from
    ``warmup_init_factor * base`` to ``base``, then multiplied by ``decay_factor`` at each
    epoch in ``boundaries`` (epochs counted from the start of training).

    Goyal et al. start the warm-up at the small-batch rate 0.1, i.e. ``warmup_init_factor =
    256 / global_batch``; 0 (default) is the common modern choice.
    """
    _check_steps_per_epoch(steps_per_epoch)
    _check_boundaries(boundaries)
    warmup_steps = _epochs_to_steps(warmup_epochs, steps_per_epoch)
    if boundaries and boundaries[0] * steps_per_epoch < warmup_steps:
        raise ValueError(
            f"decay boundaries {tuple(boundaries)} must not start before the end of the "
            f"warm-up ({warmup_epochs} epochs)"
        )
    # piecewise_constant_schedule multiplies its scales at step >= threshold; the thresholds
    # are shifted because join_schedules restarts the step count after the warm-up.
    decayed = optax.piecewise_constant_schedule(
        base_learning_rate,
        {b * steps_per_epoch - warmup_steps: decay_factor for b in boundaries},
    )
    return _with_linear_warmup(
        warmup_init_factor * base_learning_rate, base_learning_rate, warmup_steps, decayed
    )


def polynomial_warmup_schedule(
    base_learning_rate: float,
    steps_per_epoch: float,
    num_epochs: float,
    warmup_epochs: float = 5.0,
    power: float = 2.0,
    end_factor: float = 0.0,
    warmup_init_factor: float = 0.0,
) -> optax.Schedule:
    """LARS / MLPerf recipe: linear warm-up, then polynomial decay to ``end_factor * base``.

    After the warm-up (``w`` steps, of ``T = num_epochs * steps_per_epoch``)::

        lr = (base - end) * (1 - (step - w) / (T - w)) ** power + end
    """
    _check_steps_per_epoch(steps_per_epoch)
    warmup_steps = _epochs_to_steps(warmup_epochs, steps_per_epoch)
    total_steps = _epochs_to_steps(num_epochs, steps_per_epoch)
    if total_steps <= warmup_steps:
        raise ValueError(f"num_epochs ({num_epochs}) must exceed warmup_epochs ({warmup_epochs})")
    decay = optax.polynomial_schedule(
        init_value=base_learning_rate,
        end_value=end_factor * base_learning_rate,
        power=power,
        transition_steps=total_steps - warmup_steps,
    )
    return _with_linear_warmup(
        warmup_init_factor * base_learning_rate, base_learning_rate, warmup_steps, decay
    )


def cosine_warmup_schedule(
    base_learning_rate: float,
    steps_per_epoch: float,
    num_epochs: float,
    warmup_epochs: float = 5.0,
    end_factor: float = 0.0,
    warmup_init_factor: float = 0.0,
) -> optax.Schedule:
    """Linear warm-up, then cosine decay to ``end_factor * base`` at ``num_epochs``.

    After the warm-up: ``end + (base - end) * (1 + cos(pi * (step - w) / (T - w))) / 2``.
    """
    _check_steps_per_epoch(steps_per_epoch)
    warmup_steps = _epochs_to_steps(warmup_epochs, steps_per_epoch)
    total_steps = _epochs_to_steps(num_epochs, steps_per_epoch)
    if total_steps <= warmup_steps:
        raise ValueError(f"num_epochs ({num_epochs}) must exceed warmup_epochs ({warmup_epochs})")
    # optax's decay_steps is the total length, warm-up included.
    return optax.warmup_cosine_decay_schedule(
        init_value=warmup_init_factor * base_learning_rate,
        peak_value=base_learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=end_factor * base_learning_rate,
    )


def constant_schedule(base_learning_rate: float) -> optax.Schedule:
    """``base_learning_rate`` at every step."""
    return optax.constant_schedule(base_learning_rate)


def handover_complete_step(alpha_sgd: optax.Schedule, total_steps: int) -> int | None:
    """The first optimizer step from which ``alpha_sgd`` is exactly 1 at every step of the
    run (evaluated as the optimizer evaluates it), plus one step of margin; None if there is
    none before ``total_steps``. From that step on :func:`lmsgd.optim.rmsprop_warmup` is
    momentum SGD, and the train step may drop its second buffer
    (:func:`lmsgd.optim.without_rms_buffer`)."""
    if total_steps <= 0:
        return None
    values = np.asarray(jax.jit(alpha_sgd)(jnp.arange(total_steps, dtype=jnp.int32)))
    below = np.flatnonzero(values != 1.0)
    first = 0 if below.size == 0 else int(below[-1]) + 1
    first += 1  # margin: a host evaluation that rounds one step differently changes nothing
    return first if first < total_steps else None
