"""Training and evaluation batches: tf.data on the host, global jax.Arrays out.

Training (:func:`train_batches`)
  * An epoch is a permutation drawn from (seed, epoch) — a full
    ``tf.random.experimental.stateless_shuffle`` for index sources (image_folder, digits),
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

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from lmsgd.data import augment, config, sources, synthetic
from lmsgd.data import sharding as shard_lib
from lmsgd.data._tf import tf
from lmsgd.data.info import DatasetInfo, steps_per_epoch
from lmsgd.errors import DataError

log = logging.getLogger(__name__)

_MAX_EPOCHS = 1 << 40  # "forever" for Dataset.range.
_MAX_RECORDED = 100  # Skipped paths kept on the iterator (all are counted and logged).


class BatchIterator:
    """Iterator of batch dicts that knows its position and what it skipped.

    Attributes:
      epoch, step: position of the *next* batch (what to store in a checkpoint to resume).
      num_skipped: corrupt/unreadable images skipped so far (skip_corrupt=True).
      skipped: their paths (the first 100).
      steps_per_epoch: batches per epoch (None for evaluation).
    """

    def __init__(
        self,
        stream: Iterator[dict],
        *,
        tracker: _GapTracker | None = None,
        start_epoch: int = 0,
        start_step: int = 0,
        steps_per_epoch: int | None = None,
    ):
        self._stream = stream
        self._tracker = tracker
        self._start = (start_epoch, start_step)
        self._served = 0
        self.steps_per_epoch = steps_per_epoch

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict:
        batch = next(self._stream)
        self._served += 1
        return batch

    @property
    def epoch(self) -> int:
        return self._position()[0]

    @property
    def step(self) -> int:
        return self._position()[1]

    def _position(self) -> tuple[int, int]:
        e, s = self._start
        if not self.steps_per_epoch:
            return e, s + self._served
        e, s = divmod(e * self.steps_per_epoch + s + self._served, self.steps_per_epoch)
        return e, s

    @property
    def num_skipped(self) -> int:
        return self._tracker.count if self._tracker else 0

    @property
    def skipped(self) -> list[str]:
        return list(self._tracker.recorded) if self._tracker else []


class _GapTracker:
    """Finds dropped (corrupt) examples as gaps in the (epoch, pos) sequence of a stream.

    ``per_epoch``: examples per epoch of this process when known (index sources), which also
    finds a gap at the very end of an epoch; ``None`` (TFDS) checks within epochs only.
    ``end``: for evaluation, the number of real examples, checked when padding begins.
    """

    def __init__(
        self,
        describe: Callable[[int, int], str],
        *,
        skip: bool,
        per_epoch: int | None = None,
        start: tuple[int, int] = (0, 0),
        end: int | None = None,
    ):
        self.describe = describe
        self.skip = skip
        self.per_epoch = per_epoch
        self.epoch, self.pos = start
        self.end = end
        self.count = 0
        self.recorded: list[str] = []

    def _missing(self, epoch: int, pos: int) -> None:
        what = self.describe(epoch, pos)
        if not self.skip:
            raise DataError(
                f"unreadable or corrupt image: {what}. Remove or replace the file, or set "
                "config.data.skip_corrupt=True to skip such files (they are counted)"
            )
        self.count += 1
        if len(self.recorded) < _MAX_RECORDED:
            self.recorded.append(what)
        log.warning("skipped unreadable or corrupt image %s (%d skipped so far)", what, self.count)

    def _advance(self) -> None:
        self.pos += 1
        if self.per_epoch is not None and self.pos == self.per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0

    def check(self, epochs: np.ndarray, positions: np.ndarray) -> None:
        """Account for one batch; ``positions`` < 0 are evaluation padding."""
        n = len(positions)
        if (
            n
            and positions[-1] >= 0
            and np.all(epochs == self.epoch)
            and np.array_equal(positions, np.arange(self.pos, self.pos + n))
            and (self.per_epoch is None or self.pos + n < self.per_epoch)
        ):
            self.pos += n  # Fast path: no gap, no epoch boundary.
            return
        for e, q in zip(epochs.tolist(), positions.tolist()):
            if q < 0:  # Padding: all real examples must have been seen.
                if self.end is not None:
                    while self.pos < self.end:
                        self._missing(self.epoch, self.pos)
                        self.pos += 1
                self.end = None
                continue
            if self.per_epoch is None and e != self.epoch:
                self.epoch, self.pos = e, 0  # Unknown epoch length: start counting anew.
            while (self.epoch, self.pos) < (e, q):
                self._missing(self.epoch, self.pos)
                self._advance()
            self._advance()

    def finish(self) -> None:
        """End of an evaluation stream with no padding at all."""
        self.check(np.zeros(1, np.int64), np.full(1, -1, np.int64))


def _options(ds: tf.data.Dataset, cfg) -> tf.data.Dataset:
    opts = tf.data.Options()
    opts.deterministic = True  # Reproducible order even with parallel map.
    opts.autotune.enabled = True
    # One thread per op, parallelism across examples: the usual best for image pipelines.
    opts.threading.max_intra_op_parallelism = 1
    if cfg.private_threadpool_size:
        opts.threading.private_threadpool_size = cfg.private_threadpool_size
    return ds.with_options(opts)


def _parallel(cfg) -> int:
    return tf.data.AUTOTUNE if cfg.num_parallel_calls == -1 else cfg.num_parallel_calls


def _tf_dtype(cfg) -> tf.DType:
    return tf.bfloat16 if cfg.dtype == "bfloat16" else tf.float32


def _train_fn(cfg, src: sources.Source, seed: int) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """(image, key) -> augmented image; key = [2] seed from (seed, epoch, example index)."""
    kwargs = dict(
        size=cfg.image_size,
        crop=config.effective_crop(cfg),
        flip=config.effective_flip(cfg),
        ratio=cfg.eval_crop_ratio,
        area_range=tuple(cfg.crop_area_range),
        aspect_ratio_range=tuple(cfg.crop_aspect_ratio_range),
        fused=cfg.decode_and_crop,
        mean=src.mean,
        std=src.std,
        dtype=_tf_dtype(cfg),
    )
    return lambda image, key: augment.train_preprocess(image, key, **kwargs)


def _eval_fn(cfg, src: sources.Source) -> Callable[[tf.Tensor], tf.Tensor]:
    kwargs = dict(
        size=cfg.image_size,
        ratio=cfg.eval_crop_ratio,
        mean=src.mean,
        std=src.std,
        dtype=_tf_dtype(cfg),
    )
    return lambda image: augment.eval_preprocess(image, **kwargs)


def local_epoch_order(
    num_examples: int,
    seed: int,
    epoch: tf.Tensor | int,
    steps: int,
    process_index: int,
    process_count: int,
    local_batch: int,
) -> tf.Tensor:
    """Example indices this process reads in ``epoch``, in order: [steps * local_batch] int64.

    The epoch's permutation is split into ``steps`` global batches; this process takes its
    ``local_batch`` rows of each (see :mod:`lmsgd.data.sharding`).
    """
    key = augment.example_seed(seed, epoch, 0, stream=0)
    perm = tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64), key)
    grid = tf.reshape(perm[: steps * process_count * local_batch], [steps, process_count, -1])
    return tf.reshape(grid[:, process_index, :], [-1])


def _indexed_train(cfg, src, split, *, seed, start_epoch, start_step, steps, p, n_proc, b):
    per_epoch = steps * b
    n = len(split)

    def epoch_ds(epoch):
        order = local_epoch_order(n, seed, epoch, steps, p, n_proc, b)
        ds = tf.data.Dataset.from_tensor_slices(
            {"index": order, "pos": tf.range(per_epoch, dtype=tf.int64)}
        )
        # Resume: skip indices (no file is read for them), only in the first epoch.
        skip = tf.where(epoch == start_epoch, tf.constant(start_step * b, tf.int64), 0)
        return ds.skip(skip).map(lambda d: {**d, "epoch": epoch})

    loader = split.make_loader()
    labels = tf.constant(split.labels)
    augment_fn = _train_fn(cfg, src, seed)

    def load(d):
        key = augment.example_seed(seed, d["epoch"], d["index"], stream=1)
        return {
            "image": augment_fn(loader(d["index"]), key),
            "label": tf.gather(labels, d["index"]),
            "epoch": d["epoch"],
            "pos": d["pos"],
        }

    ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_ds)
    ds = ds.map(load, num_parallel_calls=_parallel(cfg), deterministic=True)
    ds = ds.ignore_errors().batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    ds = _options(ds, cfg)

    orders: dict[int, np.ndarray] = {}

    def describe(epoch: int, pos: int) -> str:
        if epoch not in orders:
            orders.clear()
            orders[epoch] = local_epoch_order(n, seed, epoch, steps, p, n_proc, b).numpy()
        return split.describe(int(orders[epoch][pos]))

    tracker = _GapTracker(
        describe, skip=cfg.skip_corrupt, per_epoch=per_epoch, start=(start_epoch, start_step * b)
    )
    return ds.as_numpy_iterator(), tracker


def _tfds_train(cfg, src, *, seed, start_epoch, start_step, steps, p, n_proc, b):
    augment_fn = _train_fn(cfg, src, seed)

    def epoch_stream():
        for epoch in range(start_epoch, _MAX_EPOCHS):
            skip = start_step * b if epoch == start_epoch else 0
            ds = sources.imagenet.train_records(
                src.tfds_builder,
                src.train_split,
                seed=seed,
                epoch=epoch,
                process_index=p,
                process_count=n_proc,
                skip=skip,
                take=steps * b - skip,
                shuffle_buffer=cfg.shuffle_buffer,
            )

            def load(d, epoch=epoch):
                # Example key: its position in the global epoch order (unique per epoch).
                index = (d["pos"] // b) * (b * n_proc) + p * b + d["pos"] % b
                key = augment.example_seed(seed, epoch, index, stream=1)
                return {
                    "image": augment_fn(d["image"], key),
                    "label": d["label"],
                    "epoch": tf.constant(epoch, tf.int64),
                    "pos": d["pos"],
                }

            ds = ds.map(load, num_parallel_calls=_parallel(cfg), deterministic=True)
            ds = ds.ignore_errors().batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
            yield from _options(ds, cfg).as_numpy_iterator()

    def describe(epoch: int, pos: int) -> str:
        return f"imagenet2012 {src.train_split} record {pos} of epoch {epoch} on process {p}"

    tracker = _GapTracker(describe, skip=cfg.skip_corrupt, start=(start_epoch, start_step * b))
    return epoch_stream(), tracker


def _checked(
    stream: Iterator[dict], tracker: _GapTracker, sharding, size: int, eval_mode: bool = False
) -> Iterator[dict]:
    """Check for gaps, drop bookkeeping keys, convert to global arrays, prefetch."""

    def gen():
        for batch in stream:
            tracker.check(batch.pop("epoch"), batch.pop("pos"))
            yield shard_lib.to_global(batch, sharding)
        if eval_mode:
            tracker.finish()

    return shard_lib.prefetch(gen(), size)


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
      A :class:`BatchIterator` of {'image': [G, S, S, 3] float32|bfloat16 normalized,
      'label': [G] int32} (global arrays; [G / process_count, ...] numpy when sharding is
      None). ``.epoch``/``.step`` give the next batch's position, ``.num_skipped`` the
      corrupt files skipped.
    """
    cfg = config.resolve(cfg)
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
    if src.train is not None:
        stream, tracker = _indexed_train(cfg, src, src.train, b=b, **kw)
    else:
        stream, tracker = _tfds_train(cfg, src, b=b, **kw)
    return BatchIterator(
        _checked(stream, tracker, sharding, cfg.prefetch), tracker=tracker, **common
    )


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
    p, n_proc = shard_lib.resolve_process(process_index, process_count)
    b = shard_lib.local_batch_size(global_batch_size, n_proc)
    src = source or sources.make_source(cfg)
    info: DatasetInfo = src.info
    if cfg.name == "synthetic":
        batch = synthetic.make_batch(info, global_batch_size, 1, cfg.dtype, sharding)
        if sharding is None:
            batch = {k: v[p * b : (p + 1) * b] for k, v in batch.items()}
        return BatchIterator(synthetic.eval_stream(info, global_batch_size, b, batch, sharding, p))
    num_batches = math.ceil(info.num_eval_examples / global_batch_size)
    eval_fn = _eval_fn(cfg, src)
    if src.eval is not None:
        split = src.eval
        real, _ = shard_lib.eval_local_indices(len(split), global_batch_size, p, n_proc)
        loader = split.make_loader()
        labels = tf.constant(split.labels)
        ds = tf.data.Dataset.from_tensor_slices(
            {"index": real, "pos": np.arange(len(real), dtype=np.int64)}
        )

        def load(d):
            return {
                "image": eval_fn(loader(d["index"])),
                "label": tf.gather(labels, d["index"]),
                "pos": d["pos"],
            }

        def describe(epoch: int, pos: int) -> str:
            return split.describe(int(real[pos]))

        end = len(real)
    else:
        ds = sources.imagenet.eval_records(
            src.tfds_builder, src.eval_split, process_index=p, process_count=n_proc
        )

        def load(d):
            return {"image": eval_fn(d["image"]), "label": d["label"], "pos": d["pos"]}

        def describe(epoch: int, pos: int) -> str:
            return f"imagenet2012 {src.eval_split} record {pos} on process {p}"

        end = None  # TFDS slice sizes are not known without metadata (mocked datasets).
    size = cfg.image_size
    ds = ds.map(load, num_parallel_calls=_parallel(cfg), deterministic=True).ignore_errors()
    ds = ds.map(lambda d: {**d, "mask": tf.constant(1.0), "epoch": tf.constant(0, tf.int64)})
    pad = {
        "image": tf.zeros([size, size, 3], _tf_dtype(cfg)),
        "label": tf.constant(0, tf.int32),
        "pos": tf.constant(-1, tf.int64),
        "mask": tf.constant(0.0),
        "epoch": tf.constant(0, tf.int64),
    }
    # Real examples first, then padding up to the same batch count on every process.
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
    ds = ds.take(num_batches * b).batch(b).prefetch(tf.data.AUTOTUNE)
    ds = _options(ds, cfg)
    tracker = _GapTracker(describe, skip=cfg.skip_corrupt, end=end)
    return BatchIterator(
        _checked(ds.as_numpy_iterator(), tracker, sharding, cfg.prefetch, eval_mode=True),
        tracker=tracker,
    )
