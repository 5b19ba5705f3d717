"""Dataset metadata without reading the images, and the epoch arithmetic built on it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the training loop need to know about a dataset.

    Attributes:
      name: config.data.name.
      num_classes: number of labels (ids 0..num_classes-1).
      image_shape: (H, W, 3) of the model input after preprocessing.
      num_train_examples: examples in the training split (all processes together).
      num_eval_examples: examples in the evaluation split (all processes together).
      class_names: optional names in label order (image folders: the sorted folder names).
      mean, std: per-channel statistics of the input pixels (0..255 scale); the pipelines
        send raw pixels (uint8) and the model normalizes with these on the device. None:
        the images arrive normalized.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train_examples: int
    num_eval_examples: int
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
    """Training steps per epoch; training drops the last ``N % global_batch_size`` examples.

    Which examples are dropped changes every epoch (they are the tail of that epoch's
    permutation), so nothing is left out systematically.
    """
    steps = info.num_train_examples // global_batch_size
    if steps < 1:
        raise ValueError(
            f"global_batch_size={global_batch_size} exceeds the {info.num_train_examples} "
            f"training examples of {info.name!r}; use a batch size <= the dataset size"
        )
    return steps


def num_eval_batches(info: DatasetInfo, global_batch_size: int) -> int:
    """Evaluation batches covering the eval split once (the last one is padded, masked)."""
    return math.ceil(info.num_eval_examples / global_batch_size)


def get_dataset_info(cfg: Mapping[str, Any]) -> DatasetInfo:
    """Metadata of the dataset ``cfg`` (a config.data section) selects.

    Cheap: image folders are listed (not decoded), TFDS reads its dataset_info, digits are
    counted from scikit-learn's bundled array, synthetic comes from the config.
    """
    from lmsgd.data import sources  # Deferred: scikit-learn, PIL, TFDS for imagenet2012.

    return sources.make_source(cfg).info
