"""The gradient all-reduce, written inside `shard_map` so that XLA compiles it into the step.

Every function here runs per device (inside `jax.shard_map`) on *local* gradients, i.e.
gradients taken with respect to parameters cast to device-varying (`jax.lax.pcast`), so JAX
inserts no reduction of its own. They return the global mean, float32 and invariant.

Scaling of 16-bit sums (float16, bfloat16). A float16 sum over N devices has two failure
modes: dividing each gradient by N before the cast pushes small components into float16's
subnormals (below 6.1e-5; at N = 1,024, 17% error of the mean at gradient std 1e-4), and
summing without dividing overflows 65,504 when the gradients agree (N x 64 already does). The
rule: after a collective level that has summed n of the N gradients, the wire carries that
partial sum divided by `wire_divisor(n, e)` = `n ** e` rounded to a power of two (so scaling
is exact), e = `predivide_exponent`. Flat: `x / d(N)` is cast and summed. Two levels on a
(hosts, local) mesh: `x / d(local)` is cast and summed inside the host, the partial sum is
rescaled by `d(local) / d(N)` in float32 and cast back, then summed across hosts. The
remaining `d(N) / N` is applied in float32 after the last collective. The default e = 0.5
spends half of float16's dynamic range on each side: at N = 1,024 the wire carries sum / 32,
so coherent gradients up to ~2,000 do not overflow and i.i.d. gradients of std 1e-4 lose < 1%
(docs/scaling_out.md has the measured table). float32 needs no scaling on the wire: it sums,
then divides by N.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

ALGORITHMS = ("flat", "hierarchical", "two_dimensional")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DEFAULT_PREDIVIDE_EXPONENT = 0.5


def _axis_size(axes: tuple[str, ...]) -> int:
    size = 1
    for a in axes:
        size *= jax.lax.axis_size(a)
    return size


def wire_divisor(n: int, exponent: float) -> float:
    """What a 16-bit partial sum of `n` gradients is divided by on the wire:
    `n ** exponent` rounded to a power of two (half up in log2), so scaling is exact."""
    if n <= 1 or exponent == 0:
        return 1.0
    return 2.0 ** math.floor(exponent * math.log2(n) + 0.5)


def _scale(x: jax.Array, factor: float, dtype) -> jax.Array:
    """`x * factor` computed in float32, then cast to `dtype` (what travels next)."""
    y = x.astype(jnp.float32)
    if factor != 1.0:
        y = y * factor
    return y.astype(dtype)


def _reduce_buffer(
    x: jax.Array,
    algorithm: str,
    data_axes: tuple[str, ...],
    host_axis: str | None,
    local_axis: str | None,
    comm,
    exponent: float,
) -> tuple[jax.Array, float]:
    """Sum over all devices of a 1-D or n-D buffer, by the chosen route: ``(s, scale)``, s
    float32, with the mean equal to ``s * scale``."""
    n = _axis_size(data_axes)
    if comm == jnp.float32:
        # float32 has the range to sum first; the 1/N is left to the caller, where it fuses
        # into what reads the mean. Before the sum it is a pass of its own over every
        # gradient (8 bytes per parameter, one kernel per tensor). For a power-of-two N both
        # orders give the same bits.
        y = x.astype(jnp.float32)
        if algorithm == "flat":
            total = jax.lax.psum(y, data_axes)
        elif algorithm == "hierarchical":
            total = jax.lax.psum(jax.lax.psum(y, local_axis), host_axis)
        else:
            total = _two_dimensional(y, host_axis, local_axis, lambda s: s)
        return total, 1.0 / n

    if algorithm == "flat":
        d = wire_divisor(n, exponent)
        total = jax.lax.psum(_scale(x, 1.0 / d, comm), data_axes)  # = sum / d
        return total.astype(jnp.float32), d / n
    local = jax.lax.axis_size(local_axis)
    d_local = wire_divisor(local, exponent)  # after the first level: sum of `local` / d_local
    d_all = wire_divisor(n, exponent)  # after the second: sum of all n / d_all

    def between(partial):  # sum of `local` / d_local -> / d_all, rescaled in float32
        return _scale(partial, d_local / d_all, comm)

    y = _scale(x, 1.0 / d_local, comm)
    if algorithm == "hierarchical":
        # Inside a host first (fast links), then across hosts.
        total = jax.lax.psum(between(jax.lax.psum(y, local_axis)), host_axis)
    else:
        total = _two_dimensional(y, host_axis, local_axis, between)
    return total.astype(jnp.float32), d_all / n


def _two_dimensional(x: jax.Array, host_axis: str, local_axis: str, between) -> jax.Array:
    """Two-dimensional all-reduce (Mikami et al. 2018; Ying et al. 2018): reduce-scatter
    inside the host, `between` on the shard, all-reduce of 1/local of the buffer across
    hosts, all-gather inside the host. Sum over all devices, in `x`'s dtype."""
    shape = x.shape
    flat = x.reshape(-1)
    local = jax.lax.axis_size(local_axis)
    pad = (-flat.size) % local
    flat = jnp.pad(flat, (0, pad))
    shard = jax.lax.psum_scatter(flat, local_axis, scatter_dimension=0, tiled=True)
    shard = jax.lax.psum(between(shard), host_axis)
    full = jax.lax.all_gather(shard, local_axis, axis=0, tiled=True, to="invarying")
    return full[: flat.size - pad].reshape(shape)


