"""One set-up for every entry point: `build(config)` returns the `Run` that training,
evaluation, the benchmarks, the experiments and the notebook all start from.

`build` validates the config once, applies the device settings, builds the mesh, the model,
the optimizer and its schedules and the data source (once: image folders are listed once), and
derives the run's sizes (`RunPlan`). It fails on bad input before anything is compiled, with a
`ConfigError` or `DataError` naming the value and what is allowed. It touches no workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from lmsgd import data as data_lib
from lmsgd import layout as layout_lib
from lmsgd.config import validate_config
from lmsgd.distributed import maybe_initialize
from lmsgd.errors import ConfigError, DataError
from lmsgd.models import ResNet, model_from_config
from lmsgd.optim import create_optimizer, handover_complete_step
from lmsgd.parallel import batch_sharding, create_mesh
from lmsgd.parallel.mesh import replicated
from lmsgd.step import (
    TrainState,
    create_train_state,
    init_train_state,
    make_eval_step,
    make_train_step,
)

log = logging.getLogger("lmsgd")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Sizes derived from the config, the dataset and the mesh (global unless named).

    Attributes:
      num_devices, num_processes: of the mesh / the job.
      per_device_batch: training examples per device per step (global batch / devices).
      accumulation_steps: micro-batches per device per step (K).
      micro_batch: examples per device per micro-batch (per_device_batch / K).
      steps_per_epoch: optimizer steps per epoch (the last partial batch is dropped).
      total_steps: optimizer steps of the whole run.
      eval_every_steps: evaluation interval in steps.
      eval_batch_size: global evaluation batch.
      bn_span_examples: examples whose statistics one normalization layer pools in training.
    """

    num_devices: int
    num_processes: int
    per_device_batch: int
    accumulation_steps: int
    micro_batch: int
    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    eval_batch_size: int
    bn_span_examples: int


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a run needs that does not depend on the workdir."""

    config: ml_collections.ConfigDict
    plan: RunPlan
    mesh: Mesh
    model: ResNet
    tx: optax.GradientTransformation
    schedules: dict[str, optax.Schedule]
    info: data_lib.DatasetInfo
    source: Any  # lmsgd.data.sources.Source (built once per run)

    def init_state(self) -> TrainState:
        """Freshly initialized parameters and optimizer state, replicated over the mesh."""
        return create_train_state(
            self.model, self.tx, jax.random.key(self.config.seed), self.info.image_shape, self.mesh
        )

    def abstract_state(self) -> TrainState:
        """The state's shapes and dtypes with the shardings the train step takes on this
        mesh (`jax.ShapeDtypeStruct`s; nothing is computed): the target a checkpoint written
        on any other mesh is restored into (`lmsgd.checkpointing.Checkpointer.restore`)."""
        init = functools.partial(
            init_train_state, self.model, self.tx, jax.random.key(self.config.seed),
            self.info.image_shape,
        )  # fmt: skip
        shapes = jax.eval_shape(init)
        shardings = state_shardings(shapes, self.mesh)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
        )

    def train_step(self, *, norms: bool = True):
        """The jitted sharded train step `(state, batch) -> (state, metrics)`; `norms=False`:
        without the gradient and parameter norms (`make_train_step`)."""
        ar = self.config.allreduce
        return make_train_step(
            self.model,
            self.tx,
            self.mesh,
            schedules=self.schedules,
            allreduce_algorithm=ar.algorithm,
            allreduce_dtype=ar.dtype,
            allreduce_fuse=ar.fuse,
            allreduce_flatten=ar.flatten,
            allreduce_predivide_exponent=ar.predivide_exponent,
            accumulation_steps=self.plan.accumulation_steps,
            label_smoothing=self.config.label_smoothing,
            unroll=not self.micro_batch_loop_rolled,
            norms=norms,
            remat=self.config.model.remat,
        )

    @property
    def rms_buffer_free_from(self) -> int | None:
        """The first step whose update no longer needs `rmsprop_warmup`'s second buffer
        (alpha_sgd = 1 from there to the end), or None (another optimizer, or no hand-over
        in this run). The driver drops the buffer there (`lmsgd.optim.without_rms_buffer`)."""
        if self.config.optimizer.name != "rmsprop_warmup" or "alpha_sgd" not in self.schedules:
            return None
        return handover_complete_step(self.schedules["alpha_sgd"], self.plan.total_steps)

    @property
    def micro_batch_loop_rolled(self) -> bool:
        """Whether the accumulation loop stays a `lax.scan` (GPU/TPU) or is unrolled, micro-
        batches chained one after another (XLA:CPU runs a loop body's backward convolutions
        ~20x slower; see `lmsgd.step.make_train_step`). Memory is flat in K either way."""
        return self.mesh.devices.flat[0].platform != "cpu"

    @property
    def cost_analysis_factor(self) -> int:
        """XLA's cost analysis counts a loop body once: K for a rolled micro-batch loop."""
        k = self.plan.accumulation_steps
        return k if k > 1 and self.micro_batch_loop_rolled else 1

    def eval_step(self):
        return make_eval_step(self.model, self.mesh)

    def train_batches(self, start_step: int = 0, *, seed_offset: int = 0):
        """Training batches from optimizer step `start_step` on (sharded over the mesh)."""
        return data_lib.train_batches(
            self.config.data,
            global_batch_size=self.config.global_batch_size,
            seed=self.config.seed + seed_offset,
            sharding=batch_sharding(self.mesh),
            start_epoch=start_step // self.plan.steps_per_epoch,
            start_step=start_step % self.plan.steps_per_epoch,
            source=self.source,
        )

    def eval_batches(self):
        """The evaluation split once, padded and masked (sharded over the mesh)."""
        return data_lib.eval_batches(
            self.config.data,
            global_batch_size=self.plan.eval_batch_size,
            sharding=batch_sharding(self.mesh),
            source=self.source,
        )


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """Where each leaf of the train state lives on `mesh` (a tree like `state`): replicated,
    as the train step's `in_shardings` say (lmsgd.step). The one place to change if the state
    is ever sharded; restoring a checkpoint follows it (`Run.abstract_state`)."""
    return jax.tree.map(lambda _: replicated(mesh), state)


