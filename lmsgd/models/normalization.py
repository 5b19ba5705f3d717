"""Batch normalization that trains on batch statistics only (Akiba et al. 2017, docs/recipe.md s.3).

Flax's `nn.BatchNorm` couples training to exponential moving averages and, under plain `jit`
with a sharded batch, silently pools over the global batch. `BatchStatsNorm` makes the span of
the statistics explicit and keeps, by default, no moving averages at all:

* training normalizes with the statistics of the examples in this call: those of one device
  (`axis_name=None`, the paper), of a group of `group_size` consecutive devices along
  `axis_name`, or of every device on `axis_name` (`group_size=0`);
* it records the per-channel `mean` and `var` it just used in the `batch_stats` collection, so
  the train step can pool them exactly over all workers and evaluation can use them;
* evaluation normalizes with the recorded (pooled) statistics;
* `mode="moving_average"` additionally keeps classic EMAs (`ema_mean`, `ema_var`), which then
  drive evaluation: the ablation of docs/recipe.md s.3.

Pooling is exact: the union of equally sized sets has mean = mean of means and
var = mean of variances + variance of means (`pool_statistics`).

Training statistics take one pass over the input: sums of `x - c` and `(x - c)**2` around
the mean `c` this layer recorded at the previous step (`moments`): as cheap as the plain
`E[x**2] - E[x]**2`, without its cancellation when the mean is large against the spread.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

AxisName = str | tuple[str, ...] | None

BATCH_STATS = "batch_stats"
MODES = ("batch_stats", "moving_average")


def pool_statistics(
    means: jax.Array, variances: jax.Array, axis: int = 0, mean: Callable | None = None
) -> tuple[jax.Array, jax.Array]:
    """Exact mean and (biased) variance of the union of equally sized example sets:
    mean of means, and mean of (variance + squared deviation of the set's mean).

    The one pooling formula of lmsgd: over stacked sets (micro-batches, precise-BN batches,
    ghost batches) and, with `mean=lambda x: jax.lax.pmean(x, axes)`, over devices.

    Args:
      means, variances: per-set statistics stacked along `axis` (e.g. `[num_sets, C]`), or
        this device's statistics when `mean` averages over devices.
      mean: the averaging; default `jnp.mean` over `axis`.
    Returns:
      `(mean, var)` of the union, with `axis` reduced (unless `mean` is given).
    """
    if mean is not None:
        pooled = mean(means)
        return pooled, mean(variances + jnp.square(means - pooled))
    pooled = jnp.mean(means, axis=axis)
    var = jnp.mean(variances + jnp.square(means - jnp.expand_dims(pooled, axis)), axis=axis)
    return pooled, var


def _axis_size(axis_name: str | tuple[str, ...]) -> int:
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    size = 1
    for name in names:
        size *= jax.lax.axis_size(name)
    return size


def group_mean(x: jax.Array, axis_name: AxisName, group_size: int = 0) -> jax.Array:
    """Mean of `x` over a group of devices along `axis_name` (inside `shard_map`).

    `group_size=0` (or the full axis size) averages over the whole axis with one `pmean`.
    Smaller groups are consecutive devices in the (row-major) order of `axis_name`; they are
    reduced with a ring of `ppermute`s because `shard_map` does not implement
    `axis_index_groups`. Only small per-channel vectors travel, so `group_size - 1` hops
    cost little next to the convolutions.
    """
    if axis_name is None:
        return x
    size = _axis_size(axis_name)
    if group_size in (0, size):
        return jax.lax.pmean(x, axis_name)
    if group_size < 0 or size % group_size:
        raise ValueError(
            f"group_size={group_size} must divide the size {size} of axis {axis_name!r}"
        )
    if group_size == 1:
        return x
    total = x
    shifted = x
    # Rotate by one inside every group; after group_size - 1 hops each device has seen all.
    perm = [
        (g * group_size + i, g * group_size + (i + 1) % group_size)
        for g in range(size // group_size)
        for i in range(group_size)
    ]
    for _ in range(group_size - 1):
        shifted = jax.lax.ppermute(shifted, axis_name, perm)
        total = total + shifted
    return total / group_size


def _shifted_moments(x: jax.Array, c: jax.Array, axes: tuple[int, ...]):
    """`(mean(d), mean(d**2))` over `axes`, `d = x - c` in float32: the one-pass sums, with
    JAX's own derivative (the reference `_shifted_sums` is checked against)."""
    d = x.astype(jnp.float32) - c
    return jnp.mean(d, axis=axes), jnp.mean(jnp.square(d), axis=axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifted_sums(x: jax.Array, c: jax.Array, axes: tuple[int, ...]):
    """`_shifted_moments` of a 16-bit `x` with the same derivative, bit for bit, taken from
    `x` itself.

    The derivative needs `d = x - c` (that of the square). JAX's saves `d` from the forward
    pass: a float32 copy of the layer's input, twice its size, which XLA:GPU may keep live
    until the backward pass (ResNet-50, bf16, 32 per GPU: those of the last stage's nine
    normalizations, 67 MB at the step's peak memory). Here the backward pass recomputes it
    from `x` (saved anyway: the convolution's output) as `2x - 2c` (`== 2 (x - c)` exactly,
    scaling by 2 being exact), an expression XLA does not merge with the forward pass's
    `x - c`, so it fuses into the kernel that reads it. (`jax.checkpoint` recomputes it too,
    but its optimization barrier changes how XLA:GPU fuses the rest of the normalization's
    backward pass: 0.9 GB more memory traffic per step at 128 per GPU.)
    """
    return _shifted_moments(x, c, axes)


def _shifted_sums_fwd(x, c, axes):
    return _shifted_moments(x, c, axes), (x, c)


def _shifted_sums_bwd(axes, residuals, cotangents):
    x, c = residuals
    g_first, g_second = cotangents
    n = math.prod(x.shape[a] for a in axes)
    # As JAX differentiates `_shifted_moments`: the mean's transpose divides by n and
    # broadcasts; the square's is `g * (2 d)`; the two add, then cast back to x's dtype.
    expand = lambda g: jnp.expand_dims(jax.lax.div(g, jnp.float32(n)), axes)
    two_d = x.astype(jnp.float32) * 2.0 - c * 2.0
    dx = expand(g_first) + expand(g_second) * two_d
    return dx.astype(x.dtype), jnp.zeros_like(c)


_shifted_sums.defvjp(_shifted_sums_fwd, _shifted_sums_bwd)


def moments(
    x: jax.Array,
    reduction_axes: Sequence[int],
    axis_name: AxisName = None,
    group_size: int = 0,
    shift: jax.Array | None = None,
    recompute_centred: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of `x` over its reduction axes and a device span.

    With `shift` (`[C]`, or broadcastable to the reduced shape), one pass: the sums of
    `d = x - shift` and `d**2` in float32, then `mean = shift + mean(d)` and
    `var = mean(d**2) - mean(d)**2`. Both sums read `x` once and, as `shift` does not depend
    on `x`, fuse into the convolution that produces it (a shift taken from `x` itself, even a
    slice, would need `x` first: another pass). The cancellation in `var` loses about
    `eps * (1 + ((mean - shift) / std)**2)` of it (float32 `eps` = 6e-8): nothing while the
    shift is within a few standard deviations of the mean, whatever `|mean| / std` is (the
    statistics of the previous step, as `BatchStatsNorm` uses, are), and 6e-6 still at 10 std.
    The plain one-pass `E[x**2] - E[x]**2` (shift 0) loses everything at `|mean| / std` ~ 4e3.

    Without `shift`, two passes: the mean first, then the centred squares (exact for any
    data, one more read of `x`).

    Either way the result is pooled over devices exactly (`pool_statistics`).

    Args:
      x: `[..., C]` (any float dtype; statistics are float32).
      reduction_axes: the axes of `x` reduced (e.g. `(0, 1, 2)` for NHWC).
      axis_name, group_size: the device span (see `group_mean`); None: this call only.
      shift: a per-channel guess of the mean; held constant for differentiation.
      recompute_centred: with a shift and a 16-bit `x`, the backward pass recomputes
        `x - shift` instead of saving it (`_shifted_sums`): the same gradient, bit for bit,
        in less memory on XLA:GPU and more on the TPU compiler (ResNet-50 at 32 per chip:
        +28 MB of temporaries), hence chosen per platform (`ResNet.gpu_derivatives`).
    Returns:
      `(mean, var)`, each float32 with `reduction_axes` removed.
    """
    if shift is None:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=reduction_axes)
        # d var / d mean = -2 mean(x - mean) = 0 exactly, so the centring mean is held
        # constant for differentiation: the same gradient, without a reduction per layer in
        # the backward pass that would only sum rounding residue.
        centre = jax.lax.stop_gradient(jnp.expand_dims(mean, reduction_axes))
        var = jnp.mean(jnp.square(x32 - centre), axis=reduction_axes)
    else:
        # The shift is a constant of the formula (any value gives the same mean and var), so
        # its gradient is zero: stop_gradient says so and keeps it out of the backward pass.
        c = jax.lax.stop_gradient(jnp.asarray(shift, jnp.float32))
        # A float32 x is its own float32 copy: nothing to save, and JAX's derivative adds the
        # three cotangents of `x` in another order than `_shifted_sums` can (1 ulp apart).
        recompute = recompute_centred and jnp.dtype(x.dtype).itemsize < 4
        sums = _shifted_sums if recompute else _shifted_moments
        first, second = sums(x, c, tuple(reduction_axes))
        # Kept by a rematerializing train step (`lmsgd.models.resnet.REMAT_SAVED`): the
        # backward pass reads them, and recomputing them is a pass over `x`.
        first, second = checkpoint_name(first, "norm_stats"), checkpoint_name(second, "norm_stats")
        mean = c + first
        # Rounding can leave a (tiny) negative difference for a constant channel.
        var = jnp.maximum(second - jnp.square(first), 0.0)
    if axis_name is not None and group_size != 1:
        pooled_mean = group_mean(mean, axis_name, group_size)
        var = group_mean(var + jnp.square(mean - pooled_mean), axis_name, group_size)
        mean = pooled_mean
    return checkpoint_name(mean, "norm_stats"), checkpoint_name(var, "norm_stats")


class BatchStatsNorm(nn.Module):
    """Batch normalization over the channel (last) axis with an explicit statistics span.

    Attributes:
      mode: "batch_stats" (paper; no moving averages) or "moving_average" (classic EMA).
      axis_name: mesh axis (or tuple of axes) to pool statistics over in training; None means
        the examples of this call only (per device inside `shard_map`).
      group_size: devices per statistics group along `axis_name`; 0 means the whole axis.
      virtual_batch_size: if > 0, training normalizes each consecutive chunk of this many
        examples of the call with its own statistics ("ghost" batch norm): the paper's 32-image
        span on a device that holds more (e.g. one GPU with 256). Local only: not combined with
        pooling over `axis_name`. The recorded statistics are the exact union of the chunks.
      momentum: EMA decay, used only in "moving_average" mode.
      epsilon: added to the variance.
      dtype: dtype of the output (computation of statistics is always float32).
      param_dtype: dtype of `scale` and `bias`.
      scale_init: e.g. zeros for the last normalization of a residual branch (Goyal et al.).
      recompute_centred: the statistics' backward pass recomputes `x - mean` (see `moments`);
        the same gradient, a platform's memory choice.
    """

    mode: str = "batch_stats"
    axis_name: AxisName = None
    group_size: int = 0
    virtual_batch_size: int = 0
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    recompute_centred: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, fused: Callable | None = None) -> jax.Array:
        """Normalizes `x` `[..., C]`; `train` selects batch vs. recorded statistics.

        `fused(x, mul, add, dtype)`, if given, applies the normalization `x * mul + add`
        (float32 `[C]` each) itself together with what follows it, and its result is
        returned (e.g. `pooling.normalize_relu_max_pool`; not with `virtual_batch_size`).
        """
        if self.mode not in MODES:
            raise ValueError(f"BatchStatsNorm mode={self.mode!r}; allowed: {MODES}")
        features = x.shape[-1]
        reduction_axes = tuple(range(x.ndim - 1))
        zeros = lambda: jnp.zeros((features,), jnp.float32)
        ones = lambda: jnp.ones((features,), jnp.float32)
        # Statistics used by the last training call; pooled over workers by the train step.
        mean_var = self.variable(BATCH_STATS, "mean", zeros)
        var_var = self.variable(BATCH_STATS, "var", ones)
        if self.mode == "moving_average":
            ema_mean = self.variable(BATCH_STATS, "ema_mean", zeros)
            ema_var = self.variable(BATCH_STATS, "ema_var", ones)

        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        dtype = self.dtype or x.dtype

        def fold(mean, var):
            # Normalization and affine folded into one multiply-add in float32.
            mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
            return mul, bias.astype(jnp.float32) - mean * mul

        def normalize(x, mean, var):
            mul, add = fold(mean, var)
            if fused is not None:
                return fused(x, mul, add, jnp.dtype(dtype))
            return (x.astype(jnp.float32) * mul + add).astype(dtype)

        # One-pass statistics around the mean this layer recorded at the previous step: the
        # same on every device and micro-batch (the state is replicated), known before `x` is
        # computed (so both sums fuse into the convolution) and, as the weights move little
        # per step, within a few standard deviations of this step's mean (`moments`).
        shift = mean_var.value
        ghost = train and 0 < self.virtual_batch_size < x.shape[0]
        if ghost:
            v = self.virtual_batch_size
            if x.shape[0] % v:
                raise ValueError(
                    f"virtual_batch_size={v} must divide the batch of {x.shape[0]} examples"
                )
            if self.axis_name is not None and self.group_size != 1:
                raise ValueError("virtual_batch_size works per device only (group_size=1)")
            xg = x.reshape(x.shape[0] // v, v, *x.shape[1:])
            group_mean_, group_var = moments(  # [groups, C]
                xg, tuple(range(1, xg.ndim - 1)), shift=shift,
                recompute_centred=self.recompute_centred,
            )  # fmt: skip
            mean, var = pool_statistics(group_mean_, group_var)
            expand = lambda s: s.reshape(s.shape[0], *([1] * (xg.ndim - 2)), features)
            if fused is None:
                y = normalize(xg, expand(group_mean_), expand(group_var)).reshape(x.shape)
            else:  # per example: each its group's multiply-add, `[B, 1, ..., 1, C]`
                per_example = lambda s: jnp.repeat(s, v, axis=0).reshape(
                    x.shape[0], *([1] * (x.ndim - 2)), features
                )
                mul, add = fold(group_mean_, group_var)
                y = fused(x, per_example(mul), per_example(add), jnp.dtype(dtype))
        if train:
            # `init` usually runs outside `shard_map`, where the mesh axis is unbound.
            axis_name = None if self.is_initializing() else self.axis_name
            if not ghost:
                mean, var = moments(x, reduction_axes, axis_name, self.group_size, shift=shift,
                                    recompute_centred=self.recompute_centred)  # fmt: skip
            if not self.is_initializing():
                mean_var.value = jax.lax.stop_gradient(mean)
                var_var.value = jax.lax.stop_gradient(var)
                if self.mode == "moving_average":
                    m = self.momentum
                    ema_mean.value = m * ema_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
                    ema_var.value = m * ema_var.value + (1 - m) * jax.lax.stop_gradient(var)
        elif self.mode == "moving_average":
            mean, var = ema_mean.value, ema_var.value
        else:
            mean, var = mean_var.value, var_var.value

        return y if ghost else normalize(x, mean, var)
