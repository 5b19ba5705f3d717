"""ImageNet 2012 as TFDS prepares it (``imagenet2012``), read as encoded JPEG bytes.

`python -m lmsgd.data.prepare imagenet2012` prepares it once (:mod:`lmsgd.data.imagenet_prepare`);
training never does: unprepared data stops the run in one line naming that command.

Two file formats (``config.data.file_format``):

* ``array_record`` (default): random access by example index (:func:`random_access`), so it is
  an :class:`lmsgd.data.sources.IndexedSplit` like image folders: an epoch is one global
  permutation of (seed, epoch), each process reads its rows of every global batch, and the
  examples of a step do not depend on the number of processes.
* ``tfrecord``: sequential records. Each process reads its own even slice of the files
  (``tfds.split_for_jax_process``), shuffled by TFDS file shuffling plus a ``shuffle_buffer`` of
  records, both seeded by (seed, epoch, process), so the examples of a step depend on the
  process count; resuming skips records before they are decoded.

Images are read undecoded so the pipeline can crop while decoding.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from lmsgd.data._tf import tf
from lmsgd.data.config import IMAGENET_NUM_EVAL, IMAGENET_NUM_TRAIN
from lmsgd.data.imagenet_prepare import NAME, TARS, data_dir_root, lock_holder, prepare_command
from lmsgd.errors import DataError

__all__ = ["NAME", "TARS", "data_dir_root", "get_builder", "prepare_command", "random_access"]

log = logging.getLogger(__name__)

NUM_CLASSES = 1000
# Used only when TFDS knows no split sizes (under tfds.testing.mock_data).
_KNOWN_SIZES = {"train": IMAGENET_NUM_TRAIN, "validation": IMAGENET_NUM_EVAL}


def _tfds():
    from lmsgd.data import requires

    return requires.tensorflow_datasets("imagenet2012 (TFDS)")


def prepared_formats(builder) -> set[str]:
    """File formats a prepared builder holds (empty under tfds.testing.mock_data)."""
    formats = {f.value for f in builder.info.available_file_formats()}
    if not formats and builder.info.file_format is not None:
        formats = {builder.info.file_format.value}
    return formats


def _no_info_warning(record: logging.LogRecord) -> bool:
    return "has no dataset_info.json" not in record.getMessage()


def builder(data_dir: str | None):
    """TFDS's ``imagenet2012`` builder on ``data_dir``. TFDS's warning that an unprepared
    folder has no dataset_info.json is dropped: the caller says what to do instead."""
    absl_log = logging.getLogger("absl")
    if _no_info_warning not in absl_log.filters:
        absl_log.addFilter(_no_info_warning)
    return _tfds().builder(NAME, data_dir=data_dir)


@functools.lru_cache(maxsize=4)
def get_builder(data_dir: str | None, file_format: str = "array_record"):
    """The prepared ``imagenet2012`` builder in ``file_format``; DataError (one line naming
    the command that prepares it) otherwise. Never prepares anything."""
    prepared = builder(data_dir)
    root = data_dir_root(data_dir)
    if not prepared.is_prepared():
        holder = lock_holder(root)
        busy = f" (being prepared now: {holder})" if holder else ""
        raise DataError(
            f"imagenet2012 is not prepared in {root}{busy}: run `"
            f"{prepare_command(data_dir, file_format)}` once (on every host, or once on a "
            "shared disk; see docs/imagenet.md), then rerun"
        )
    formats = prepared_formats(prepared)
    if formats and file_format not in formats:
        have = sorted(formats)[0]
        raise DataError(
            f"imagenet2012 in {root} is prepared as {have}, not "
            f"config.data.file_format={file_format!r}: set --config.data.file_format={have}, "
            f"or prepare {file_format} into another directory with `"
            f"{prepare_command('<another data_dir>', file_format)}`"
        )
    return prepared


def random_access(builder, split: str):
    """The split's serialized records by index (TFDS's ArrayRecord data source, raw bytes:
    parsed in the tf.data graph by :func:`parse`)."""
    tfds = _tfds()
    return builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A serialized TFDS imagenet2012 example -> (JPEG bytes, int32 label)."""
    ex = tf.io.parse_single_example(serialized, _FEATURES)
    return ex["image"], tf.cast(ex["label"], tf.int32)


def num_examples(builder, split: str) -> int:
    """Examples in ``split`` (TFDS metadata; ImageNet's published sizes when TFDS has none)."""
    splits = builder.info.splits
    if len(splits) == 0 and split in _KNOWN_SIZES:
        return _KNOWN_SIZES[split]
    if split not in splits:
        raise ValueError(
            f"imagenet2012 has no split {split!r}; available: {sorted(splits)} "
            "(set config.data.train_split / eval_split)"
        )
    return int(splits[split].num_examples)


def check_split(builder, split: str) -> str:
    """``split`` if the prepared data has it; DataError naming the splits it has otherwise."""
    splits = builder.info.splits
    if split not in splits:
        raise DataError(
            f"imagenet2012 has no split {split!r}; available: {sorted(splits)} "
            "(set config.data.train_split / eval_split)"
        )
    return split


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def train_records(
    builder,
    split: str,
    *,
    seed: int,
    epoch: int,
    process_index: int,
    process_count: int,
    skip: int,
    take: int,
    shuffle_buffer: int,
) -> tf.data.Dataset:
    """One epoch of this process's TFRecords: {'image': JPEG bytes, 'label', 'pos'}.

    ``pos`` is the position in this process's epoch stream; ``skip`` records are dropped
    (undecoded) to resume, then ``take`` records are returned.
    """
    tfds = _tfds()
    sub = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=True
    )
    read_config = tfds.ReadConfig(
        shuffle_seed=_seed(seed, epoch, process_index, 0), try_autocache=False
    )
    ds = builder.as_dataset(
        split=sub,
        shuffle_files=True,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    ds = ds.shuffle(shuffle_buffer, seed=_seed(seed, epoch, process_index, 1))
    ds = ds.enumerate().map(
        lambda i, ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32), "pos": i}
    )
    return ds.skip(skip).take(take)


def eval_records(builder, split: str, *, process_index: int, process_count: int):
    """This process's slice of the eval split, in order: {'image', 'label', 'pos'}."""
    tfds = _tfds()
    sub = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count, drop_remainder=False
    )
    ds = builder.as_dataset(
        split=sub, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    return ds.enumerate().map(
        lambda i, ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32), "pos": i}
    )
