"""Named model architectures and a factory from the `config.model` section."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lmsgd.models.normalization import BatchStatsNorm
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

# The paper's normalization: batch statistics of each device's examples, no moving averages.
PER_DEVICE_NORM = functools.partial(BatchStatsNorm, group_size=1)


def model_names() -> list[str]:
    return list(ARCHITECTURES)


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    dtype: str = "float32",
    width_multiplier: float = 1.0,
    zero_init_residual: bool = True,
    norm: Callable[..., nn.Module] = PER_DEVICE_NORM,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> ResNet:
    """Builds a named ResNet; `norm` is the normalization factory, `input_mean`/`input_std`
    the input pixels' statistics it normalizes with (see `ResNet`)."""
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
        norm=norm,
        input_mean=None if input_mean is None else tuple(map(float, input_mean)),
        input_std=None if input_std is None else tuple(map(float, input_std)),
    )


def norm_from_config(model_cfg: Mapping[str, Any]) -> Callable[..., nn.Module]:
    """The `BatchStatsNorm` factory a `config.model` section describes."""
    return functools.partial(
        BatchStatsNorm,
        mode=model_cfg["norm_mode"],
        group_size=model_cfg["bn_group_size"],
        virtual_batch_size=model_cfg["bn_virtual_batch_size"],
        momentum=model_cfg["bn_momentum"],
        epsilon=model_cfg["bn_epsilon"],
    )


def model_from_config(
    model_cfg: Mapping[str, Any],
    num_classes: int,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> ResNet:
    """The model a `config.model` section describes; `num_classes` from the dataset unless
    the section sets it; `input_mean`/`input_std` (the dataset's pixel statistics) make it
    normalize its input pixels on the device."""
    return create_model(
        model_cfg["name"],
        num_classes=model_cfg["num_classes"] or num_classes,
        dtype=model_cfg["dtype"],
        width_multiplier=model_cfg["width_multiplier"],
        zero_init_residual=model_cfg["zero_init_residual"],
        norm=norm_from_config(model_cfg),
        input_mean=input_mean,
        input_std=input_std,
    )
