"""Build the real train step for a target mesh and compile it without owning the devices.

`build_step` is the one place that turns a config into (model, optimizer, schedules, step
function) for a mesh; everything else in `lmsgd.plan` works from its result. When the driver
grows a setup object, this function is what to swap.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lmsgd.models import count_params
from lmsgd.parallel.hlo_text import strip_index_comments
from lmsgd.parallel.mesh import FLAT_AXES, HIERARCHICAL_AXES, batch_sharding, replicated


@dataclasses.dataclass
class StepSetup:
    """A config made concrete for one mesh (sizes are global unless named per device).

    Attributes:
      mesh: the data-parallel mesh over the target's devices.
      model, tx, schedules: as `lmsgd.run.build` makes them.
      step: the jitted train step `(state, batch) -> (state, metrics)` (lmsgd.step).
      state: the train state as `jax.ShapeDtypeStruct`s, replicated over the mesh.
      batch: one global batch as `jax.ShapeDtypeStruct`s, sharded over the data axes.
      num_params: trainable parameters (elements).
      per_device_batch: images per device per optimizer step (all micro-steps together).
      accumulation_steps: micro-steps per optimizer step (`config.accumulation_steps`, 1 if
        the config has none).
      bn_span: images whose statistics one normalization layer pools in training.
      steps_per_epoch, total_steps: optimizer steps.
      image_shape, num_classes, num_train_examples: from the dataset's metadata.
    """

    mesh: Mesh
    model: Any
    tx: Any
    schedules: Any
    step: Any
    state: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    num_params: int
    per_device_batch: int
    accumulation_steps: int
    cost_factor: int  # XLA counts a rolled loop body once: K for a rolled micro-batch loop
    bn_span: int
    steps_per_epoch: int
    total_steps: int
    image_shape: tuple[int, int, int]
    num_classes: int
    num_train_examples: int


def dataset_info(data_cfg: Mapping[str, Any]):
    """The dataset's metadata without reading (or having) the data.

    ImageNet's sizes are constants (no TFDS builder is opened, so no dataset is needed);
    digits and synthetic are cheap; image folders are listed.
    """
    from lmsgd.data import config as data_config
    from lmsgd.data.info import DatasetInfo

    cfg = data_config.resolve(data_cfg)
    if cfg.name == "imagenet2012":
        size = cfg.image_size
        return DatasetInfo(
            "imagenet2012",
            1000,
            (size, size, 3),
            data_config.IMAGENET_NUM_TRAIN,
            data_config.IMAGENET_NUM_EVAL,
            mean=data_config.IMAGENET_MEAN,
            std=data_config.IMAGENET_STD,
        )
    from lmsgd.data.info import get_dataset_info

    return get_dataset_info(cfg)


def make_mesh(devices: Sequence[Any], algorithm: str, devices_per_node: int) -> Mesh:
    """The mesh `lmsgd.parallel.create_mesh` would build, over any devices (local or not).

    `flat` gives the 1-D ('data',) mesh; the two-level algorithms ('host', 'local') with
    `devices_per_node` devices on the 'local' axis (one node's devices, (process, id) order).
    """
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    n = len(devices)
    if algorithm == "flat":
        shape, names = (n,), FLAT_AXES
    else:
        local = min(devices_per_node, n)
        shape, names = (n // local, local), HIERARCHICAL_AXES
    return Mesh(
        np.asarray(devices, dtype=object).reshape(shape),
        names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
    )


def build_step(config: Any, mesh: Mesh, *, norms: bool = True) -> StepSetup:
    """config -> (model, optimizer, schedules, train step) for `mesh`, all abstract.

    Uses `lmsgd.run.assemble` (the driver's set-up) on the target's mesh, with the state
    from `jax.eval_shape` (nothing is allocated, so the mesh's devices may be remote).
    """
    from lmsgd.run import assemble
    from lmsgd.step import init_train_state

    info = dataset_info(config.data)
    run = assemble(config, mesh, info)  # the driver's own set-up, on the target's mesh
    model, tx, schedules, plan = run.model, run.tx, run.schedules, run.plan
    global_batch = config.global_batch_size

    init = functools.partial(
        init_train_state, model, tx, jax.random.key(config.seed), info.image_shape
    )

    rep = replicated(mesh)
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), jax.eval_shape(init)
    )
    data = batch_sharding(mesh)
    image_dtype = jnp.dtype(config.data.dtype)  # pixels as the pipelines send them
    batch = {
        "image": jax.ShapeDtypeStruct(
            (global_batch, *info.image_shape), image_dtype, sharding=data
        ),
        "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=data),
    }
    step = run.train_step(norms=norms)
    return StepSetup(
        mesh=mesh,
        model=model,
        tx=tx,
        schedules=schedules,
        step=step,
        state=state,
        batch=batch,
        num_params=count_params(state.params),
        per_device_batch=plan.per_device_batch,
        accumulation_steps=plan.accumulation_steps,
        cost_factor=run.cost_analysis_factor,
        bn_span=plan.bn_span_examples,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
        image_shape=tuple(info.image_shape),
        num_classes=config.model.num_classes or info.num_classes,
        num_train_examples=info.num_train_examples,
    )


@dataclasses.dataclass
class CompiledStep:
    """What the compiler says about one device's program (all figures per device per step).

    Attributes:
      argument_bytes, output_bytes, temp_bytes, alias_bytes, code_bytes: XLA's
        `memory_analysis()`; outputs aliased to donated arguments (`alias_bytes`) are counted
        once in `peak_bytes`.
      flops, bytes_accessed: XLA's `cost_analysis()` of the per-device program. XLA counts a
        loop body once: with gradient accumulation (K micro-batches in a `lax.scan`) both are
        multiplied by K when the loop stays rolled (an upper bound: the update after the loop
        is counted K times; it is a few percent of a ResNet-50 step).
      hlo: the compiled program's text (tuple `/*index=N*/` comments removed).
      compile_s: wall time of lower + compile.
      flops_source: where `flops` and `bytes_accessed` come from: "xla cost analysis", or
        (XLA:GPU has none) "hlo count": convolution and dot FLOPs counted from the compiled
        program's shapes, bytes as its kernels' operands + results (`lmsgd.plan.schedule`).
    """

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float
    hlo: str
    compile_s: float
    flops_source: str = "xla cost analysis"

    @property
    def peak_bytes(self) -> int:
        """Bytes resident at the step's peak (arguments + outputs - aliased + temporaries)."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def compile_step(
    setup: StepSetup, compiler_options: Mapping[str, Any] | None = None
) -> CompiledStep:
    """Lowers and compiles `setup.step` for the mesh's platform (TPU via libtpu, GPU via
    XLA:GPU's deviceless compiler, or CPU); `compiler_options` are XLA flags for this compile."""
    t0 = time.perf_counter()
    lowered = setup.step.lower(setup.state, setup.batch)
    compiled = lowered.compile(compiler_options=dict(compiler_options or {}) or None)
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, list) else (cost or {})
    # Long tuple shapes carry /*index=N*/ comments; the stored text is without them.
    hlo = strip_index_comments(compiled.as_text())
    source = "xla cost analysis"
    if "flops" not in cost:  # XLA:GPU: no cost analysis; count from the program itself
        from lmsgd.plan.schedule import parse_schedule

        sched = parse_schedule(hlo)
        cost = {"flops": sched.total_flops, "bytes accessed": sched.bytes_accessed}
        source = "hlo count"
    return CompiledStep(
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        code_bytes=int(getattr(mem, "generated_code_size_in_bytes", 0) or 0),
        flops=float(cost.get("flops", 0.0)) * setup.cost_factor,
        bytes_accessed=float(cost.get("bytes accessed", 0.0)) * setup.cost_factor,
        hlo=hlo,
        compile_s=compile_s,
        flops_source=source,
    )