def allreduce_mean(
    grads,
    *,
    data_axes: tuple[str, ...],
    algorithm: str = "flat",
    dtype: str = "float32",
    fuse: bool = False,
    predivide_exponent: float = DEFAULT_PREDIVIDE_EXPONENT,
):
    """Mean of per-device gradients over all devices, sent in `dtype` by `algorithm`.

    Args:
      grads: pytree of this device's gradients (any float dtype).
      data_axes: the mesh axes the batch is split over; `('host', 'local')` for the
        hierarchical and two-dimensional algorithms.
      algorithm: 'flat' (one all-reduce over all axes), 'hierarchical' (inside a host, then
        across hosts) or 'two_dimensional' (reduce-scatter / all-reduce / all-gather).
      dtype: what travels: 'float32', 'bfloat16' or 'float16'. The result is float32.
        float32: the sum is divided by N (exactly the mean of the divided gradients for a
        power-of-two N).
      fuse: send one flat buffer (all gradients concatenated) instead of one collective per
        tensor. Off by default: XLA's all-reduce combiner merges per-tensor collectives
        without the concatenation and split copies (ResNet-50 step on 8 CPU devices: 1.10x
        faster, 17% less memory than fused; docs/performance.md).
      predivide_exponent: e in [0, 1], for 16-bit `dtype` only. After a collective level
        that has summed n gradients (flat: n = N; hierarchical / two_dimensional: n = local
        devices, then n = N) the wire carries that partial sum / `2 ** round(e * log2(n))`
        (~ n ** e): each gradient is divided in float32 before the cast, the partial sum
        between two levels is cast to float32, rescaled and cast back, and the float32 result
        is multiplied by the remaining d(N) / N after the last level. e = 1 is a mean before
        the sum (for flat, the previous behaviour; underflows at large N), e = 0 sums first
        (ChainerMN, Horovod's default; overflows for large coherent gradients); the default
        0.5 is the middle (N = 1,024: no overflow below ~2,000 per component). Like
        Horovod's `gradient_predivide_factor` = d(N), but per level.
    Returns:
      Pytree like `grads`, float32, identical on every device.

    To read the mean more than once (the optimizer's loops and a norm), prefer
    :func:`allreduce_sum` and scale where it is read.
    """
    sums, scale = allreduce_sum(
        grads,
        data_axes=data_axes,
        algorithm=algorithm,
        dtype=dtype,
        fuse=fuse,
        predivide_exponent=predivide_exponent,
    )
    return jax.tree.map(lambda x: x * scale, sums)


def allreduce_sum(
    grads,
    *,
    data_axes: tuple[str, ...],
    algorithm: str = "flat",
    dtype: str = "float32",
    fuse: bool = False,
    predivide_exponent: float = DEFAULT_PREDIVIDE_EXPONENT,
    flatten: bool = False,
) -> tuple[Any, float]:
    """The gradient all-reduce without its last scaling: ``(sums, scale)``, with the mean
    over all devices equal to ``sums * scale`` (``scale`` a Python float: 1/N for float32,
    ``d(N) / N`` for 16-bit dtypes; see :func:`allreduce_mean` for the arguments).

    ``flatten``: each tensor travels as a 1-D vector (a reshape; the same values), so its sum
    comes back in the parameter's row-major layout. XLA:GPU's backward-filter convolutions
    produce kernel gradients in another layout; without the reshape the optimizer's update
    transposes them, which XLA:GPU does into new buffers, copied into the donated state at
    the end of the step (ResNet-50: 375 MB of copies per step, and the updated tensors held
    as temporaries meanwhile, ~94 MB at the peak at 32 per GPU). With it the transposes move
    to the 16-bit gradients before the all-reduce and the update runs in place. Off by
    default: for 16 nodes x 8 H100 XLA:GPU then combines the gradients into 37 all-reduces,
    22 of them synchronous, in place of 12 asynchronous ones (docs/performance.md); and the
    TPU compiler chooses its layouts itself, so it only costs there.

    Why separate: XLA:CPU cannot fuse an elementwise producer into a reduction, so a mean
    read by the optimizer's loops *and* by a gradient norm is written out as a buffer of its
    own (a pass over memory and a kernel per tensor; 52 of CIFAR ResNet-20's 65 gradients).
    Taking the norm of ``sums`` and scaling the scalar leaves the multiplication to fuse into
    the optimizer's loops.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"allreduce.algorithm={algorithm!r}; allowed: {ALGORITHMS}")
    if dtype not in DTYPES:
        raise ValueError(f"allreduce.dtype={dtype!r}; allowed: {tuple(DTYPES)}")
    if not 0.0 <= predivide_exponent <= 1.0:
        raise ValueError(f"allreduce.predivide_exponent={predivide_exponent!r}; allowed: [0, 1]")
    if algorithm != "flat" and len(data_axes) != 2:
        raise ValueError(
            f"allreduce.algorithm={algorithm!r} needs a 2-D ('host', 'local') mesh; the mesh "
            f"axes are {data_axes}. Set allreduce.mesh_shape=(hosts, local_devices)."
        )
    host_axis, local_axis = data_axes if len(data_axes) == 2 else (None, None)
    comm = DTYPES[dtype]

    def reduce(x):
        return _reduce_buffer(
            x, algorithm, data_axes, host_axis, local_axis, comm, predivide_exponent
        )

    if fuse:
        flat, unravel = ravel_pytree(jax.tree.map(lambda g: g.astype(jnp.float32), grads))
        total, scale = reduce(flat)
        return unravel(total), scale
    leaves, treedef = jax.tree.flatten(grads)
    if not leaves:
        return grads, 1.0
    if flatten:
        reduced = [reduce(x.reshape(-1)) for x in leaves]
        reduced = [(total.reshape(x.shape), scale) for (total, scale), x in zip(reduced, leaves)]
    else:
        reduced = [reduce(x) for x in leaves]
    return treedef.unflatten([total for total, _ in reduced]), reduced[0][1]
