"""Training driver: `python -m lmsgd.train --config configs/<name>.py --workdir DIR`.

`train_and_evaluate(config, workdir)` is the library function behind it. A rerun with the
same workdir resumes from the latest checkpoint and produces the same parameters as an
uninterrupted run: the data position and augmentation are functions of (seed, step), and
everything else is in the checkpoint. Every exit (success, SIGTERM, a non-finite loss, a full
disk, a bug) waits for pending checkpoint saves, closes the writers and releases the lock.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
from clu import periodic_actions

from lmsgd import evaluation
from lmsgd.checkpointing import Checkpointer
from lmsgd.console import summary_line
from lmsgd.distributed import check_shared_workdir
from lmsgd.errors import NonFiniteLossError
from lmsgd.metric_logging import create_writer, drop_metrics_after
from lmsgd.models.summary import count_params
from lmsgd.run import Run, build
from lmsgd.workdir import (
    WorkdirLock,
    check_compatible,
    config_as_json,
    is_remote,
    write_json,
)

log = logging.getLogger("lmsgd")


class Preemption:
    """Turns SIGTERM into a flag the loop checks at step boundaries (main thread only)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        log.warning("SIGTERM: stopping at the next step boundary")
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _open_workdir(run: Run, workdir: str, stack: contextlib.ExitStack):
    """Lock, compatibility checks and restore, then (only then) the files of the run."""
    config, primary = run.config, jax.process_index() == 0
    if primary and not is_remote(workdir):  # a bucket has no flock; one run per bucket path
        stack.enter_context(WorkdirLock(workdir))
    check_shared_workdir(workdir)
    check_compatible(workdir, config)
    state, start_step, ckpt = run.init_state(), 0, None
    if config.checkpoint.enabled:
        ckpt = Checkpointer(
            workdir,
            every_steps=config.checkpoint.every_steps,
            keep=config.checkpoint.keep,
            async_save=config.checkpoint.async_save,
        )
        stack.callback(ckpt.close)
        stack.callback(ckpt.wait)  # runs first: no exit leaves a save half-written
        if ckpt.latest_step() is not None:
            state, start_step = ckpt.restore(state, config)
            log.info("resumed from checkpoint %d in %s", start_step, ckpt.directory)
    if primary:
        write_json(workdir, "config.json", config_as_json(config))
        dropped = drop_metrics_after(workdir, start_step)
        if dropped:
            log.info(
                "dropped %d metric records after step %d (rerun from there)", dropped, start_step
            )
    writer = create_writer(
        workdir,
        tensorboard=config.logging.tensorboard,
        total_steps=run.plan.total_steps,
        steps_per_epoch=run.plan.steps_per_epoch,
    )
    stack.callback(writer.close)
    return state, start_step, ckpt, writer


def _compile_train_step(run: Run, state: Any, batch: Any) -> tuple[Any, float, float]:
    """The run's one compilation of the train step: ``(compiled, seconds, FLOPs per global
    step)``, FLOPs from XLA's cost analysis of the per-device program."""
    config, plan = run.config, run.plan
    t0 = time.perf_counter()
    compiled = run.train_step().lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    flops_per_step = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    flops_per_step *= plan.num_devices * run.cost_analysis_factor
    log.info(
        "%s: %s parameters, %.3g FLOPs/step; %d steps (%d/epoch); batch %d = %d devices x "
        "%d micro-batches x %d; BN over %d; all-reduce %s %s; compiled in %.1fs",
        config.model.name, f"{count_params(state.params):,}", flops_per_step,
        plan.total_steps, plan.steps_per_epoch, config.global_batch_size, plan.num_devices,
        plan.accumulation_steps, plan.micro_batch, plan.bn_span_examples,
        config.allreduce.algorithm, config.allreduce.dtype, compile_s,
    )  # fmt: skip
    return compiled, compile_s, flops_per_step


def _periodic_actions(config, writer, workdir: str, total_steps: int):
    """clu's progress report (and timed sections), and the profiler when configured:
    ``(progress, hooks)``; each hook is called with the step after every step."""
    progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=writer, every_steps=config.logging.every_steps
    )
    hooks = [progress]
    if config.logging.profile_steps and jax.process_index() == 0:
        first, last = config.logging.profile_steps
        hooks.append(periodic_actions.Profile(
            logdir=workdir, first_profile=first, num_profile_steps=last - first,
            profile_duration_ms=None, every_secs=None,
        ))  # fmt: skip
    return progress, hooks


