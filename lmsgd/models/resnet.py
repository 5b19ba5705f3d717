"""ResNet v1.5 (He et al. 2016; stride in the 3x3 convolution) in Flax Linen, NHWC.

ImageNet models (ResNet-18 ... 152) use the 7x7/2 stem with max-pool; CIFAR-style models
(ResNet-20/32/56/110, He et al. s.4.2) use a 3x3 stem, no max-pool and widths 16/32/64.
Parameters are float32; `dtype` sets the compute dtype (activations, convolutions).
Every normalization is a `BatchStatsNorm`, so the statistics span and the moving-average
ablation are chosen by the caller, not baked into the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from lmsgd.models.normalization import BatchStatsNorm
from lmsgd.models.pooling import normalize_relu_max_pool

# He et al.'s fan-out initialization, as in torchvision and Goyal et al.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def normalize_input(
    x: jax.Array, mean: Sequence[float] | None, std: Sequence[float] | None
) -> jax.Array:
    """``(x - mean) / std`` per channel in float32 (``x`` unchanged when ``mean`` is None).

    The same float32 arithmetic the host pipelines did before sending normalized images;
    on the device it fuses into the first convolution's input.
    """
    if mean is None:
        return x
    if std is None or len(mean) != x.shape[-1] or len(std) != x.shape[-1]:
        raise ValueError(
            f"input_mean={mean}, input_std={std}: need one value each per channel ({x.shape[-1]})"
        )
    mean_c = jnp.asarray(mean, jnp.float32)
    std_c = jnp.asarray(std, jnp.float32)
    return (x.astype(jnp.float32) - mean_c) / std_c


# What a rematerializing train step (`model.remat`) keeps for the backward pass: convolution
# outputs, block outputs and the normalizations' statistics (`REMAT_SAVED`). Everything else,
# chiefly each block's normalize + ReLU, is recomputed from them. Outside `jax.checkpoint`
# the names change nothing.
REMAT_SAVED = ("conv_out", "block_out", "norm_stats")


def conv_out(x: jax.Array) -> jax.Array:
    return checkpoint_name(x, "conv_out")


def block_out(x: jax.Array) -> jax.Array:
    return checkpoint_name(x, "block_out")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR ResNets)."""

    filters: int
    strides: int
    conv: Any
    norm: Any
    last_norm: Any  # the branch's last normalization (zero-initialised scale by default)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = x
        y = conv_out(self.conv(self.filters, (3, 3), (self.strides, self.strides))(x))
        y = nn.relu(self.norm()(y, train=train))
        y = conv_out(self.conv(self.filters, (3, 3))(y))
        y = self.last_norm()(y, train=train)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), (self.strides, self.strides))(residual)
            residual = self.norm()(conv_out(residual), train=train)
        return block_out(nn.relu(residual + y))


class BottleneckBlock(nn.Module):
    """1x1 - 3x3 (strided, v1.5) - 1x1 bottleneck (ResNet-50/101/152)."""

    filters: int
    strides: int
    conv: Any
    norm: Any
    last_norm: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = x
        y = conv_out(self.conv(self.filters, (1, 1))(x))
        y = nn.relu(self.norm()(y, train=train))
        y = conv_out(self.conv(self.filters, (3, 3), (self.strides, self.strides))(y))
        y = nn.relu(self.norm()(y, train=train))
        y = conv_out(self.conv(self.filters * 4, (1, 1))(y))
        y = self.last_norm()(y, train=train)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides))(residual)
            residual = self.norm()(conv_out(residual), train=train)
        return block_out(nn.relu(residual + y))


class ResNet(nn.Module):
    """ResNet v1.5 for NHWC images.

    Attributes:
      stage_sizes: residual blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      block_cls: `BasicBlock` or `BottleneckBlock`.
      num_classes: size of the classification head.
      width: filters of the first stage (64 ImageNet, 16 CIFAR); doubled every stage.
      width_multiplier: scales every width (tiny test models use e.g. 0.25).
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv).
      dtype: compute dtype (float32 or bfloat16); parameters stay `param_dtype`.
      zero_init_residual: zero-initialise the scale of each branch's last normalization.
      input_mean, input_std: per-channel statistics of the input pixels (0..255 scale). When
        set, the model normalizes its input first, ``(x - mean) / std`` in float32 on the
        device, so images can travel from the host as uint8 (a quarter of float32's bytes);
        None takes the input as already normalized.
      norm: normalization factory, e.g. `functools.partial(BatchStatsNorm, mode=...,
        virtual_batch_size=...)` (as Flax's ImageNet example passes `norm`); the model adds
        `dtype`, `param_dtype` and the residual branches' `scale_init`. The train step binds
        its `axis_name` to the mesh.
      gpu_derivatives: two hand-written derivatives that XLA:GPU compiles into less memory
        traffic and the TPU compiler into more: the stem's normalize + ReLU + max pool
        (`pooling.normalize_relu_max_pool`) and the statistics' recomputed `x - mean`
        (`BatchStatsNorm.recompute_centred`). The same gradients (tests). None: the train
        step decides, True on a mesh of GPUs (`lmsgd.step.bind_model_to_mesh`).
    """

    stage_sizes: Sequence[int]
    block_cls: Any
    num_classes: int = 1000
    width: int = 64
    width_multiplier: float = 1.0
    stem: str = "imagenet"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    zero_init_residual: bool = True
    norm: Callable[..., nn.Module] = functools.partial(BatchStatsNorm, group_size=1)
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    gpu_derivatives: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps images `[B, H, W, 3]` to logits `[B, num_classes]` (float32).

        With `input_mean`/`input_std` the images are pixels of any dtype (uint8 from the
        pipelines), normalized here; without, they are taken as normalized already.
        """
        if self.stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem={self.stem!r}; allowed: 'imagenet', 'cifar'")
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=conv_init,
            padding="SAME",
        )
        norm = functools.partial(self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        if self.gpu_derivatives:
            norm = functools.partial(norm, recompute_centred=True)
        last_scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        last_norm = functools.partial(norm, scale_init=last_scale_init)

        width = max(1, round(self.width * self.width_multiplier))
        x = normalize_input(x, self.input_mean, self.input_std).astype(self.dtype)
        if self.stem == "imagenet":
            x = conv(width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
            if self.gpu_derivatives and train:
                stem = norm(name="bn_init")(conv_out(x), train=train, fused=normalize_relu_max_pool)
                x = block_out(stem)
            else:
                x = nn.relu(norm(name="bn_init")(conv_out(x), train=train))
                x = block_out(nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))
        else:
            x = conv(width, (3, 3), name="conv_init")(x)
            x = block_out(nn.relu(norm(name="bn_init")(conv_out(x), train=train)))
        for i, block_count in enumerate(self.stage_sizes):
            for j in range(block_count):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(
                    filters=width * 2**i, strides=strides, conv=conv, norm=norm, last_norm=last_norm
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(0.01),
            name="head",
        )(x)
        return x.astype(jnp.float32)
