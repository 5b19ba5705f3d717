"""Training and evaluation batches: host pipelines, global jax.Arrays out.

Three pipelines share this contract: synthetic data (generated on the devices), digits on
numpy (:mod:`lmsgd.data.memory_pipeline`, resize-and-crop; no TensorFlow) and tf.data
(:mod:`lmsgd.data.tf_pipeline`: image folders, imagenet2012, digits with the inception crop;
TensorFlow is imported only for these, and its absence is one line naming the package).

Training (:func:`train_batches`)
  * An epoch is a permutation drawn from (seed, epoch) — a full
    ``tf.random.experimental.stateless_shuffle`` for image folders (numpy's for digits),
    TFDS file shuffling + a seeded shuffle buffer for imagenet2012. Each epoch yields
    ``steps_per_epoch = N // global_batch_size`` batches; the remaining ``N % G`` examples
    (different ones each epoch) are dropped, so every step has a full global batch.
  * Crops and flips use stateless random ops keyed by (seed, epoch, example index), so a
    resumed run (``start_epoch``, ``start_step``) sees exactly the batches of an
    uninterrupted one. Resuming skips indices (records for TFDS) before anything is decoded.
  * The epochs are chained inside one tf.data graph for index sources, so prefetching runs
    across epoch boundaries; TFDS epochs are chained in Python (one pipeline refill per epoch).
Evaluation (:func:`eval_batches`)
  * Every example exactly once: the last batch is padded and ``mask`` is 0 on padding;
    every process runs the same number of batches.
Corrupt files
  * Decode errors are dropped by ``ignore_errors`` and detected on the host as a gap in the
    (epoch, position) sequence each example carries. ``skip_corrupt=False`` (default) then
    raises ValueError with the file's path; ``skip_corrupt=True`` logs it and counts it in
    ``iterator.num_skipped``. A skipped file shifts the rest of its epoch by one example (the
    next batch is filled from the following ones), which makes resuming inside that epoch
    inexact — fixing the file restores exactness.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lmsgd.data import config, memory_pipeline, requires, sources, synthetic
from lmsgd.data import sharding as shard_lib
from lmsgd.data.info import DatasetInfo, steps_per_epoch
from lmsgd.data.iterators import BatchIterator, checked

__all__ = ["BatchIterator", "eval_batches", "train_batches"]


def _to_global(stream: Iterator[dict], sharding, size: int) -> Iterator[dict]:
    """Per-process numpy batches -> global arrays, ``size`` batches in flight."""
    return shard_lib.prefetch((shard_lib.to_global(b, sharding) for b in stream), size)


def train_batches(
    cfg: Mapping[str, Any],
    *,
    global_batch_size: int,
    seed: int,
    sharding: jax.sharding.Sharding | None,
    start_epoch: int = 0,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    source: sources.Source | None = None,
) -> BatchIterator:
    """Training batches forever, epoch after epoch, starting at (start_epoch, start_step).

    Args:
      cfg: the config.data section.
      global_batch_size: G, examples per step over all processes; each process loads
        G / process_count of them.
      seed: shuffling and augmentation seed (same on every process).
      sharding: where the batch's leading dim goes, e.g. NamedSharding(mesh, P('data'));
        None yields this process's numpy batch.
      start_epoch, start_step: position of the first batch (0 <= start_step <
        steps_per_epoch); yields exactly the batches an uninterrupted run yields from there.
      process_index, process_count: default to jax.process_index()/process_count();
        inject them (with sharding=None) to test slicing in one process.
      source: the dataset's :class:`Source` when the caller built it already (a run builds
        it once); None builds it from ``cfg``.

    Returns:
      A :class:`BatchIterator` of {'image': [G, S, S, 3] pixels 0..255 in
      ``cfg.dtype`` (uint8 by default; the model normalizes them on the device),
      'label': [G] int32} (global arrays; [G / process_count, ...] numpy when sharding is
      None). With ``cfg.host_size`` the host makes [.., host_size, host_size, 3] images and
      the devices resize them to S (:func:`device_resize`); numpy batches (sharding None)
      are the host's, at host_size. ``.epoch``/``.step`` give the next batch's position,
      ``.num_skipped`` the corrupt files skipped.
    """
    cfg = config.resolve(cfg)
    requires.check_available(cfg)
    p, n_proc = shard_lib.resolve_process(process_index, process_count)
    b = shard_lib.local_batch_size(global_batch_size, n_proc)
    src = source or sources.make_source(cfg)
    steps = steps_per_epoch(src.info, global_batch_size)
    if start_epoch < 0 or not 0 <= start_step < steps:
        raise ValueError(
            f"start_epoch={start_epoch}, start_step={start_step}: need start_epoch >= 0 and "
            f"0 <= start_step < steps_per_epoch={steps}"
        )
    common = dict(start_epoch=start_epoch, start_step=start_step, steps_per_epoch=steps)
    if cfg.name == "synthetic":
        batch = synthetic.make_batch(src.info, global_batch_size, seed, cfg.dtype, sharding)
        if sharding is None:  # Per-process numpy batch, as for the other sources.
            batch = {k: v[p * b : (p + 1) * b] for k, v in batch.items()}
        return BatchIterator(synthetic.train_stream(batch), **common)
    kw = dict(
        seed=seed, start_epoch=start_epoch, start_step=start_step, steps=steps, p=p, n_proc=n_proc
    )
    if requires.tf_pipeline_name(cfg) is None:  # digits: numpy
        stream = memory_pipeline.train_stream(cfg, src, b=b, **kw)
        return BatchIterator(_to_global(stream, sharding, cfg.prefetch), **common)
    from lmsgd.data import tf_pipeline

    if src.train is not None:
        stream, tracker = tf_pipeline.indexed_train(cfg, src, src.train, b=b, **kw)
    else:
        stream, tracker = tf_pipeline.tfds_train(cfg, src, b=b, **kw)
    batches = checked(stream, tracker, sharding, cfg.prefetch)
    if cfg.host_size and sharding is not None:
        batches = _resized_on_device(batches, cfg.image_size)
    return BatchIterator(batches, tracker=tracker, **common)


@functools.partial(jax.jit, static_argnums=1)
def device_resize(images: jax.Array, size: int) -> jax.Array:
    """[B, h, w, C] pixels -> [B, size, size, C] in the same dtype: bilinear with half-pixel
    centres (as the host's ``tf.image.resize``), uint8 rounded half to even and saturated
    (as the host's :func:`lmsgd.data.augment.to_wire`). Each example is resized on the
    devices that hold it."""
    n, _, _, c = images.shape
    shape = (n, size, size, c)
    out = jax.image.resize(images.astype(jnp.float32), shape, "bilinear", antialias=False)
    if images.dtype == jnp.uint8:
        return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
    return out.astype(images.dtype)


def _resized_on_device(batches: Iterator[dict], size: int) -> Iterator[dict]:
    """config.data.host_size: the host sent smaller crops; bring them to image_size."""
    for batch in batches:
        yield {**batch, "image": device_resize(batch["image"], size)}


def eval_batches(
    cfg: Mapping[str, Any],
    *,
    global_batch_size: int,
    sharding: jax.sharding.Sharding | None,
    process_index: int | None = None,
    process_count: int | None = None,
    source: sources.Source | None = None,
) -> BatchIterator:
    """The evaluation split exactly once, in ``ceil(N / G)`` batches on every process.

    Yields {'image': [G, S, S, 3], 'label': [G] int32, 'mask': [G] float32} with mask 1 for
    real examples and 0 for the padding that fills the last batch(es). Sum metrics with
    ``mask`` (see :func:`lmsgd.data.masked_topk_correct`); never drop the remainder.
    Shapes are per process ([G / process_count]) when ``sharding`` is None.
    """
    cfg = config.resolve(cfg)
    requires.check_available(cfg)
    p, n_proc = shard_lib.resolve_process(process_index, process_count)
    b = shard_lib.local_batch_size(global_batch_size, n_proc)
    src = source or sources.make_source(cfg)
    info: DatasetInfo = src.info
    if cfg.name == "synthetic":
        batch = synthetic.make_batch(info, global_batch_size, 1, cfg.dtype, sharding)
        if sharding is None:
            batch = {k: v[p * b : (p + 1) * b] for k, v in batch.items()}
        return BatchIterator(synthetic.eval_stream(info, global_batch_size, b, batch, sharding, p))
    kw = dict(global_batch_size=global_batch_size, p=p, n_proc=n_proc, b=b)
    if requires.tf_pipeline_name(cfg) is None:  # digits: numpy
        stream = memory_pipeline.eval_stream(cfg, src, **kw)
        return BatchIterator(_to_global(stream, sharding, cfg.prefetch))
    from lmsgd.data import tf_pipeline

    stream, tracker = tf_pipeline.eval_stream(cfg, src, **kw)
    return BatchIterator(
        checked(stream, tracker, sharding, cfg.prefetch, eval_mode=True), tracker=tracker
    )
