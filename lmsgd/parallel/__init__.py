"""Data parallelism: the device mesh, the gradient all-reduce and collective inspection."""

from lmsgd.parallel.allreduce import ALGORITHMS, DTYPES, allreduce_mean, allreduce_sum
from lmsgd.parallel.collectives import Collective, describe_collectives, summarize_collectives
from lmsgd.parallel.mesh import (
    batch_sharding,
    create_mesh,
    data_axes,
    per_device_batch_size,
    replicated,
)

__all__ = [
    "ALGORITHMS",
    "DTYPES",
    "Collective",
    "allreduce_mean",
    "allreduce_sum",
    "batch_sharding",
    "create_mesh",
    "data_axes",
    "describe_collectives",
    "per_device_batch_size",
    "replicated",
    "summarize_collectives",
]
