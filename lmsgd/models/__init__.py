"""Models: the ResNet v1.5 family and batch-statistics-only normalization."""

from lmsgd.models.normalization import (
    BATCH_STATS,
    BatchStatsNorm,
    group_mean,
    moments,
    pool_statistics,
)
from lmsgd.models.registry import (
    ARCHITECTURES,
    create_model,
    model_from_config,
    model_names,
    norm_from_config,
)
from lmsgd.models.resnet import BasicBlock, BottleneckBlock, ResNet
from lmsgd.models.summary import ModelSummary, count_params, summarize

__all__ = [
    "ARCHITECTURES",
    "BATCH_STATS",
    "BasicBlock",
    "BatchStatsNorm",
    "BottleneckBlock",
    "ModelSummary",
    "ResNet",
    "count_params",
    "create_model",
    "group_mean",
    "model_from_config",
    "model_names",
    "norm_from_config",
    "moments",
    "pool_statistics",
    "summarize",
]
