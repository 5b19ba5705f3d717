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
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lmsgd import evaluation, resume
from lmsgd.checkpointing import Checkpointer
from lmsgd.config import validate_config
from lmsgd.console import summary_line
from lmsgd.distributed import check_shared_workdir
from lmsgd.errors import NonFiniteLossError
from lmsgd.goodput import Goodput
from lmsgd.metric_logging import create_writer, drop_metrics_after
from lmsgd.models.summary import count_params
from lmsgd.optim import (
    RMSpropWarmupState,
    has_rms_buffer,
    with_rms_buffer,
    without_rms_buffer,
)
from lmsgd.progress import Profile, ReportProgress
from lmsgd.run import Run, build, setup_devices
from lmsgd.step import make_state_check
from lmsgd.workdir import (
    WorkdirLock,
    check_compatible,
    config_as_json,
    is_remote,
    resolve_accumulation_steps,
    write_json,
    write_layout,
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


def resolve_layout(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[ml_collections.ConfigDict, resume.Layout]:
    """The devices and processes this run has, and `config` with `accumulation_steps`
    resolved for them (derived on resume where None; `lmsgd.workdir`). Reads the workdir
    only."""
    validate_config(config)
    setup_devices(config)
    layout = resume.Layout(num_devices=jax.device_count(), num_processes=jax.process_count())
    return resolve_accumulation_steps(workdir, config, layout), layout


def configure_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Turns JAX's persistent compilation cache on as `config.compilation_cache` says;
    returns its directory (None: off). Call before the run's first compilation.

    'workdir': `<workdir>/jax_cache`, unless JAX already has a directory (the
    JAX_COMPILATION_CACHE_DIR variable or jax.config), which wins. The workdir is the place
    every host of a multi-host run shares (`check_shared_workdir`) and the one a restart
    reuses; JAX writes entries from process 0 only (jax/_src/compiler.py `_cache_write`),
    and every process reads them, so on a pod all hosts load the step instead of compiling
    it. A directory private to each host (~/.cache) would help host 0 only.
    """
    setting = config.compilation_cache
    current = jax.config.jax_compilation_cache_dir
    if setting == "":
        if current:  # off, even where JAX_COMPILATION_CACHE_DIR says otherwise (process-wide)
            jax.config.update("jax_enable_compilation_cache", False)
        return None
    if setting == "workdir":
        if current:
            return current
        setting = workdir.rstrip("/") + "/jax_cache" if is_remote(workdir) else os.path.join(
            os.path.abspath(workdir), "jax_cache"
        )  # fmt: skip
    if current and current != setting:
        log.warning("compilation cache %s ignored: JAX already caches in %s", setting, current)
        return current
    jax.config.update("jax_compilation_cache_dir", setting)
    return setting


def _open_workdir(run: Run, workdir: str, stack: contextlib.ExitStack, layout: resume.Layout):
    """Lock, compatibility checks and restore, then (only then) the files of the run."""
    config, primary = run.config, jax.process_index() == 0
    lock = None
    if primary and not is_remote(workdir):  # a bucket has no flock; one run per bucket path
        lock = stack.enter_context(WorkdirLock(workdir))
    check_shared_workdir(workdir)
    check_compatible(workdir, config, layout)  # raises before any file changes
    if lock is not None:
        lock.record_holder()
    configure_compilation_cache(config, workdir)
    state, start_step, ckpt = None, 0, None
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
            # Into this mesh's shardings, nothing initialized: any device count wrote it.
            state, start_step = ckpt.restore(run.abstract_state(), config)
            log.info("resumed from checkpoint %d in %s", start_step, ckpt.directory)
    if state is None:
        state = run.init_state()
    if primary:
        write_json(workdir, "config.json", config_as_json(config))
        write_layout(workdir, layout)
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


class _Programs:
    """The run's compiled train steps, each compiled when first needed: with the norms (steps
    that log) or without (the others), and with or without `rmsprop_warmup`'s second buffer
    (before or after the hand-over). At most four; a run that logs every step, or never
    reaches the hand-over, compiles fewer. Every one of them computes the same state."""

    def __init__(self, run: Run):
        self.run = run
        self._compiled: dict[tuple[bool, bool], Any] = {}
        self.seconds = 0.0

    def ready(self, state: Any, *, norms: bool) -> bool:
        return (has_rms_buffer(state.opt_state), norms) in self._compiled

    def get(self, state: Any, batch: Any, *, norms: bool) -> Any:
        key = (has_rms_buffer(state.opt_state), norms)
        if key not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[key] = self.run.train_step(norms=norms).lower(state, batch).compile()
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            if self._compiled.keys() != {key}:  # the first is on the model line
                # The console keeps its lines; the time: line counts every compile.
                log.debug(
                    "compiled the train step %s norms, %s the second optimizer buffer in %.1fs",
                    "with" if norms else "without",
                    "with" if key[0] else "without",
                    seconds,
                )
        return self._compiled[key]


def _without_rms_buffer(state: Any) -> Any:
    return state.replace(opt_state=without_rms_buffer(state.opt_state))


def _checkpoint_layout(run: Run) -> Any:
    """`state -> state` as checkpoints hold it: after the hand-over, the dropped second
    buffer saved as zeros (never read again), so every checkpoint of a run has one layout and
    resumes on either side of the hand-over."""
    template = run.abstract_state()
    if not has_rms_buffer(template.opt_state):
        return lambda state: state
    is_state = lambda x: isinstance(x, RMSpropWarmupState)
    ms = [x.m for x in jax.tree.leaves(template.opt_state, is_leaf=is_state) if is_state(x)]
    zeros = jax.jit(
        lambda: jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), ms),
        out_shardings=jax.tree.map(lambda t: t.sharding, ms),
    )

    def layout(state: Any) -> Any:
        if has_rms_buffer(state.opt_state):
            return state
        filled = iter(zeros())
        return state.replace(opt_state=with_rms_buffer(state.opt_state, lambda _: next(filled)))

    return layout


def _compile_train_step(
    run: Run, programs: _Programs, state: Any, batch: Any, *, norms: bool
) -> tuple[Any, float, float]:
    """The run's first compilation of the train step: ``(compiled, seconds, FLOPs per global
    step)``, FLOPs from XLA's cost analysis of the per-device program."""
    config, plan = run.config, run.plan
    t0 = time.perf_counter()
    compiled = programs.get(state, batch, norms=norms)
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


