"""Input pipelines: digits (default, built in), image folders, ImageNet via TFDS, synthetic.

One ``config.data`` section (:func:`default_data_config`) selects and parameterizes them.
The training driver calls :func:`get_dataset_info`, :func:`train_batches`,
:func:`eval_batches` and :func:`masked_topk_correct`.

TensorFlow is imported only by the tf.data pipelines (image folders, imagenet2012, digits with
the inception crop), when one is built; digits (the default) and synthetic data never import
it. ``import lmsgd.data`` stays light: the pipelines load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmsgd.data.config import DATA_CONFIG_DOCS, default_data_config, validate_data_config
from lmsgd.data.info import DatasetInfo, get_dataset_info, num_eval_batches, steps_per_epoch
from lmsgd.data.metrics import masked_topk_correct

# Names whose modules import JAX: resolved on first use (PEP 562).
_LAZY = {
    "train_batches": "lmsgd.data.pipeline",
    "eval_batches": "lmsgd.data.pipeline",
    "BatchIterator": "lmsgd.data.pipeline",
}

__all__ = [
    "DATA_CONFIG_DOCS",
    "BatchIterator",
    "DatasetInfo",
    "default_data_config",
    "eval_batches",
    "get_dataset_info",
    "masked_topk_correct",
    "num_eval_batches",
    "steps_per_epoch",
    "train_batches",
    "validate_data_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmsgd.data' has no attribute {name!r}")
