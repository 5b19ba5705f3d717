"""The ImageNet stem's normalize + ReLU + 3x3 / stride-2 max pool as one function whose
derivative recomputes the pool's routing from the saved convolution output.

Written by hand because XLA:GPU lowers the max pool's derivative (`select_and_scatter_add`)
to a scatter that the forward pass feeds with index tensors: ResNet-50 at 128 images per GPU
writes two `s32[128, 56, 56, 64]` and a float32 pool output in the forward pass and reads
them back in the backward (1.6 GB of the step's 49.5 GB of memory traffic, counted from
XLA:GPU's program). Here the backward pass recomputes the window maxima's
positions from what it keeps anyway: the convolution output `x` (the normalization's
backward pass reads it) and the pool output `y` (the next block's input).

The gradient routes as JAX's does: within each window the first maximum in row-major order
takes the whole cotangent, as `select_and_scatter_add` with `ge` does; padding never wins
(`-inf`); the ReLU's derivative at 0 is 0. Where windows overlap, the cotangents add in
another order, so 16-bit sums may round differently (tests/test_pooling.py: exact on exactly
representable sums, to rounding otherwise). The TPU compiler has a native
select-and-scatter and compiles this version into far more memory (ResNet-50, v5p, 32 per
chip: +1 GB of temporaries), so the train step uses it on GPUs only
(`ResNet.gpu_derivatives`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

WINDOW, STRIDE, PAD = 3, 2, 1


def _normalize(x: jax.Array, mul: jax.Array, add: jax.Array, dtype) -> jax.Array:
    return (x.astype(jnp.float32) * mul + add).astype(dtype)


def _max_pool(h: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(
        h, jnp.array(-jnp.inf, h.dtype), jax.lax.max, (1, WINDOW, WINDOW, 1),
        (1, STRIDE, STRIDE, 1), ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)),
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize_relu_max_pool(x: jax.Array, mul: jax.Array, add: jax.Array, dtype) -> jax.Array:
    """`max_pool(relu(x * mul + add))`, 3x3 windows, stride 2, padding 1 (ResNet's stem).

    Args:
      x: `[B, H, W, C]`, the stem convolution's output (any float dtype).
      mul, add: float32 `[C]` (or `[B, 1, 1, C]`, per example), the normalization folded
        into one multiply-add.
      dtype: of the normalized activations and the result.
    Returns:
      `[B, ceil(H / 2), ceil(W / 2), C]` in `dtype`.
    """
    return _max_pool(jax.nn.relu(_normalize(x, mul, add, dtype)))


def _forward(x, mul, add, dtype):
    y = normalize_relu_max_pool(x, mul, add, dtype)
    return y, (x, mul, add, y)


def _window_views(hp: jax.Array, out_shape) -> list[jax.Array]:
    """The padded input seen at each of the window's positions, row-major: `[B, Ho, Wo, C]`."""
    b, ho, wo, c = out_shape
    return [
        jax.lax.slice(
            hp,
            (0, i, j, 0),
            (b, i + STRIDE * (ho - 1) + 1, j + STRIDE * (wo - 1) + 1, c),
            (1, STRIDE, STRIDE, 1),
        )  # fmt: skip
        for i in range(WINDOW)
        for j in range(WINDOW)
    ]


def _backward(dtype, residuals, dy):
    x, mul, add, y = residuals
    z = _normalize(x, mul, add, dtype)
    hp = jnp.pad(jax.nn.relu(z), ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)),
                 constant_values=-jnp.inf)  # fmt: skip
    # `y + 0 * dy` is `y`, but known only once `dy` is: XLA then computes the maxima's
    # positions in the backward pass instead of keeping them alive from the forward pass.
    y_late = y + dy * jnp.zeros((), dy.dtype)
    first = jnp.full(y.shape, WINDOW * WINDOW, jnp.int8)  # position of the first maximum
    for k, view in reversed(list(enumerate(_window_views(hp, y.shape)))):
        first = jnp.where(view == y_late, jnp.int8(k), first)
    zero = jnp.zeros((), dy.dtype)
    dh = jnp.zeros(hp.shape, dy.dtype)
    for i in range(WINDOW):
        for j in range(WINDOW):
            part = jnp.where(first == i * WINDOW + j, dy, zero)
            # Scatter back to the window position's input elements: a strided (interior) pad.
            config = [(0, 0, 0)]
            for offset, size, out in ((i, hp.shape[1], y.shape[1]), (j, hp.shape[2], y.shape[2])):
                config.append((offset, size - offset - STRIDE * (out - 1) - 1, STRIDE - 1))
            dh = dh + jax.lax.pad(part, zero, [*config, (0, 0, 0)])
    dh = dh[:, PAD : PAD + x.shape[1], PAD : PAD + x.shape[2], :]
    dz = jnp.where(z > 0, dh, zero).astype(jnp.float32)
    return (
        (dz * mul).astype(x.dtype),
        _sum_to(dz * x.astype(jnp.float32), mul.shape),
        _sum_to(dz, add.shape),
    )


def _sum_to(t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`t` summed over the axes a `shape` operand was broadcast along (`[C]` or
    `[B, 1, 1, C]`: per-example multiply-adds of ghost batch normalization)."""
    lead = t.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1
    )
    return jnp.sum(t, axes).reshape(shape)


normalize_relu_max_pool.defvjp(_forward, _backward)
