"""BASELINE for the step benchmark: the Flax ImageNet example's data-parallel step, rewritten.

This is *not* lmsgd's training step. It reproduces what google/flax's ``examples/imagenet``
does per step, so that ``python -m lmsgd.bench step`` puts our step next to that peer:

* one program per device (the example's ``pmap``; here ``shard_map`` over every mesh axis,
  which compiles to the same per-device program and also for deviceless targets); parameters
  and optimizer state replicated, the batch split over the devices;
* ``flax.linen.BatchNorm(use_running_average=not train, momentum=0.9)`` with no
  ``axis_name``: statistics of the device's own examples (one fused pass, Flax's
  ``E[x**2] - E[x]**2``), moving averages per device in a ``batch_stats`` collection that
  carries a leading device axis (as ``pmap`` keeps per-device state; the example averages
  them over devices only before evaluating or saving, not per step);
* the gradient of the float32 parameters all-reduced in float32 (``jax.lax.pmean``), loss
  and accuracy averaged likewise;
* ``optax.chain(add_decayed_weights, sgd(momentum=0.9))``.

The architecture mirrors :mod:`lmsgd.models.resnet` (ResNet v1.5, same stems, widths,
initializers, zero-initialised last scale of each branch) with ``nn.BatchNorm`` in place of
``BatchStatsNorm``; the benchmark checks both have the same number of parameters. Images
are cast to the compute dtype by the first convolution, so the step takes whatever image
dtype ours is given.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lmsgd.models.registry import ARCHITECTURES, DTYPES
from lmsgd.models.resnet import BottleneckBlock, conv_init
from lmsgd.parallel.mesh import data_axes, replicated
from lmsgd.step import TrainState, accuracy, cross_entropy


class _Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1-3x3-1x1, stride in the 3x3) residual block."""

    filters: int
    strides: int
    bottleneck: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        s = (self.strides, self.strides)
        out = self.filters * (4 if self.bottleneck else 1)
        if self.bottleneck:
            y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
            y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), s)(y)))
            y = self.conv(out, (1, 1))(y)
        else:
            y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), s)(x)))
            y = self.conv(out, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if x.shape != y.shape:
            x = self.norm()(self.conv(out, (1, 1), s)(x))
        return nn.relu(x + y)


class BaselineResNet(nn.Module):
    """ResNet v1.5 with flax ``nn.BatchNorm`` (moving averages), Flax-ImageNet-example style."""

    stage_sizes: Sequence[int]
    bottleneck: bool
    num_classes: int
    width: int = 64
    stem: str = "imagenet"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init, padding="SAME"
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
            x = nn.relu(norm(name="bn_init")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = nn.relu(norm(name="bn_init")(conv(self.width, (3, 3), name="conv_init")(x)))
        for i, count in enumerate(self.stage_sizes):
            for j in range(count):
                x = _Block(
                    self.width * 2**i, 2 if i > 0 and j == 0 else 1, self.bottleneck, conv, norm
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01),
            name="head",
        )(x)  # fmt: skip
        return x.astype(jnp.float32)


def create_baseline_model(
    name: str, *, num_classes: int, dtype: str = "float32", width_multiplier: float = 1.0
) -> BaselineResNet:
    stages, block, stem, width = ARCHITECTURES[name]
    return BaselineResNet(
        stage_sizes=stages,
        bottleneck=block is BottleneckBlock,
        num_classes=num_classes,
        width=max(1, round(width * width_multiplier)),
        stem=stem,
        dtype=DTYPES[dtype],
    )


def _device_axes(mesh: Mesh) -> tuple[str, ...]:
    return data_axes(mesh)


def _num_devices(mesh: Mesh) -> int:
    return int(mesh.devices.size)


def _per_device_stats_sharding(mesh: Mesh) -> NamedSharding:
    """`batch_stats` leaves `[devices, ...]`: one row per device, as `pmap` keeps them."""
    return NamedSharding(mesh, P(_device_axes(mesh)))


def _baseline_init(model, tx, rng, image_shape, num_devices: int):
    def init():
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        per_device = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (num_devices, *x.shape)), variables["batch_stats"]
        )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=per_device,
            opt_state=tx.init(variables["params"]),
        )

    return init


def _state_shardings(mesh: Mesh, state: TrainState) -> TrainState:
    rep = replicated(mesh)
    stats = _per_device_stats_sharding(mesh)
    return state.replace(
        step=rep,
        params=jax.tree.map(lambda _: rep, state.params),
        batch_stats=jax.tree.map(lambda _: stats, state.batch_stats),
        opt_state=jax.tree.map(lambda _: rep, state.opt_state),
    )


def create_baseline_state(model, tx, rng, image_shape, mesh: Mesh) -> TrainState:
    """The initial state on `mesh`: replicated, but `batch_stats` one row per device."""
    init = _baseline_init(model, tx, rng, image_shape, _num_devices(mesh))
    return jax.jit(init, out_shardings=_state_shardings(mesh, jax.eval_shape(init)))()


def baseline_optimizer(learning_rate, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=0.9)
    )


def make_baseline_train_step(
    model, tx: optax.GradientTransformation, mesh: Mesh, *, donate: bool = True
):
    """The Flax example's train step, per device: ``(state, batch) -> (state, metrics)``.

    Same signature and metrics as :func:`lmsgd.step.make_train_step`: the batch is global,
    sharded over the mesh (leading axis); `state` as `create_baseline_state` makes it.
    ``donate``: donate the state (as ours does); the Flax ImageNet example does not, so
    ``donate=False`` is that example's memory behaviour (a fresh state every step, the old
    one freed afterwards).
    """
    axes = _device_axes(mesh)

    def per_device(state: TrainState, images, labels):
        # Each device differentiates its own copy of the parameters, as under pmap: the
        # float32 gradients are then averaged explicitly. (Differentiating the replicated
        # parameters directly would let JAX insert the sum where they first meet device data,
        # after the cast to the compute dtype: a bfloat16 all-reduce, not the example's.)
        params = jax.lax.pcast(state.params, axes, to="varying")
        stats = jax.tree.map(lambda x: x[0], state.batch_stats)

        def loss_fn(p):
            logits, new_vars = model.apply(
                {"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(cross_entropy(logits, labels)), (logits, new_vars["batch_stats"])

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grads = jax.lax.pmean(grads, axes)  # float32, like the example's lax.pmean
        loss, acc = jax.lax.pmean((loss, accuracy(logits, labels)), axes)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, "accuracy": acc}  # the example's metrics: no norms
        return state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=jax.tree.map(lambda x: x[None], new_stats),
            opt_state=opt_state,
        ), metrics

    def train_step(state: TrainState, batch):
        specs = jax.tree.map(lambda s: s.spec, _state_shardings(mesh, state))
        step = jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(specs, P(axes), P(axes)),
            out_specs=(specs, P()),
        )
        return step(state, batch["image"], batch["label"])

    # The shardings come from the arguments (`create_baseline_state`, `batch_sharding`) and
    # the shard_map's specs; the state's tree (optimizer state included) need not be known.
    return jax.jit(train_step, donate_argnums=(0,) if donate else ())


def abstract_baseline_state(model, tx, rng, image_shape, mesh: Mesh) -> TrainState:
    """`create_baseline_state` as `jax.ShapeDtypeStruct`s (nothing allocated: the mesh's
    devices may be a deviceless TPU / GPU topology)."""
    init = _baseline_init(model, tx, rng, image_shape, _num_devices(mesh))
    shape = jax.eval_shape(init)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shape,
        _state_shardings(mesh, shape),
    )
