"""Imports TensorFlow for the input pipeline only, and keeps it off any GPU.

Importing this module (and so TensorFlow) is deferred to the first data function call, so
``import lmsgd`` and ``import lmsgd.data`` stay light.
"""

import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# The input pipeline runs on the host CPU; TF must not reserve accelerator memory JAX needs.
# RuntimeError: devices were already initialized by someone else; nothing to do then.
with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")

__all__ = ["tf"]
