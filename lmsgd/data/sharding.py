"""Which examples each process reads, and turning per-process batches into global arrays.

Layout (index sources): the global batch of step s is ``order[s*G:(s+1)*G]`` of the epoch's
permutation ``order``; process p of P holds rows ``[p*B, (p+1)*B)`` of it, B = G / P. So the
global batch does not depend on the number of processes, and processes never overlap.
Evaluation uses the same layout on the identity order padded to a multiple of G; padding
(mask 0) only ever sits at the end of a process's stream.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Mapping

import jax
import numpy as np


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), defaulting to JAX's; checks 0 <= index < count."""
    p = jax.process_index() if process_index is None else int(process_index)
    n = jax.process_count() if process_count is None else int(process_count)
    if n < 1 or not 0 <= p < n:
        raise ValueError(
            f"process_index={p}, process_count={n}: need process_count >= 1 and "
            "0 <= process_index < process_count"
        )
    return p, n


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Per-process batch B = G / P (G must be a positive multiple of P)."""
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of the "
            f"process count {process_count} (each process loads global_batch_size / "
            "process_count examples per step)"
        )
    return global_batch_size // process_count


def eval_local_indices(
    num_examples: int, global_batch_size: int, process_index: int, process_count: int
) -> tuple[np.ndarray, int]:
    """Real example indices this process evaluates (in order) and the number of batches.

    Every process runs ``ceil(N / G)`` batches; the indices of all processes together are
    ``range(N)``, each exactly once.
    """
    b = global_batch_size // process_count
    num_batches = math.ceil(num_examples / global_batch_size)
    grid = np.arange(num_batches * global_batch_size).reshape(num_batches, process_count, b)
    mine = grid[:, process_index, :].reshape(-1)
    return mine[mine < num_examples], num_batches


def leading_axis_sharding(sharding: jax.sharding.Sharding, ndim: int) -> jax.sharding.Sharding:
    """The caller's sharding for the batch dim only, fitted to an array of rank ``ndim``."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec)
        lead = spec[0] if spec else None
        return jax.sharding.NamedSharding(
            sharding.mesh, jax.sharding.PartitionSpec(lead, *([None] * (ndim - 1)))
        )
    return sharding


def to_global(
    batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding | None
) -> dict[str, jax.Array | np.ndarray]:
    """Per-process numpy batch [B, ...] -> global jax.Arrays [G, ...] (or numpy if None)."""
    if sharding is None:
        return dict(batch)
    return {
        k: jax.make_array_from_process_local_data(leading_axis_sharding(sharding, v.ndim), v)
        for k, v in batch.items()
    }


def prefetch(iterator: Iterator[dict], size: int) -> Iterator[dict]:
    """Keep ``size`` batches in flight: device transfers are asynchronous, so converting
    batches ahead of use overlaps host->device copies with the training step."""
    if size <= 0:
        yield from iterator
        return
    queue: collections.deque = collections.deque()
    for item in iterator:
        queue.append(item)
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
