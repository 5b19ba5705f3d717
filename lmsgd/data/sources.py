"""Where examples come from: one :class:`Source` per config.data.name.

Two kinds of source feed the pipeline:

* :class:`IndexedSplit` (image_folder, digits, imagenet2012 prepared as ArrayRecord: the
  default): random access by example index, so an epoch is a full permutation, processes
  take disjoint index slices and resuming skips indices before any file is read.
* TFDS TFRecords (imagenet2012 with ``file_format='tfrecord'``): sequential, see
  :mod:`lmsgd.data.imagenet`.

Building a source needs no TensorFlow except for imagenet2012 (the TFDS builder): image
folders are listed, digits come from scikit-learn. The tf.data loaders import it when called.

``synthetic`` needs no source beyond its :class:`DatasetInfo` (see :mod:`lmsgd.data.synthetic`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from lmsgd.data import config, digits, folders, requires
from lmsgd.data.config import IMAGENET_MEAN, IMAGENET_STD
from lmsgd.data.info import DatasetInfo

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IndexedSplit:
    """A split addressable by index.

    Attributes:
      num_examples: N.
      make_loader: builds (inside the tf.data graph) element -> (image, int32 label), where
        the element is a dict with the example's 'index' (plus what ``read_ahead`` added) and
        image is encoded bytes (tf.string) or decoded uint8 [h, w, 3].
      describe: index -> human-readable origin (a file path) for error messages.
      labels: [N] int32 when known without reading the examples (not for ImageNet's
        ArrayRecords, whose labels are in the records); None otherwise.
      images: the decoded uint8 [N, h, w, 3] images when they are all in memory (digits),
        for the pipeline that runs without TensorFlow; None otherwise.
      read_ahead: None, or a transformation of the stream of elements (in order) applied
        before the loader's parallel map: ImageNet's ArrayRecords fetch the records of
        consecutive indices in batches there (one Python call per batch, not per example).
    """

    num_examples: int
    make_loader: Callable[[], Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]]
    describe: Callable[[int], str]
    labels: np.ndarray | None = None
    images: np.ndarray | None = None
    read_ahead: Callable[[tf.data.Dataset], tf.data.Dataset] | None = None

    def __len__(self) -> int:
        return self.num_examples


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset as the pipeline sees it: info, normalization and per-split readers."""

    info: DatasetInfo
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: IndexedSplit | None = None  # None for synthetic and TFRecord imagenet2012.
    eval: IndexedSplit | None = None
    tfds_builder: Any = None  # TFRecord imagenet2012 only.
    train_split: str = "train"
    eval_split: str = "validation"


def make_source(cfg: Mapping[str, Any]) -> Source:
    """Build the :class:`Source` for a (validated) config.data section."""
    cfg = config.resolve(cfg)
    size = cfg.image_size
    shape = (size, size, 3)
    if cfg.name == "synthetic":
        info = DatasetInfo(
            "synthetic",
            cfg.num_classes or 1000,
            shape,
            cfg.num_train_examples,
            cfg.num_eval_examples,
        )
        return _with_stats(Source(info, config.SYNTHETIC_MEAN, config.SYNTHETIC_STD))
    if cfg.name == "digits":
        src = _digits_source(cfg, shape)
    elif cfg.name == "image_folder":
        src = _folder_source(cfg, shape)
    else:
        src = _imagenet_source(cfg, shape)
    if cfg.num_classes is not None and cfg.num_classes != src.info.num_classes:
        raise ValueError(
            f"config.data.num_classes={cfg.num_classes} but {cfg.name!r} has "
            f"{src.info.num_classes} classes; leave num_classes=None (it is only needed for "
            "synthetic data)"
        )
    return _with_stats(src)


def _with_stats(src: Source) -> Source:
    """The source with its pixel statistics in its info: the model normalizes with them."""
    info = dataclasses.replace(src.info, mean=tuple(src.mean), std=tuple(src.std))
    return dataclasses.replace(src, info=info)


