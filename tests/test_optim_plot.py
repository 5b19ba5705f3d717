"""plot_schedules draws the schedules the factory builds, over epochs, without pyplot."""

import io

import matplotlib.figure
import numpy as np
import pytest

from lmsgd.optim import (
    alpha_sgd_schedule,
    default_optimizer_config,
    linear_scaling_rule,
    plot_schedules,
    slow_start_schedule,
)


def _lines(fig):
    return {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}


def test_plot_default_config_curves():
    spe, batch = 39, 32768
    fig = plot_schedules(
        default_optimizer_config(), global_batch_size=batch, steps_per_epoch=spe, num_epochs=90
    )
    assert isinstance(fig, matplotlib.figure.Figure)
    lines = _lines(fig)
    assert set(lines) == {"learning_rate", "alpha_sgd"}
    epochs, lr = (np.asarray(a, np.float64) for a in lines["learning_rate"].get_data())
    # The whole run, in epochs.
    assert epochs[0] == 0.0 and 89.9 < epochs[-1] < 90.0
    steps = np.round(epochs * spe).astype(np.int64)
    np.testing.assert_allclose(steps / spe, epochs)
    # Against independently built schedules ...
    base = linear_scaling_rule(batch)
    np.testing.assert_allclose(lr, np.asarray(slow_start_schedule(base, spe)(steps)), rtol=1e-6)
    a_epochs, alpha = (np.asarray(a, np.float64) for a in lines["alpha_sgd"].get_data())
    np.testing.assert_array_equal(a_epochs, epochs)
    np.testing.assert_allclose(alpha, np.asarray(alpha_sgd_schedule(spe)(steps)), rtol=1e-6)
    # ... and against docs/recipe.md's numbers.
    assert lr[0] == pytest.approx(6.4) and lr[-1] == pytest.approx(0.0128)
    assert set(np.round(lr, 6)) == {6.4, 0.96, 0.128, 0.0128}
    assert alpha[0] == pytest.approx(0.0091578, abs=1e-6) and alpha[-1] == 1.0
    fig.savefig(io.BytesIO(), format="png")  # renders with no backend configured


def test_plot_on_given_axes_without_alpha():
    cfg = default_optimizer_config()
    cfg.update(name="momentum", schedule="goyal")
    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    out = plot_schedules(cfg, global_batch_size=8192, steps_per_epoch=10, num_epochs=90, ax=ax)
    assert out is fig
    lines = _lines(fig)
    assert set(lines) == {"learning_rate"}
    epochs, lr = (np.asarray(a) for a in lines["learning_rate"].get_data())
    # Goyal et al.: linear warm-up to 3.2 over 5 epochs, then x0.1 at 30, 60, 80.
    for epoch, expected in [(2.5, 1.6), (10, 3.2), (45, 0.32), (70, 0.032), (85, 0.0032)]:
        i = int(np.argmin(np.abs(epochs - epoch)))
        assert epochs[i] == pytest.approx(epoch) and lr[i] == pytest.approx(expected, rel=1e-5)
