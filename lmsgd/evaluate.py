"""`python -m lmsgd.evaluate --config configs/<name>.py --workdir DIR [--step N]`.

Evaluates the latest (or the given) checkpoint of a run on every evaluation example, with the
normalization statistics of PAPER.md s.3 that the config asks for, and writes
`<workdir>/eval_<step>.json`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections

from lmsgd.checkpointing import Checkpointer
from lmsgd.config import validate_config
from lmsgd.distributed import maybe_initialize
from lmsgd.step import create_train_state, make_eval_step
from lmsgd.train import _apply_num_cpu_devices, _eval_state, build
from lmsgd.train import evaluate as evaluate_state


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict[str, Any]:
    """Restores a checkpoint of `workdir` (latest by default) and evaluates it."""
    validate_config(config)
    _apply_num_cpu_devices(config)
    maybe_initialize(config.distributed)
    plan, mesh, model, tx, _, info = build(config)
    template = create_train_state(model, tx, jax.random.key(config.seed), info.image_shape, mesh)
    ckpt = Checkpointer(workdir, every_steps=1, keep=10**6, async_save=False)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(
            f"no checkpoint in {ckpt.directory}; train first with "
            f"python -m lmsgd.train --config ... --workdir {workdir}"
        )
    state, step = ckpt.restore(template, config, step)
    metrics = evaluate_state(
        config, _eval_state(config, state, mesh, model, plan), make_eval_step(model, mesh),
        mesh, plan,
    )  # fmt: skip
    metrics["step"] = step
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{step}.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    ckpt.close()
    return metrics


def main(argv) -> None:
    from absl import flags

    # orbax reports every save step by step through absl at INFO; keep its warnings. (Here,
    # not before app.run, which resets absl's verbosity from its flags.)
    logging.getLogger("absl").setLevel(logging.WARNING)

    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    config = f.config
    validate_config(config)
    _apply_num_cpu_devices(config)
    print(json.dumps(evaluate_checkpoint(config, f.workdir, f.step), indent=1))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config_flags.DEFINE_config_file("config", None, "Config file of the run.", lock_config=True)
    flags.DEFINE_string("workdir", None, "The run's directory.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    flags.mark_flags_as_required(["config", "workdir"])
    logging.getLogger("lmsgd").setLevel(logging.INFO)
    app.run(main)
