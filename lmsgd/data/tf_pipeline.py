"""The tf.data pipelines: image folders, imagenet2012 (TFDS), digits with the inception crop.

See :mod:`lmsgd.data.pipeline` for what they guarantee (epochs, resuming, corrupt files).
Importing this module imports TensorFlow: :mod:`lmsgd.data.pipeline` imports it only for
these datasets, after :func:`lmsgd.data.requires.check_available`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from lmsgd.data import augment, config, imagenet, sources
from lmsgd.data import sharding as shard_lib
from lmsgd.data._tf import tf
from lmsgd.data.iterators import GapTracker

_MAX_EPOCHS = 1 << 40  # "forever" for Dataset.range.


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
    """The wire dtype of the pixels (normalized on the device by the model)."""
    return tf.as_dtype(cfg.dtype)


def _train_fn(cfg, src: sources.Source, seed: int) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """(image, key) -> augmented image; key = [2] seed from (seed, epoch, example index)."""
    kwargs = dict(
        # host_size: the devices resize to image_size (lmsgd.data.pipeline).
        size=cfg.host_size or cfg.image_size,
        crop=config.effective_crop(cfg),
        flip=config.effective_flip(cfg),
        ratio=cfg.eval_crop_ratio,
        area_range=tuple(cfg.crop_area_range),
        aspect_ratio_range=tuple(cfg.crop_aspect_ratio_range),
        fused=cfg.decode_and_crop,
        dtype=_tf_dtype(cfg),
        min_side=cfg.decode_min_side,
    )
    return lambda image, key: augment.train_preprocess(image, key, **kwargs)


def _eval_fn(cfg, src: sources.Source) -> Callable[[tf.Tensor], tf.Tensor]:
    kwargs = dict(
        size=cfg.image_size,
        ratio=cfg.eval_crop_ratio,
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


def indexed_train(cfg, src, split, *, seed, start_epoch, start_step, steps, p, n_proc, b):
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
    augment_fn = _train_fn(cfg, src, seed)

    def load(d):
        key = augment.example_seed(seed, d["epoch"], d["index"], stream=1)
        image, label = loader(d)
        return {
            "image": augment_fn(image, key),
            "label": label,
            "epoch": d["epoch"],
            "pos": d["pos"],
        }

    ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_ds)
    if split.read_ahead is not None:
        ds = split.read_ahead(ds)
    ds = ds.map(load, num_parallel_calls=_parallel(cfg), deterministic=True)
    ds = ds.ignore_errors().batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    ds = _options(ds, cfg)

    orders: dict[int, np.ndarray] = {}

    def describe(epoch: int, pos: int) -> str:
        if epoch not in orders:
            orders.clear()
            orders[epoch] = local_epoch_order(n, seed, epoch, steps, p, n_proc, b).numpy()
        return split.describe(int(orders[epoch][pos]))

    tracker = GapTracker(
        describe, skip=cfg.skip_corrupt, per_epoch=per_epoch, start=(start_epoch, start_step * b)
    )
    return ds.as_numpy_iterator(), tracker


def tfds_train(cfg, src, *, seed, start_epoch, start_step, steps, p, n_proc, b):
    augment_fn = _train_fn(cfg, src, seed)

    def epoch_stream():
        for epoch in range(start_epoch, _MAX_EPOCHS):
            skip = start_step * b if epoch == start_epoch else 0
            ds = imagenet.train_records(
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

    tracker = GapTracker(describe, skip=cfg.skip_corrupt, start=(start_epoch, start_step * b))
    return epoch_stream(), tracker


def eval_stream(
    cfg, src: sources.Source, *, global_batch_size: int, p: int, n_proc: int, b: int
) -> tuple[Iterator[dict], GapTracker]:
    """This process's evaluation batches (real examples, then padding) and their tracker."""
    info = src.info
    num_batches = math.ceil(info.num_eval_examples / global_batch_size)
    eval_fn = _eval_fn(cfg, src)
    if src.eval is not None:
        split = src.eval
        real, _ = shard_lib.eval_local_indices(len(split), global_batch_size, p, n_proc)
        loader = split.make_loader()
        ds = tf.data.Dataset.from_tensor_slices(
            {"index": real, "pos": np.arange(len(real), dtype=np.int64)}
        )
        if split.read_ahead is not None:
            ds = split.read_ahead(ds)

        def load(d):
            image, label = loader(d)
            return {
                "image": eval_fn(image),
                "label": label,
                "pos": d["pos"],
            }

        def describe(epoch: int, pos: int) -> str:
            return split.describe(int(real[pos]))

        end = len(real)
    else:
        ds = imagenet.eval_records(
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
    tracker = GapTracker(describe, skip=cfg.skip_corrupt, end=end)
    return ds.as_numpy_iterator(), tracker