def _digits_source(cfg, shape) -> Source:
    splits = digits.load_digits_split(cfg.digits_validation_fraction)
    mean, std = digits.digits_mean_std(cfg.digits_validation_fraction)

    def indexed(name: str) -> IndexedSplit:
        images, labels = splits[name]

        def make_loader():
            tf = requires.tensorflow("digits inception-crop")
            table = tf.constant(images)  # [N, 8, 8, 3] uint8, 200 KB: always in memory.
            label_table = tf.constant(labels)
            return lambda d: (tf.gather(table, d["index"]), tf.gather(label_table, d["index"]))

        def describe(i: int) -> str:
            return f"digits {name} example {i}"

        return IndexedSplit(len(labels), make_loader, describe, labels=labels, images=images)

    train, ev = indexed("train"), indexed("eval")
    info = DatasetInfo(
        "digits", digits.NUM_CLASSES, shape, len(train), len(ev), tuple(map(str, range(10)))
    )
    return Source(info, mean, std, train=train, eval=ev, train_split="train", eval_split="eval")


def _folder_source(cfg, shape) -> Source:
    from lmsgd.data import imagenet_prepare

    root = cfg.data_dir
    imagenet_prepare.check_folders_complete(root)
    train = folders.list_split(root, cfg.train_split)
    eval_name = folders.resolve_eval_split(root, cfg.eval_split)
    ev = folders.list_split(root, eval_name)
    folders.check_same_classes(train, ev)
    info = DatasetInfo(
        "image_folder", len(train.class_names), shape, len(train), len(ev), train.class_names
    )

    def indexed(split: folders.FolderSplit) -> IndexedSplit:
        cache = cfg.cache
        if cache == "auto":
            cache = folders.estimate_decoded_bytes(split) <= cfg.cache_max_bytes
        if cache:
            # Memoized per (split dir, skip mode): decoded once per process.
            make_loader = functools.partial(_decoded_cache_loader, split, cfg.skip_corrupt)
        else:

            def make_loader():
                tf = requires.tensorflow("image-folder")
                paths, labels = tf.constant(split.paths), tf.constant(split.labels)
                return lambda d: (
                    tf.io.read_file(tf.gather(paths, d["index"])),
                    tf.gather(labels, d["index"]),
                )

        return IndexedSplit(
            len(split), make_loader, lambda i: split.paths[int(i)], labels=split.labels
        )

    return Source(
        info,
        IMAGENET_MEAN,
        IMAGENET_STD,
        train=indexed(train),
        eval=indexed(ev),
        train_split=cfg.train_split,
        eval_split=eval_name,
    )


