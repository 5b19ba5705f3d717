"""Parameter counts and forward FLOPs of a model, the latter from XLA's cost analysis."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    num_params: int
    forward_flops_per_image: float  # FLOPs (2 x multiply-adds), inference mode, batch of 1


def abstract_variables(model: nn.Module, image_size: int, batch_size: int = 1):
    """Shapes of `model`'s variables, without allocating them (`jax.eval_shape`)."""
    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def count_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def forward_flops(model: nn.Module, variables, image_size: int, batch_size: int = 1) -> float:
    """FLOPs of one inference forward pass as XLA counts them after compilation."""
    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax returned one dict per computation
        analysis = analysis[0]
    return float(analysis["flops"])


def summarize(model: nn.Module, image_size: int) -> ModelSummary:
    variables = abstract_variables(model, image_size)
    return ModelSummary(
        num_params=count_params(variables["params"]),
        forward_flops_per_image=forward_flops(model, variables, image_size),
    )
