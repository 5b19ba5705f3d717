"""Synthetic data generated on the devices (no host I/O), for throughput measurements.

One batch is generated once with the caller's sharding (``jax.jit(..., out_shardings=...)``)
and handed out at every step, so the input pipeline costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from lmsgd.data.info import DatasetInfo


def _dtype(name: str):
    return jnp.dtype(name)


def make_batch(
    info: DatasetInfo,
    batch_size: int,
    seed: int,
    dtype: str,
    sharding: jax.sharding.Sharding | None,
) -> dict:
    """{'image': [batch, H, W, 3] pixels, 'label': [batch] int32} on device (or numpy).

    Pixels are uniform integers 0..255 in ``dtype`` (uint8 as the pipelines send them; the
    model normalizes them with :data:`lmsgd.data.config.SYNTHETIC_MEAN`/``_STD``).
    """
    shape = (batch_size, *info.image_shape)

    def gen(key):
        k1, k2 = jax.random.split(key)
        return {
            "image": jax.random.randint(k1, shape, 0, 256, jnp.int32).astype(_dtype(dtype)),
            "label": jax.random.randint(k2, (batch_size,), 0, info.num_classes, jnp.int32),
        }

    key = jax.random.key(seed)
    if sharding is None:
        return jax.tree.map(np.asarray, jax.jit(gen)(key))
    from lmsgd.data.sharding import leading_axis_sharding

    out = {
        "image": leading_axis_sharding(sharding, 4),
        "label": leading_axis_sharding(sharding, 1),
    }
    return jax.jit(gen, out_shardings=out)(key)


def train_stream(batch: dict) -> Iterator[dict]:
    """The same batch forever."""
    while True:
        yield batch


def eval_stream(
    info: DatasetInfo,
    global_batch_size: int,
    local_batch: int,
    batch: dict,
    sharding: jax.sharding.Sharding | None,
    process_index: int,
) -> Iterator[dict]:
    """ceil(N / G) batches; mask marks the first N examples (global order) as real."""
    num_batches = math.ceil(info.num_eval_examples / global_batch_size)

    if sharding is not None:
        # One compiled program; the mask is computed on the devices that hold it.
        def mask_fn(b):
            rows = b * global_batch_size + jnp.arange(global_batch_size)
            return (rows < info.num_eval_examples).astype(jnp.float32)

        global_mask = jax.jit(mask_fn, out_shardings=batch["label"].sharding)
    rows_local = process_index * local_batch + np.arange(local_batch)
    for b in range(num_batches):
        if sharding is None:
            mask = (b * global_batch_size + rows_local < info.num_eval_examples).astype(np.float32)
        else:
            mask = global_mask(b)
        yield {**batch, "mask": mask}