def _step_hooks(config, writer, workdir: str, stack: contextlib.ExitStack) -> list:
    """What runs after every step: the steps/s report, and the profiler when configured."""
    hooks: list = [ReportProgress(writer, config.logging.every_steps)]
    if config.logging.profile_steps and jax.process_index() == 0:
        first, last = config.logging.profile_steps
        profile = Profile(workdir, first, last)
        stack.callback(profile.close)
        hooks.append(profile)
    return hooks


def _train_scalars(
    metrics: dict,
    run: Run,
    step: int,
    *,
    steps: int,
    seconds: float,
    wait_s: float,
    compile_s: float,
) -> dict[str, float]:
    """The step's metrics (host floats) and the throughput of the last ``steps`` steps, which
    took ``seconds`` of which ``wait_s`` waiting for input; ``compile_s``: the seconds spent
    compiling programs for them (the first interval of a start counts the compile before its
    first step; `lmsgd.plan.run_metrics` leaves every interval with a compile out)."""
    plan = run.plan
    images_per_s = steps * run.config.global_batch_size / seconds
    return {
        **{k: float(v) for k, v in metrics.items() if k != "finite"},
        "epoch": step / plan.steps_per_epoch,
        "step_time_s": seconds / steps,
        "images_per_s": images_per_s,
        "images_per_s_per_device": images_per_s / plan.num_devices,
        "data_wait_fraction": wait_s / seconds,
        "compile_s": compile_s,
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, goodput: Goodput | None = None
) -> dict[str, Any]:
    """Trains (or resumes) in `workdir` and evaluates; returns the final summary.

    Writes `config.json`, `layout.json`, `metrics.jsonl`, TensorBoard summaries, checkpoints
    and `summary.json` (with `goodput`: where the wall time went). A rerun may use another
    device count, process count or accumulation where the training stays the same
    (docs/resuming.md). Raises `NonFiniteLossError` (naming the step and the last committed
    checkpoint) on a NaN/inf loss or state, without saving it.

    `goodput`: the account to add to (the command line's starts at process start).
    """
    gp = goodput or Goodput()
    with gp.phase("build"):
        config, layout = resolve_layout(config, workdir)
        run = build(config)
    plan, g = run.plan, config.global_batch_size
    with contextlib.ExitStack() as stack:
        with gp.phase("restore"):
            state, start_step, ckpt, writer = _open_workdir(run, workdir, stack, layout)
            batches = run.train_batches(start_step)
            eval_step = run.eval_step()
        with gp.phase("data_wait"):
            batch = next(batches)
        rms_free_from = run.rms_buffer_free_from
        if rms_free_from is not None and start_step >= rms_free_from:
            state = _without_rms_buffer(state)
        programs = _Programs(run)
        state_check = make_state_check(run.mesh)
        checkpoint_layout = _checkpoint_layout(run)

        def logs(at_step: int) -> bool:
            return at_step % config.logging.every_steps == 0 or at_step == plan.total_steps

        with gp.phase("compile"):
            compiled, compile_s, flops_per_step = _compile_train_step(
                run, programs, state, batch, norms=logs(start_step + 1)
            )
        hooks = _step_hooks(config, writer, workdir, stack)

        def last_committed() -> str:
            if ckpt is None:
                return "none (checkpoints are disabled)"
            ckpt.wait()
            return f"{ckpt.latest_step()} in {ckpt.directory}"

        def check(at_step: int, metrics: dict, state: Any = None) -> None:
            """Raises on a non-finite loss; with `state`, also on a non-finite state that
            the step did not check itself (a step without norms checks only its loss)."""
            finite = bool(metrics["finite"])
            if finite and state is not None and "param_norm" not in metrics:
                finite = bool(state_check(state))
            if not finite:
                norm = metrics.get("grad_norm")
                raise NonFiniteLossError(
                    f"non-finite loss or state at step {at_step} (loss {float(metrics['loss'])}"
                    + (f", gradient norm {float(norm)}" if norm is not None else "")
                    + f"); nothing from it was saved. Last good checkpoint: {last_committed()}. "
                    "Lower the learning rate or check the data."
                )

        step, pending, metrics, early = start_step, None, None, None
        log_t, log_step, wait_s = time.perf_counter(), start_step, 0.0
        log_compile_s = 0.0  # programs.seconds at the last log (0: the first interval's compile)
        preemption = stack.enter_context(Preemption())
        t_start = time.perf_counter()
        with gp.phase("train_steps"):
            while step < plan.total_steps:
                if rms_free_from is not None and step == rms_free_from:
                    state = _without_rms_buffer(state)  # its buffers are freed here
                if not programs.ready(state, norms=logs(step + 1)):
                    with gp.phase("compile"):
                        programs.get(state, batch, norms=logs(step + 1))
                compiled = programs.get(state, batch, norms=logs(step + 1))
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
                        metrics, run, step, steps=step - log_step, seconds=now - log_t,
                        wait_s=wait_s, compile_s=programs.seconds - log_compile_s,
                    )  # fmt: skip
                    writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                    log_t, log_step, wait_s = now, step, 0.0
                    log_compile_s = programs.seconds
                if ckpt is not None:
                    ckpt.check_for_errors()  # a failed background save stops the run now
                stop = preemption.requested or (
                    ckpt is not None and jax.process_count() > 1 and ckpt.reached_preemption(step)
                )
                if ckpt is not None and (stop or ckpt.should_save(step)):
                    check(step, metrics, state)  # never save a bad state
                    with gp.phase("checkpoint"):
                        ckpt.save(step, checkpoint_layout(state), config, force=True)
                if stop:
                    saved = (
                        f"saved step {step}" if ckpt else "checkpoints are disabled: nothing saved"
                    )
                    log.info(
                        "preempted at step %d: %s; rerun the same command to resume", step, saved
                    )
                    early = {"preempted": True, "step": step, "saved": ckpt is not None}
                    break
                if config.stop_after_steps is not None and step >= config.stop_after_steps:
                    log.info("stop_after_steps=%d reached (no final checkpoint)", step)
                    early = {"stopped": True, "step": step}
                    break
                if step % plan.eval_every_steps == 0 and step < plan.total_steps:
                    with gp.phase("eval"):
                        result = evaluation.evaluate(
                            run, evaluation.eval_state(run, state), eval_step
                        )
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()})
                if step < plan.total_steps:
                    t = time.perf_counter()
                    with gp.phase("data_wait"):
                        batch = next(batches)  # overlaps the step just dispatched
                    wait_s += time.perf_counter() - t
            # A rerun of a finished run trains no step: it evaluates the final checkpoint.
            if pending is not None and early is None:
                check(*pending)
        if early is not None:  # preempted or stopped: where the time went, and out
            with gp.phase("checkpoint"):
                if ckpt is not None:
                    ckpt.wait()
            log.info("%s", gp.line())
            return early
        wall = time.perf_counter() - t_start
        with gp.phase("checkpoint"):
            if ckpt is not None and ckpt.latest_step() != step:
                if metrics is not None:
                    check(step, metrics, state)
                ckpt.save(step, checkpoint_layout(state), config, force=True)
            if ckpt is not None:
                ckpt.wait()  # committed before the summary says so
        with gp.phase("eval"):
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
            "compilation_cache": jax.config.jax_compilation_cache_dir
            if jax.config.jax_enable_compilation_cache
            else None,
        }
        # What the exit would do anyway, inside the account: join orbax's threads, flush the
        # metrics (the callbacks then find nothing left to do).
        with gp.phase("checkpoint"):
            if ckpt is not None:
                ckpt.close()
        with gp.phase("train_steps"):
            writer.flush()
        summary["goodput"] = gp.summary()
        log.info("%s", summary_line(summary, workdir))
        log.info("%s", gp.line())
        if jax.process_index() == 0:
            write_json(workdir, "summary.json", {**summary, "config": config_as_json(config)})
        return summary


def main(argv: list[str] | None = None) -> int:
    from lmsgd import cli
    from lmsgd.parallel.xla_flags import apply_gpu_xla_flags

    apply_gpu_xla_flags()  # on GPU, before JAX starts its backend; the user's XLA_FLAGS win

    return cli.run_command(
        "lmsgd.train",
        argv,
        lambda config, flags: train_and_evaluate(
            config, flags.workdir, goodput=Goodput(since_process_start=True)
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
