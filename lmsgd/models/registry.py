"""Named model architectures and a factory from the `config.model` section."""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from lmsgd.models.resnet import BasicBlock, BottleneckBlock, ResNet

# name -> (stage sizes, block, stem, first-stage width)
ARCHITECTURES: dict[str, tuple[tuple[int, ...], Any, str, int]] = {
    "resnet18": ((2, 2, 2, 2), BasicBlock, "imagenet", 64),
    "resnet34": ((3, 4, 6, 3), BasicBlock, "imagenet", 64),
    "resnet50": ((3, 4, 6, 3), BottleneckBlock, "imagenet", 64),
    "resnet101": ((3, 4, 23, 3), BottleneckBlock, "imagenet", 64),
    "resnet152": ((3, 8, 36, 3), BottleneckBlock, "imagenet", 64),
    # CIFAR-style (He et al. 2016, s.4.2): 6n+2 layers, widths 16/32/64.
    "cifar_resnet8": ((1, 1, 1), BasicBlock, "cifar", 16),
    "cifar_resnet20": ((3, 3, 3), BasicBlock, "cifar", 16),
    "cifar_resnet32": ((5, 5, 5), BasicBlock, "cifar", 16),
    "cifar_resnet56": ((9, 9, 9), BasicBlock, "cifar", 16),
    "cifar_resnet110": ((18, 18, 18), BasicBlock, "cifar", 16),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_names() -> list[str]:
    return list(ARCHITECTURES)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    dtype: str = "float32",
    width_multiplier: float = 1.0,
    zero_init_residual: bool = True,
    norm_mode: str = "batch_stats",
    bn_axis_name: str | tuple[str, ...] | None = None,
    bn_group_size: int = 1,
    bn_virtual_batch_size: int = 0,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
) -> ResNet:
    """Builds a named ResNet; see `ResNet` for the meaning of each argument."""
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown model {name!r}; allowed: {', '.join(ARCHITECTURES)}")
    if dtype not in DTYPES:
        raise ValueError(f"Unknown model dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    stages, block, stem, width = ARCHITECTURES[name]
    return ResNet(
        stage_sizes=stages,
        block_cls=block,
        num_classes=num_classes,
        width=width,
        width_multiplier=width_multiplier,
        stem=stem,
        dtype=DTYPES[dtype],
        zero_init_residual=zero_init_residual,
        norm_mode=norm_mode,
        bn_axis_name=bn_axis_name,
        bn_group_size=bn_group_size,
        bn_virtual_batch_size=bn_virtual_batch_size,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )


ResNet18 = functools.partial(create_model, "resnet18")
ResNet34 = functools.partial(create_model, "resnet34")
ResNet50 = functools.partial(create_model, "resnet50")
ResNet101 = functools.partial(create_model, "resnet101")
ResNet152 = functools.partial(create_model, "resnet152")
