"""Training driver: `python -m lmsgd.train --config configs/<name>.py --workdir DIR`.

`train_and_evaluate(config, workdir)` is the library function behind it (notebooks and tests
call it). A rerun with the same workdir resumes from the latest checkpoint and produces the
same parameters as an uninterrupted run: the data position and augmentation are functions of
(seed, step), and everything else is in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from lmsgd import data as data_lib
from lmsgd.checkpointing import Checkpointer
from lmsgd.config import validate_config
from lmsgd.distributed import check_shared_workdir, maybe_initialize
from lmsgd.metric_logging import MetricLogger, format_duration, log
from lmsgd.models import create_model, pool_statistics
from lmsgd.models.summary import count_params
from lmsgd.optim import create_optimizer
from lmsgd.parallel import batch_sharding, create_mesh, per_device_batch_size
from lmsgd.step import (
    TrainState,
    create_train_state,
    make_eval_step,
    make_population_stats_step,
    make_train_step,
)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the bad state was not saved."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks at step boundaries."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the next step boundary, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@dataclasses.dataclass
class RunPlan:
    """Sizes derived from the config, the dataset and the mesh (all global unless named)."""

    num_devices: int
    per_device_batch: int
    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    eval_batch_size: int
    bn_span_examples: int  # examples normalized together in training


def _check_workdir(workdir: str) -> None:
    if "://" in workdir:
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OSError(f"--workdir {workdir} is not writable ({e}); choose another directory") from e


def _apply_num_cpu_devices(config: Mapping[str, Any]) -> None:
    """Simulated CPU devices take effect only before JAX creates its backends."""
    n = config["num_cpu_devices"]
    if n is None:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialized (e.g. in tests or a notebook)
        if jax.default_backend() == "cpu" and jax.device_count() != n:
            log.warning(
                "num_cpu_devices=%d ignored: JAX already runs with %d devices",
                n,
                jax.device_count(),
            )


def build(config: ml_collections.ConfigDict):
    """Everything a run needs that does not depend on the workdir.

    Returns (plan, mesh, model, tx, schedules, info). Fails before any compilation on bad
    sizes.
    """
    info = data_lib.get_dataset_info(config.data)
    ar = config.allreduce
    mesh = create_mesh(ar.mesh_shape, two_level=ar.algorithm != "flat")
    n = mesh.devices.size
    per_device = per_device_batch_size(config.global_batch_size, mesh)
    eval_batch = config.eval_batch_size or config.global_batch_size
    if eval_batch % n:
        raise ValueError(f"eval_batch_size={eval_batch} must be a multiple of the {n} devices")
    group = config.model.bn_group_size
    if group and n % group:
        raise ValueError(f"model.bn_group_size={group} must divide the {n} devices (or be 0)")
    virtual = config.model.bn_virtual_batch_size
    if virtual and (group != 1 or per_device % virtual):
        raise ValueError(
            f"model.bn_virtual_batch_size={virtual} needs model.bn_group_size=1 and must divide "
            f"the per-device batch of {per_device}"
        )
    steps_per_epoch = data_lib.steps_per_epoch(info, config.global_batch_size)
    total_steps = max(1, math.ceil(config.num_epochs * steps_per_epoch))
    plan = RunPlan(
        num_devices=n,
        per_device_batch=per_device,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        eval_every_steps=max(1, round(config.eval_every_epochs * steps_per_epoch)),
        eval_batch_size=eval_batch,
        bn_span_examples=virtual or per_device * (group or n),
    )
    model = create_model(
        config.model.name,
        num_classes=config.model.num_classes or info.num_classes,
        dtype=config.model.dtype,
        width_multiplier=config.model.width_multiplier,
        zero_init_residual=config.model.zero_init_residual,
        norm_mode=config.model.norm_mode,
        bn_group_size=group,
        bn_virtual_batch_size=virtual,
        bn_momentum=config.model.bn_momentum,
        bn_epsilon=config.model.bn_epsilon,
    )
    tx, schedules = create_optimizer(
        config.optimizer,
        global_batch_size=config.global_batch_size,
        steps_per_epoch=steps_per_epoch,
        num_epochs=config.num_epochs,
    )
    return plan, mesh, model, tx, schedules, info


def evaluate(config, state: TrainState, eval_step, mesh, plan: RunPlan) -> dict[str, float]:
    """Top-1, top-5 and loss over every evaluation example (padding masked out)."""
    totals: dict[str, float] = {}
    for batch in data_lib.eval_batches(
        config.data, global_batch_size=plan.eval_batch_size, sharding=batch_sharding(mesh)
    ):
        sums = eval_step(state, batch)
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals["count"]
    return {
        "top1": totals["top1_correct"] / count,
        "top5": totals["top5_correct"] / count,
        "loss": totals["loss_sum"] / count,
        "num_examples": int(count),
    }


def population_statistics(config, state: TrainState, mesh, model, plan: RunPlan):
    """'Precise BN': statistics over K fresh training batches with the final weights, pooled
    exactly over devices and batches (PAPER.md s.3, K = model.eval_stats_batches > 1)."""
    stats_step = make_population_stats_step(model, mesh)
    batches = data_lib.train_batches(
        config.data,
        global_batch_size=config.global_batch_size,
        seed=config.seed + 1,  # fresh batches, not the ones just trained on
        sharding=batch_sharding(mesh),
    )
    collected = [stats_step(state, next(batches)) for _ in range(config.model.eval_stats_batches)]

    def pool(*layers):
        means = np.stack([np.asarray(layer["mean"]) for layer in layers])
        variances = np.stack([np.asarray(layer["var"]) for layer in layers])
        mean, var = pool_statistics(means, variances)
        return {**layers[-1], "mean": mean, "var": var}

    is_layer = lambda x: isinstance(x, dict) and "mean" in x and "var" in x
    pooled = jax.tree.map(pool, *collected, is_leaf=is_layer)
    return jax.device_put(pooled, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def _eval_state(config, state, mesh, model, plan):
    if config.model.norm_mode == "batch_stats" and config.model.eval_stats_batches > 1:
        return state.replace(batch_stats=population_statistics(config, state, mesh, model, plan))
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) in `workdir` and evaluates; returns the final metrics.

    Writes `<workdir>/config.json`, `metrics.jsonl`, TensorBoard summaries, checkpoints and,
    at the end, `summary.json`. Raises `NonFiniteLossError` on a NaN/inf loss (naming the step
    and the last good checkpoint) without saving the bad state.
    """
    validate_config(config)
    _apply_num_cpu_devices(config)
    maybe_initialize(config.distributed)
    _check_workdir(workdir)
    check_shared_workdir(workdir)
    plan, mesh, model, tx, schedules, info = build(config)
    logger = MetricLogger(workdir, tensorboard=config.logging.tensorboard)
    logger.info(
        "process %d/%d, %d devices (%s), mesh %s",
        jax.process_index(), jax.process_count(), plan.num_devices,
        jax.devices()[0].device_kind, dict(mesh.shape),
    )  # fmt: skip
    if logger.active:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))

    state = create_train_state(model, tx, jax.random.key(config.seed), info.image_shape, mesh)
    ckpt = None
    start_step = 0
    if config.checkpoint.enabled:
        ckpt = Checkpointer(
            workdir,
            every_steps=config.checkpoint.every_steps,
            keep=config.checkpoint.keep,
            async_save=config.checkpoint.async_save,
        )
        if ckpt.latest_step() is not None:
            state, start_step = ckpt.restore(state, config)
            logger.info("resumed from checkpoint %d in %s", start_step, ckpt.directory)

    train_step = make_train_step(
        model,
        tx,
        mesh,
        schedules=schedules,
        allreduce_algorithm=config.allreduce.algorithm,
        allreduce_dtype=config.allreduce.dtype,
        allreduce_fuse=config.allreduce.fuse,
    )
    eval_step = make_eval_step(model, mesh)
    batches = data_lib.train_batches(
        config.data,
        global_batch_size=config.global_batch_size,
        seed=config.seed,
        sharding=batch_sharding(mesh),
        start_epoch=start_step // plan.steps_per_epoch,
        start_step=start_step % plan.steps_per_epoch,
    )

    num_params = count_params(state.params)
    first = next(batches)
    t_compile = time.perf_counter()
    compiled = train_step.lower(state, first).compile()  # the one compilation of the step
    compile_s = time.perf_counter() - t_compile
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops_per_step = float(cost.get("flops", 0.0)) * plan.num_devices
    logger.info(
        "%s: %s parameters; %.3g FLOPs per step (global, XLA); %d steps (%d/epoch, %.4g "
        "epochs); global batch %d = %d devices x %d; BN over %d examples; all-reduce %s %s%s; "
        "step compiled in %.1fs",
        config.model.name, f"{num_params:,}", flops_per_step, plan.total_steps,
        plan.steps_per_epoch, config.num_epochs, config.global_batch_size, plan.num_devices,
        plan.per_device_batch, plan.bn_span_examples, config.allreduce.algorithm,
        config.allreduce.dtype, " fused" if config.allreduce.fuse else "", compile_s,
    )  # fmt: skip

    last_good = ckpt.latest_step() if ckpt else None
    step = start_step
    eval_metrics: dict[str, float] = {}
    history = {"train_time_s": 0.0, "data_wait_s": 0.0, "images": 0}
    window = {"t": time.perf_counter(), "steps": 0, "wait": 0.0}
    profile = config.logging.profile_steps
    pending = None  # (step, metrics) of the previous step, read while the next one runs
    t_start = time.perf_counter()

    def check_finite(at_step, metrics):
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss {loss} at step {at_step}; the run stopped without saving it. "
                f"Last good checkpoint: {last_good if last_good is not None else 'none'} in "
                f"{ckpt.directory if ckpt else workdir}. Lower the learning rate or check data."
            )
        return loss

    def log_train(at_step, metrics):
        now = time.perf_counter()
        elapsed = now - window["t"]
        steps = max(window["steps"], 1)
        scalars = {k: float(v) for k, v in metrics.items()}
        step_time = elapsed / steps
        scalars.update(
            epoch=at_step / plan.steps_per_epoch,
            step_time_s=step_time,
            images_per_s=config.global_batch_size / step_time,
            images_per_s_per_device=config.global_batch_size / step_time / plan.num_devices,
            data_wait_fraction=window["wait"] / elapsed if elapsed > 0 else 0.0,
        )
        logger.write(at_step, "train", scalars)
        eta = (plan.total_steps - at_step) * step_time
        extra = "".join(f" {k} {scalars[k]:.4g}" for k in ("alpha_sgd",) if k in scalars)
        logger.info(
            "step %d/%d (epoch %.2f) loss %.4f acc %.3f lr %.4g%s |g| %.3g | %.0f img/s "
            "(%.0f/device) wait %.0f%% | ETA %s",
            at_step, plan.total_steps, scalars["epoch"], scalars["loss"], scalars["accuracy"],
            scalars.get("learning_rate", float("nan")), extra, scalars["grad_norm"],
            scalars["images_per_s"], scalars["images_per_s_per_device"],
            100 * scalars["data_wait_fraction"], format_duration(eta),
        )  # fmt: skip
        window.update(t=now, steps=0, wait=0.0)

    def save(at_step, state):
        nonlocal last_good
        if ckpt is None:
            return
        ckpt.save(at_step, state, config)
        last_good = at_step

    with _Preemption() as preemption:
        batch = first
        while step < plan.total_steps:
            if profile and step == profile[0] and logger.active:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
            state, metrics = compiled(state, batch)
            step += 1
            window["steps"] += 1
            if pending is not None:  # the previous step is done: check it without stalling
                check_finite(*pending)
            pending = (step, metrics)
            if profile and step == profile[1] and logger.active:
                jax.profiler.stop_trace()
            if step % config.logging.every_steps == 0 or step == plan.total_steps:
                check_finite(step, metrics)
                log_train(step, metrics)
            stop_now = preemption.requested or (
                ckpt is not None and jax.process_count() > 1 and ckpt.reached_preemption(step)
            )
            if (ckpt and ckpt.should_save(step)) or stop_now:
                check_finite(step, metrics)  # never save a bad state
                save(step, state)
            if stop_now:
                logger.info("preempted: saved step %d; rerun the same command to resume", step)
                if ckpt:
                    ckpt.wait()
                logger.close()
                return {"preempted": True, "step": step}
            if config.stop_after_steps is not None and step >= config.stop_after_steps:
                logger.info("stop_after_steps=%d reached (no final checkpoint)", step)
                if ckpt:
                    ckpt.wait()
                logger.close()
                return {"stopped": True, "step": step}
            if step % plan.eval_every_steps == 0 and step < plan.total_steps:
                eval_metrics = evaluate(
                    config, _eval_state(config, state, mesh, model, plan), eval_step, mesh, plan
                )
                logger.write(step, "eval", eval_metrics)
                logger.info(
                    "eval at step %d: top-1 %.4f top-5 %.4f loss %.4f",
                    step,
                    eval_metrics["top1"],
                    eval_metrics["top5"],
                    eval_metrics["loss"],
                )
            if step < plan.total_steps:
                t_wait = time.perf_counter()
                batch = next(batches)
                wait = time.perf_counter() - t_wait
                window["wait"] += wait
                history["data_wait_s"] += wait
        # A rerun of a finished run trains no step: it only evaluates the final checkpoint.
        final_loss = check_finite(step, metrics) if pending is not None else None
        if ckpt is not None and last_good != step:
            save(step, state)
        wall = time.perf_counter() - t_start
        eval_metrics = evaluate(
            config, _eval_state(config, state, mesh, model, plan), eval_step, mesh, plan
        )
        logger.write(step, "eval", eval_metrics)
        steps_run = step - start_step
        summary = {
            "step": step,
            "epochs": step / plan.steps_per_epoch,
            "final_train_loss": final_loss,
            "eval_top1": eval_metrics["top1"],
            "eval_top5": eval_metrics["top5"],
            "eval_loss": eval_metrics["loss"],
            "eval_examples": eval_metrics["num_examples"],
            "train_wall_time_s": wall,
            "compile_time_s": compile_s,
            "images_per_s": steps_run * config.global_batch_size / wall if wall > 0 else 0.0,
            "data_wait_fraction": history["data_wait_s"] / wall if wall > 0 else 0.0,
            "num_params": num_params,
            "flops_per_step": flops_per_step,
            "plan": dataclasses.asdict(plan),
            "devices": f"{plan.num_devices} x {jax.devices()[0].device_kind}",
            "resumed_from_step": start_step,
            "skipped_corrupt_images": getattr(batches, "num_skipped", 0),
        }
        logger.info(
            "done: step %d, eval top-1 %.4f top-5 %.4f (%d examples), %s wall",
            step, summary["eval_top1"], summary["eval_top5"], summary["eval_examples"],
            format_duration(wall),
        )  # fmt: skip
        if logger.active:
            with open(os.path.join(workdir, "summary.json"), "w") as f:
                json.dump({**summary, "config": json.loads(config.to_json())}, f, indent=2)
        if ckpt is not None:
            ckpt.wait()
            ckpt.close()
        logger.close()
        return summary


def main(argv) -> None:
    from absl import flags

    # orbax reports every save step by step through absl at INFO; keep its warnings. (Here,
    # not before app.run, which resets absl's verbosity from its flags.)
    logging.getLogger("absl").setLevel(logging.WARNING)

    flags_ = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = flags_.config
    validate_config(config)  # before anything touches JAX devices
    _apply_num_cpu_devices(config)
    summary = train_and_evaluate(config, flags_.workdir)
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}, indent=1))


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file (configs/<name>.py); override keys with --config.key=value",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Directory (or gs:// bucket) for checkpoints and logs.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    logging.getLogger("lmsgd").setLevel(logging.INFO)
    app.run(main)
