"""Which pipelines need TensorFlow, and importing it there with a one-line error without it.

TensorFlow (and TensorFlow Datasets) are optional: the ``data`` extra installs them. Digits
(resize-and-crop, the default) and synthetic data run on numpy and JAX alone; image folders,
imagenet2012 and digits with the inception crop run on tf.data.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from lmsgd.data import config
from lmsgd.errors import MissingDependencyError

INSTALL = "pip install 'lmsgd[data]'"


def tf_pipeline_name(cfg: Mapping[str, Any]) -> str | None:
    """The name of the tf.data pipeline ``cfg`` (a config.data section) selects, or None when
    it runs without TensorFlow."""
    if cfg["name"] == "image_folder":
        return "image-folder"
    if cfg["name"] == "imagenet2012":
        return "imagenet2012 (TFDS)"
    if cfg["name"] == "digits" and config.effective_crop(cfg) != "resize_crop":
        return "digits inception-crop"
    return None


def tensorflow(pipeline: str) -> ModuleType:
    """``tensorflow`` (kept off the GPUs), or MissingDependencyError naming what to install."""
    try:
        from lmsgd.data._tf import tf
    except ImportError as e:
        raise MissingDependencyError(f"the {pipeline} pipeline needs TensorFlow: {INSTALL}") from e
    return tf


def tensorflow_datasets(pipeline: str) -> ModuleType:
    """``tensorflow_datasets``, or MissingDependencyError naming what to install."""
    tensorflow(pipeline)
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise MissingDependencyError(
            f"the {pipeline} pipeline needs TensorFlow Datasets: {INSTALL}"
        ) from e
    return tfds


def check_available(cfg: Mapping[str, Any]) -> None:
    """Fails now, in one line, when the pipeline ``cfg`` selects needs a missing package."""
    name = tf_pipeline_name(cfg)
    if name is None:
        return
    if cfg["name"] == "imagenet2012":
        tensorflow_datasets(name)
    else:
        tensorflow(name)
