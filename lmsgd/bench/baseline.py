"""BASELINE for the step benchmark: a data-parallel ResNet step written the usual JAX way.

This is *not* lmsgd's training step. It is what the Flax ImageNet example and most JAX code
bases do, so that ``python -m lmsgd.bench step`` can put our step next to it:

* plain ``jax.jit`` over a batch sharded with ``NamedSharding`` (parameters replicated); the
  partitioner (GSPMD) inserts the gradient all-reduce, in float32;
* ``flax.linen.BatchNorm(use_running_average=not train, momentum=0.9)`` with moving averages
  in a mutable ``batch_stats`` collection. Under plain ``jit`` its statistics are those of the
  *global* batch (the partitioner all-reduces every layer's moments), unlike the paper's
  per-device statistics;
* ``optax.chain(add_decayed_weights, sgd(momentum=0.9))``.

The architecture mirrors :mod:`lmsgd.models.resnet` (ResNet v1.5, same stems, widths,
initializers, zero-initialised last scale of each branch) with ``nn.BatchNorm`` in place of
``BatchStatsNorm``; the benchmark checks both have the same number of parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lmsgd.models.registry import ARCHITECTURES, DTYPES
from lmsgd.models.resnet import BottleneckBlock, conv_init
from lmsgd.parallel.mesh import batch_sharding, replicated
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


def _baseline_init(model, tx, rng, image_shape):
    def init():
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=tx.init(variables["params"]),
        )

    return init


def create_baseline_state(model, tx, rng, image_shape, mesh: Mesh) -> TrainState:
    init = _baseline_init(model, tx, rng, image_shape)

    return jax.jit(init, out_shardings=replicated(mesh))()


def baseline_optimizer(learning_rate, weight_decay: float = 1e-4) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=0.9)
    )


def make_baseline_train_step(
    model, tx: optax.GradientTransformation, mesh: Mesh, *, donate: bool = True
):
    """Plain-jit data-parallel train step ``(state, batch) -> (state, metrics)``.

    Same signature and metrics as :func:`lmsgd.step.make_train_step`; the batch is global and
    sharded over the mesh, and everything else is left to the partitioner. ``donate``: donate
    the state (as ours does); the Flax ImageNet example does not, so ``donate=False`` is that
    example's memory behaviour (a fresh state every step, the old one freed afterwards).
    """

    def train_step(state: TrainState, batch):
        def loss_fn(params):
            logits, new_vars = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
            )
            return jnp.mean(cross_entropy(logits, batch["label"])), (logits, new_vars)

        (loss, (logits, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {
            "loss": loss,
            "accuracy": accuracy(logits, batch["label"]),
            "grad_norm": optax.tree.norm(grads),
        }
        return state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=new_vars["batch_stats"],
            opt_state=opt_state,
        ), metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def abstract_baseline_state(model, tx, rng, image_shape, mesh: Mesh) -> TrainState:
    """`create_baseline_state` as `jax.ShapeDtypeStruct`s (nothing allocated: the mesh's
    devices may be a deviceless TPU / GPU topology)."""
    init = _baseline_init(model, tx, rng, image_shape)

    rep = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), jax.eval_shape(init)
    )
