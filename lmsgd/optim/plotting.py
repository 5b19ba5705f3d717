"""Plots of the learning-rate and alpha_sgd schedules over epochs (no pyplot, so no GUI)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import matplotlib.axes
import matplotlib.figure
import numpy as np

from lmsgd.optim.factory import create_optimizer

# Schedules are evaluated at (at most) this many steps; enough to resolve every boundary of a
# 90-epoch run to well under an epoch without drawing 100k+ points for ImageNet.
_MAX_POINTS = 4096


def schedule_steps(steps_per_epoch: int, num_epochs: float) -> np.ndarray:
    """The optimizer steps at which :func:`plot_schedules` evaluates the schedules."""
    total = max(int(round(num_epochs * steps_per_epoch)), 1)
    return np.unique(np.linspace(0, total - 1, min(total, _MAX_POINTS)).round().astype(np.int64))


def plot_schedules(
    cfg: Mapping[str, Any],
    *,
    global_batch_size: int,
    steps_per_epoch: int,
    num_epochs: float,
    ax: matplotlib.axes.Axes | None = None,
) -> matplotlib.figure.Figure:
    """Draws the schedules ``create_optimizer(cfg, ...)`` uses against the epoch.

    The learning rate (global, per optimizer step) goes on ``ax`` (a new figure's axes if
    None), alpha_sgd (rmsprop_warmup only) on a twin y-axis; lines are labelled
    'learning_rate' and 'alpha_sgd', x data in epochs (step / steps_per_epoch).

    Returns:
      The figure holding ``ax``. Save it with ``fig.savefig(path)``; no backend is needed.
    """
    _, schedules = create_optimizer(
        cfg,
        global_batch_size=global_batch_size,
        steps_per_epoch=steps_per_epoch,
        num_epochs=num_epochs,
    )
    if ax is None:
        # Figure() without pyplot: works under any (or no) matplotlib backend.
        fig = matplotlib.figure.Figure(figsize=(7, 4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    steps = schedule_steps(steps_per_epoch, num_epochs)
    epochs = steps / steps_per_epoch

    lr = np.asarray(schedules["learning_rate"](jnp.asarray(steps)))
    (lr_line,) = ax.plot(epochs, lr, color="C0", label="learning_rate")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (global)")
    lines = [lr_line]
    if "alpha_sgd" in schedules:
        alpha_ax = ax.twinx()
        alpha = np.asarray(schedules["alpha_sgd"](jnp.asarray(steps)))
        (alpha_line,) = alpha_ax.plot(epochs, alpha, color="C1", label="alpha_sgd")
        alpha_ax.set_ylabel("alpha_sgd")
        alpha_ax.set_ylim(-0.02, 1.05)
        lines.append(alpha_line)
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    ax.set_title(f"{cfg['name']} / {cfg['schedule']}, global batch {global_batch_size}")
    return fig
