"""ImageNet 2012 through TensorFlow Datasets (``imagenet2012``), read as encoded JPEG bytes.

Images are read undecoded (``tfds.decode.SkipDecoding``) so the pipeline can crop while
decoding. Each process reads its own even slice (``tfds.split_for_jax_process``).
TFRecords are not randomly addressable, so an epoch is shuffled by TFDS file shuffling plus a
``shuffle_buffer`` of records, both seeded by (seed, epoch, process); resuming skips records
before they are decoded.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from lmsgd.data._tf import tf
from lmsgd.data.config import IMAGENET_NUM_EVAL, IMAGENET_NUM_TRAIN

log = logging.getLogger(__name__)

TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
NUM_CLASSES = 1000
# Used only when TFDS knows no split sizes (under tfds.testing.mock_data).
_KNOWN_SIZES = {"train": IMAGENET_NUM_TRAIN, "validation": IMAGENET_NUM_EVAL}


def _tfds():
    from lmsgd.data import requires

    return requires.tensorflow_datasets("imagenet2012 (TFDS)")


def _data_dir_root(data_dir: str | None) -> str:
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


@functools.lru_cache(maxsize=4)
def get_builder(data_dir: str | None, manual_dir: str | None):
    """The prepared ``imagenet2012`` builder; fails early, saying how to get the data."""
    tfds = _tfds()
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if builder.is_prepared():
        return builder
    root = _data_dir_root(data_dir)
    manual = (
        os.path.expanduser(manual_dir) if manual_dir else os.path.join(root, "downloads", "manual")
    )
    missing = [t for t in TARS if not os.path.isfile(os.path.join(manual, t))]
    if missing:
        raise FileNotFoundError(
            f"imagenet2012 is not prepared in {root!r} and the manual download directory "
            f"{manual!r} lacks {', '.join(missing)}.\n"
            "  1. Download ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar "
            "(6.3 GB) from https://image-net.org/download-images (free account; 'ILSVRC2012', "
            "'Training images (Task 1 & 2)' and 'Validation images (all tasks)').\n"
            f"  2. Put both files into {manual}/\n"
            f"  3. Prepare once (hours; about 150 GB of TFRecords): tfds build imagenet2012 "
            f"--data_dir={root} --manual_dir={manual}\n"
            "Or use config.data.name='image_folder' with data_dir=<root with train/ and val/>."
        )
    log.warning(
        "Preparing imagenet2012 from %s into %s (hours). On several hosts, run "
        "`tfds build imagenet2012 --data_dir=%s --manual_dir=%s` once beforehand instead.",
        manual,
        root,
        root,
        manual,
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return builder


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
    """One epoch of this process's records: {'image': JPEG bytes, 'label', 'pos'}.

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