def apply_num_cpu_devices(n: int | None) -> None:
    """Simulated CPU devices take effect only before JAX creates its backends."""
    if n is None:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialized (tests, notebooks)
        if jax.default_backend() == "cpu" and jax.device_count() != n:
            log.warning(
                "num_cpu_devices=%d ignored: JAX already runs with %d devices",
                n,
                jax.device_count(),
            )


def setup_devices(config: Mapping[str, Any]) -> None:
    """Simulated CPU devices and the distributed runtime, as the config asks (idempotent)."""
    apply_num_cpu_devices(config["num_cpu_devices"])
    maybe_initialize(
        config["distributed"], heartbeat_timeout_seconds=config.get("heartbeat_timeout_seconds")
    )


def make_source(data_config: Mapping[str, Any]):
    """The dataset's `Source`, with a missing or unprepared dataset as a `DataError` and a
    missing TensorFlow (for a tf.data pipeline) as one line naming the package, before
    anything compiles."""
    from lmsgd.data import requires, sources

    requires.check_available(data_config)
    try:
        return sources.make_source(data_config)
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise DataError(
            f"{e}" + ("\n  (CIFAR-10: python -m lmsgd.data.prepare cifar10 unpacks "
                      "$LMSGD_SHARED_DATA/cifar10-jpeg.tar.gz)"
                      if data_config["name"] == "image_folder" else "")
        ) from e  # fmt: skip


