"""Evaluation of a train state over the whole evaluation split, with the normalization
statistics docs/recipe.md s.3 describes (the last training batch's, pooled over all workers, or
'precise BN' over K fresh batches)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lmsgd.models import pool_statistics
from lmsgd.run import Run
from lmsgd.step import TrainState, make_population_stats_step


def evaluate(run: Run, state: TrainState, eval_step: Callable | None = None) -> dict[str, Any]:
    """Top-1, top-5 and mean loss over every evaluation example (padding masked out).

    `state` should come from `eval_state`. Returns fractions in [0, 1], the example count and
    the corrupt images skipped (config.data.skip_corrupt=True).
    """
    eval_step = eval_step or run.eval_step()
    totals: dict[str, float] = {}
    batches = run.eval_batches()
    for batch in batches:
        for k, v in eval_step(state, batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals["count"]
    return {
        "top1": totals["top1_correct"] / count,
        "top5": totals["top5_correct"] / count,
        "loss": totals["loss_sum"] / count,
        "num_examples": int(count),
        "skipped_corrupt_images": batches.num_skipped,
    }


def population_statistics(run: Run, state: TrainState) -> Any:
    """'Precise BN': statistics over K = model.eval_stats_batches fresh training batches with
    the final weights, pooled exactly over devices and batches (docs/recipe.md s.3)."""
    stats_step = make_population_stats_step(run.model, run.mesh)
    batches = run.train_batches(seed_offset=1)  # fresh batches, not the ones trained on
    collected = [
        stats_step(state, next(batches)) for _ in range(run.config.model.eval_stats_batches)
    ]

    def pool(*layers):
        mean, var = pool_statistics(
            np.stack([np.asarray(layer["mean"]) for layer in layers]),
            np.stack([np.asarray(layer["var"]) for layer in layers]),
        )
        return {**layers[-1], "mean": mean, "var": var}

    is_layer = lambda x: isinstance(x, dict) and "mean" in x and "var" in x
    pooled = jax.tree.map(pool, *collected, is_leaf=is_layer)
    return jax.device_put(pooled, NamedSharding(run.mesh, P()))


def eval_state(run: Run, state: TrainState) -> TrainState:
    """The state to evaluate: precise-BN statistics when configured, else `state` itself."""
    model = run.config.model
    if model.norm_mode == "batch_stats" and model.eval_stats_batches > 1:
        return state.replace(batch_stats=population_statistics(run, state))
    return state