@functools.lru_cache(maxsize=4)
def _decode_all(split: folders.FolderSplit, skip_corrupt: bool):
    """Decode a whole split once: (flat uint8 buffer, [N] offsets, [N, 3] shapes, bad ids).

    Variable-size images are packed into one flat buffer so that a lookup is a slice.
    A file that fails to decode gets shape (0, 0, 3); with skip_corrupt=False it is an error.
    """
    from lmsgd.data import augment

    tf = requires.tensorflow("image-folder")
    n = len(split)
    paths = tf.constant(split.paths)
    ds = tf.data.Dataset.range(n).map(
        lambda i: (i, augment.decode_full(tf.io.read_file(tf.gather(paths, i)))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.ignore_errors().prefetch(tf.data.AUTOTUNE)
    chunks: list[np.ndarray] = [np.zeros(0, np.uint8)] * n
    shapes = np.zeros((n, 3), np.int64)
    seen = np.zeros(n, bool)
    for i, image in ds.as_numpy_iterator():
        chunks[i] = image.reshape(-1)
        shapes[i] = image.shape
        seen[i] = True
    bad = np.flatnonzero(~seen)
    if bad.size and not skip_corrupt:
        listed = ", ".join(split.paths[i] for i in bad[:5])
        raise ValueError(
            f"{bad.size} unreadable or corrupt image file(s) in {split.root!r}: {listed}"
            f"{' ...' if bad.size > 5 else ''}. Remove or replace them, or set "
            "config.data.skip_corrupt=True to skip and count them"
        )
    shapes[bad] = (0, 0, 3)
    sizes = shapes.prod(axis=1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    log.info("cached %d decoded images of %s (%.1f MB)", n, split.root, sizes.sum() / 1e6)
    return np.concatenate(chunks), offsets, shapes, bad


def _decoded_cache_loader(split: folders.FolderSplit, skip_corrupt: bool):
    tf = requires.tensorflow("image-folder")
    flat, offsets, shapes, _ = _decode_all(split, skip_corrupt)
    flat_t = tf.constant(flat)
    offsets_t, shapes_t = tf.constant(offsets), tf.constant(shapes)
    labels_t = tf.constant(split.labels)

    def load(d):
        i = d["index"]
        shape = tf.gather(shapes_t, i)
        size = tf.reduce_prod(shape)
        # A corrupt entry raises here, so the pipeline drops and reports it like a
        # failed decode (same counting with and without the cache).
        with tf.control_dependencies([tf.debugging.assert_positive(size, message="corrupt image")]):
            start = tf.gather(offsets_t, i)
            return tf.reshape(flat_t[start : start + size], shape), tf.gather(labels_t, i)

    return load


def _imagenet_source(cfg, shape) -> Source:
    requires.tensorflow_datasets("imagenet2012 (TFDS)")
    from lmsgd.data import imagenet

    builder = imagenet.get_builder(cfg.data_dir, cfg.file_format)
    eval_split = "validation" if cfg.eval_split == "auto" else cfg.eval_split
    if cfg.file_format == "tfrecord":
        info = DatasetInfo(
            "imagenet2012",
            imagenet.NUM_CLASSES,
            shape,
            imagenet.num_examples(builder, cfg.train_split),
            imagenet.num_examples(builder, eval_split),
        )
        return Source(
            info,
            IMAGENET_MEAN,
            IMAGENET_STD,
            tfds_builder=builder,
            train_split=cfg.train_split,
            eval_split=eval_split,
        )
    train = _imagenet_indexed(builder, imagenet.check_split(builder, cfg.train_split))
    ev = _imagenet_indexed(builder, imagenet.check_split(builder, eval_split))
    info = DatasetInfo("imagenet2012", imagenet.NUM_CLASSES, shape, len(train), len(ev))
    return Source(
        info,
        IMAGENET_MEAN,
        IMAGENET_STD,
        train=train,
        eval=ev,
        train_split=cfg.train_split,
        eval_split=eval_split,
    )


# Records fetched per Python call: amortizes the call (~1 ms through tf.numpy_function) over
# many records.
_FETCH_BATCH = 64


def _imagenet_indexed(builder, split: str) -> IndexedSplit:
    """An ArrayRecord split as an :class:`IndexedSplit`: records fetched by index (TFDS's
    data source, raw bytes), in batches of consecutive positions of the stream, and parsed
    in the tf.data graph."""
    from lmsgd.data import imagenet

    records = imagenet.random_access(builder, split)

    def fetch(indices: np.ndarray) -> np.ndarray:
        # One by one: the data source's batched read (__getitems__) starts a Python thread
        # pool per call, which hung inside tf.data's threads here.
        return np.array([records[i] for i in indices.tolist()], dtype=object)

    def read_ahead(ds):
        tf = requires.tensorflow("imagenet2012")

        def add_records(d):
            record = tf.numpy_function(fetch, [d["index"]], tf.string, stateful=False)
            record.set_shape(d["index"].shape)
            return {**d, "record": record}

        return (
            ds.batch(_FETCH_BATCH)
            .map(add_records, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .unbatch()
        )

    def make_loader():
        return lambda d: imagenet.parse(d["record"])

    def describe(i: int) -> str:
        return f"imagenet2012 {split} example {int(i)} (in {builder.data_dir})"

    return IndexedSplit(len(records), make_loader, describe, read_ahead=read_ahead)