def plan_run(config: Mapping[str, Any], info: data_lib.DatasetInfo, num_devices: int) -> RunPlan:
    """The run's sizes; raises ConfigError if the batch sizes do not fit the devices."""
    g, n = config["global_batch_size"], num_devices
    if g % n:
        raise ConfigError(
            f"config.global_batch_size={g} is not divisible by the {n} devices; use a multiple "
            f"of {n} (e.g. {max(n, g // n * n)} or {(g // n + 1) * n})"
        )
    eval_batch = config["eval_batch_size"] or g
    if eval_batch % n:
        raise ConfigError(
            f"config.eval_batch_size={eval_batch} is not divisible by the {n} devices"
        )
    model = config["model"]
    group, virtual = model["bn_group_size"], model["bn_virtual_batch_size"]
    if group and n % group:
        raise ConfigError(
            f"config.model.bn_group_size={group} must divide the {n} devices (or be 0 = all)"
        )
    # None: from config.max_micro_batch (lmsgd.layout), or derived on resume (lmsgd.workdir).
    per_device, k = g // n, layout_lib.accumulation_steps(config, n)
    if per_device % k:
        raise ConfigError(
            f"config.accumulation_steps={k} must divide the per-device batch of {per_device} "
            f"(= global_batch_size {g} / {n} devices)"
        )
    micro = per_device // k
    if k > 1 and group != 1:
        raise ConfigError(
            f"config.accumulation_steps={k} normalizes each micro-batch on its device and needs "
            f"config.model.bn_group_size=1 (got {group})"
        )
    if virtual and micro % virtual:
        raise ConfigError(
            f"config.model.bn_virtual_batch_size={virtual} must divide the per-device "
            f"micro-batch of {micro} (= global_batch_size {g} / {n} devices / "
            f"accumulation_steps {k})"
        )
    try:
        steps_per_epoch = data_lib.steps_per_epoch(info, g)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return RunPlan(
        num_devices=n,
        num_processes=jax.process_count(),
        per_device_batch=per_device,
        accumulation_steps=k,
        micro_batch=micro,
        steps_per_epoch=steps_per_epoch,
        total_steps=max(1, math.ceil(config["num_epochs"] * steps_per_epoch)),
        eval_every_steps=max(1, round(config["eval_every_epochs"] * steps_per_epoch)),
        eval_batch_size=eval_batch,
        bn_span_examples=virtual or micro * (group or n),
    )


def assemble(
    config: ml_collections.ConfigDict, mesh: Mesh, info: data_lib.DatasetInfo, source: Any = None
) -> Run:
    """The run on a given mesh (its devices may be remote, e.g. a TPU topology the planner
    compiles for) and dataset metadata; `source` None when no data will be read."""
    plan = plan_run(config, info, mesh.devices.size)
    # The model normalizes the pixels the pipelines send (uint8) with the dataset's statistics.
    model = model_from_config(config.model, info.num_classes, info.mean, info.std)
    try:
        tx, schedules = create_optimizer(
            config.optimizer,
            global_batch_size=config.global_batch_size,
            steps_per_epoch=plan.steps_per_epoch,
            num_epochs=config.num_epochs,
        )
    except ValueError as e:  # schedule arithmetic, e.g. warm-up longer than the run
        raise ConfigError(f"config.optimizer: {e}") from e
    return Run(config, plan, mesh, model, tx, dict(schedules), info, source)


def build(config: ml_collections.ConfigDict) -> Run:
    """Validates `config` and builds the run (devices, mesh, model, optimizer, data source)."""
    validate_config(config)
    setup_devices(config)
    source = make_source(config.data)
    # The recipe on this device count: 'auto' becomes a concrete all-reduce and mesh, and a
    # BN span the devices cannot hold fails here in one line (lmsgd.layout).
    layout_lib.apply(config, layout_lib.resolve(config, jax.device_count(), jax.process_count()))
    ar = config.allreduce
    try:
        mesh = create_mesh(ar.mesh_shape, two_level=ar.algorithm != "flat")
    except ValueError as e:
        raise ConfigError(f"config.allreduce.mesh_shape: {e}") from e
    return assemble(config, mesh, source.info, source)
