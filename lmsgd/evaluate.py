"""`python -m lmsgd.evaluate --config configs/<name>.py --workdir DIR [--step N]`.

Evaluates the latest (or the given) checkpoint of a run on every evaluation example, with the
normalization statistics of docs/recipe.md s.3 that the config asks for, and writes
`<workdir>/eval_<step>.json`.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from lmsgd import evaluation
from lmsgd.checkpointing import Checkpointer
from lmsgd.errors import WorkdirError
from lmsgd.run import build
from lmsgd.workdir import write_json


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict[str, Any]:
    """Restores a checkpoint of `workdir` (latest by default) and evaluates it."""
    run = build(config)
    ckpt = Checkpointer(workdir, every_steps=1, keep=10**6, async_save=False)
    try:
        if ckpt.latest_step() is None:
            raise WorkdirError(
                f"no checkpoint in {ckpt.directory}; train first with "
                f"python -m lmsgd.train --config ... --workdir {workdir}"
            )
        state, step = ckpt.restore(run.init_state(), config, step)
    finally:
        ckpt.close()
    metrics = evaluation.evaluate(run, evaluation.eval_state(run, state))
    metrics["step"] = step
    if jax.process_index() == 0:
        write_json(workdir, f"eval_{step}.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    from lmsgd import cli

    def define(fv) -> None:
        from absl import flags

        flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=fv)

    return cli.run_command(
        "lmsgd.evaluate",
        argv,
        lambda config, f: evaluate_checkpoint(config, f.workdir, f.step),
        define_extra=define,
    )


if __name__ == "__main__":
    raise SystemExit(main())