def _train_scalars(
    metrics: dict, run: Run, step: int, *, steps: int, seconds: float, wait_s: float
) -> dict[str, float]:
    """The step's metrics (host floats) and the throughput of the last ``steps`` steps, which
    took ``seconds`` of which ``wait_s`` waiting for input."""
    plan = run.plan
    images_per_s = steps * run.config.global_batch_size / seconds
    return {
        **{k: float(v) for k, v in metrics.items() if k != "finite"},
        "epoch": step / plan.steps_per_epoch,
        "step_time_s": seconds / steps,
        "images_per_s": images_per_s,
        "images_per_s_per_device": images_per_s / plan.num_devices,
        "data_wait_fraction": wait_s / seconds,
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) in `workdir` and evaluates; returns the final summary.

    Writes `config.json`, `metrics.jsonl`, TensorBoard summaries, checkpoints and
    `summary.json`. Raises `NonFiniteLossError` (naming the step and the last committed
    checkpoint) on a NaN/inf loss or state, without saving it.
    """
    run = build(config)
    plan, g = run.plan, config.global_batch_size
    with contextlib.ExitStack() as stack:
        state, start_step, ckpt, writer = _open_workdir(run, workdir, stack)
        batches = run.train_batches(start_step)
        eval_step = run.eval_step()
        batch = next(batches)
        compiled, compile_s, flops_per_step = _compile_train_step(run, state, batch)
        progress, hooks = _periodic_actions(config, writer, workdir, plan.total_steps)

        def last_committed() -> str:
            if ckpt is None:
                return "none (checkpoints are disabled)"
            ckpt.wait()
            return f"{ckpt.latest_step()} in {ckpt.directory}"

        def check(at_step: int, metrics: dict) -> None:
            if not bool(metrics["finite"]):
                raise NonFiniteLossError(
                    f"non-finite loss or state at step {at_step} (loss {float(metrics['loss'])}, "
                    f"gradient norm {float(metrics['grad_norm'])}); nothing from it was saved. "
                    f"Last good checkpoint: {last_committed()}. Lower the learning rate or "
                    "check the data."
                )

        step, pending, metrics = start_step, None, None
        log_t, log_step, wait_s = time.perf_counter(), start_step, 0.0
        preemption = stack.enter_context(Preemption())
        t_start = time.perf_counter()
        while step < plan.total_steps:
            state, metrics = compiled(state, batch)
            step += 1
            if pending is not None:  # the previous step is done: check it without a stall
                check(*pending)
            pending = (step, metrics)
            for hook in hooks:
                hook(step)
            if step % config.logging.every_steps == 0 or step == plan.total_steps:
                check(step, metrics)
                now = time.perf_counter()
                scalars = _train_scalars(
                    metrics, run, step, steps=step - log_step, seconds=now - log_t, wait_s=wait_s
                )
                writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                log_t, log_step, wait_s = now, step, 0.0
            stop = preemption.requested or (
                ckpt is not None and jax.process_count() > 1 and ckpt.reached_preemption(step)
            )
            if ckpt is not None and (stop or ckpt.should_save(step)):
                check(step, metrics)  # never save a bad state
                with progress.timed("checkpoint", wait_jax_async_dispatch=False):
                    ckpt.save(step, state, config, force=True)
            if stop:
                saved = f"saved step {step}" if ckpt else "checkpoints are disabled: nothing saved"
                log.info("preempted at step %d: %s; rerun the same command to resume", step, saved)
                return {"preempted": True, "step": step, "saved": ckpt is not None}
            if config.stop_after_steps is not None and step >= config.stop_after_steps:
                log.info("stop_after_steps=%d reached (no final checkpoint)", step)
                return {"stopped": True, "step": step}
            if step % plan.eval_every_steps == 0 and step < plan.total_steps:
                with progress.timed("eval", wait_jax_async_dispatch=False):
                    result = evaluation.evaluate(run, evaluation.eval_state(run, state), eval_step)
                writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()})
            if step < plan.total_steps:
                t = time.perf_counter()
                batch = next(batches)  # overlaps the step just dispatched
                wait_s += time.perf_counter() - t
        # A rerun of a finished run trains no step: it evaluates the final checkpoint.
        if pending is not None:
            check(*pending)
        if ckpt is not None and ckpt.latest_step() != step:
            ckpt.save(step, state, config, force=True)
        wall = time.perf_counter() - t_start
        result = evaluation.evaluate(run, evaluation.eval_state(run, state), eval_step)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()})
        summary = {
            "step": step,
            "epochs": step / plan.steps_per_epoch,
            "final_train_loss": float(metrics["loss"]) if metrics is not None else None,
            **{f"eval_{k}": v for k, v in result.items() if k != "num_examples"},
            "eval_examples": result["num_examples"],
            "train_wall_time_s": wall,
            "compile_time_s": compile_s,
            "images_per_s": (step - start_step) * g / wall if wall > 0 else 0.0,
            "num_params": count_params(state.params),
            "flops_per_step": flops_per_step,
            "plan": {**plan.__dict__},
            "devices": f"{plan.num_devices} x {jax.devices()[0].device_kind}",
            "resumed_from_step": start_step,
            "skipped_corrupt_images": batches.num_skipped,
        }
        log.info("%s", summary_line(summary, workdir))
        if jax.process_index() == 0:
            write_json(workdir, "summary.json", {**summary, "config": config_as_json(config)})
        return summary


def main(argv: list[str] | None = None) -> int:
    from lmsgd import cli

    return cli.run_command(
        "lmsgd.train", argv, lambda config, flags: train_and_evaluate(config, flags.workdir)
    )


if __name__ == "__main__":
    raise SystemExit(main())
