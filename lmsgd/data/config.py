"""The ``config.data`` section: keys, defaults and validation.

``DATA_CONFIG_DOCS`` documents every key; :func:`default_data_config` and
:func:`validate_data_config` are built from the same table, so they cannot drift apart.
No TensorFlow here: importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from lmsgd.schema import Key as _Key
from lmsgd.schema import Section
from lmsgd.schema import is_int as _is_int
from lmsgd.schema import is_number as _is_number
from lmsgd.schema import one_of as _one_of

DATASET_NAMES = ("digits", "image_folder", "imagenet2012", "synthetic")
CROP_MODES = ("auto", "inception", "resize_crop")
IMAGENET_FILE_FORMATS = ("array_record", "tfrecord")
DTYPES = ("uint8", "bfloat16", "float32")
# Split names an `image_folder` root may use for evaluation, in the order 'auto' tries them.
FOLDER_EVAL_SPLITS = ("val", "validation", "test")

# ImageNet-1k (ILSVRC2012) sizes; also the synthetic defaults so that epochs look alike.
IMAGENET_NUM_TRAIN = 1_281_167
IMAGENET_NUM_EVAL = 50_000
# ImageNet channel statistics on the 0..255 scale (torchvision's numbers, as in the paper's
# ChainerMN code which subtracts the per-channel mean).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Synthetic pixels are uniform integers 0..255: their mean and standard deviation.
SYNTHETIC_MEAN = (127.5,) * 3
SYNTHETIC_STD = (math.sqrt((256**2 - 1) / 12),) * 3


def _opt_str(x: Any) -> bool:
    return x is None or (isinstance(x, str) and len(x) > 0)


def _range_pair(lo_min: float, hi_max: float) -> Callable[[Any], bool]:
    def check(x: Any) -> bool:
        return (
            isinstance(x, (tuple, list))
            and len(x) == 2
            and all(_is_number(v) for v in x)
            and lo_min < x[0] <= x[1] <= hi_max
        )

    return check


_KEYS: dict[str, _Key] = {
    # --- which data --------------------------------------------------------------------------
    "name": _Key(
        "digits",
        "Dataset: 'digits' (scikit-learn's 8x8 digits, no download), 'image_folder' "
        "(data_dir/train/<class>/*.jpg), 'imagenet2012' (TFDS), 'synthetic' (on-device noise).",
        _one_of(*DATASET_NAMES),
        " | ".join(map(repr, DATASET_NAMES)),
    ),
    "data_dir": _Key(
        None,
        "image_folder: the root holding train/ and val/ (or validation/, test/). "
        "imagenet2012: the TFDS data_dir (None = TFDS default: $TFDS_DATA_DIR, else "
        "~/tensorflow_datasets).",
        _opt_str,
        "None or a non-empty path string",
        str,
        "/data",
    ),
    "file_format": _Key(
        "array_record",
        "imagenet2012 only: which prepared TFDS files to read (python -m lmsgd.data.prepare "
        "imagenet2012 writes them). 'array_record': random access, one global order of "
        "(seed, epoch) for any number of processes. 'tfrecord': sequential, each process "
        "reads its own split of the files, so the examples of a step depend on the process "
        "count (a resume needs the same count).",
        _one_of(*IMAGENET_FILE_FORMATS),
        " | ".join(map(repr, IMAGENET_FILE_FORMATS)),
    ),
    "train_split": _Key(
        "train",
        "Training split: a folder name (image_folder) or TFDS split name (imagenet2012).",
        lambda x: isinstance(x, str) and len(x) > 0,
        "a non-empty string",
    ),
    "eval_split": _Key(
        "auto",
        "Evaluation split. 'auto': image_folder tries val/, validation/, test/; imagenet2012 "
        "uses 'validation'; digits uses its fixed held-out part.",
        lambda x: isinstance(x, str) and len(x) > 0,
        "'auto' or a non-empty split name",
    ),
    "num_classes": _Key(
        None,
        "synthetic: number of classes (None = 1000). Other datasets: None, or the number the "
        "data has (checked).",
        lambda x: x is None or (_is_int(x) and x >= 2),
        "None or an int >= 2",
        int,
        10,
    ),
    "num_train_examples": _Key(
        IMAGENET_NUM_TRAIN,
        "synthetic only: examples in a training epoch (defines steps_per_epoch).",
        lambda x: _is_int(x) and x >= 1,
        "an int >= 1",
    ),
    "num_eval_examples": _Key(
        IMAGENET_NUM_EVAL,
        "synthetic only: examples in the evaluation split.",
        lambda x: _is_int(x) and x >= 1,
        "an int >= 1",
    ),
    "digits_validation_fraction": _Key(
        0.2,
        "digits only: fraction held out for evaluation (fixed, stratified split, seed 0).",
        lambda x: _is_number(x) and 0 < x < 1,
        "a float in (0, 1)",
    ),
    # --- images ------------------------------------------------------------------------------
    "image_size": _Key(
        32,
        "Side of the square model input in pixels (224 for ImageNet ResNet-50).",
        lambda x: _is_int(x) and x >= 1,
        "an int >= 1",
    ),
    "crop": _Key(
        "auto",
        "Training crop. 'inception': random-resized crop (area 8-100%, aspect 3/4-4/3) fused "
        "into JPEG decoding. 'resize_crop': ChainerMN style, resize to image_size/eval_crop_ratio "
        "square (256 for 224) and take a random image_size crop. 'auto': resize_crop for digits, "
        "inception otherwise.",
        _one_of(*CROP_MODES),
        " | ".join(map(repr, CROP_MODES)),
    ),
    "crop_area_range": _Key(
        (0.08, 1.0),
        "inception crop: range of the crop's area as a fraction of the image.",
        _range_pair(0.0, 1.0),
        "(lo, hi) with 0 < lo <= hi <= 1",
    ),
    "crop_aspect_ratio_range": _Key(
        (3 / 4, 4 / 3),
        "inception crop: range of the crop's width/height.",
        _range_pair(0.0, math.inf),
        "(lo, hi) with 0 < lo <= hi",
    ),
    "decode_and_crop": _Key(
        True,
        "inception crop: crop while decoding JPEGs (tf.image.decode_and_crop_jpeg) so the full "
        "image is never decoded. False decodes fully, then crops (identical pixels except "
        "along the crop border, where libjpeg's chroma upsampling sees other neighbours).",
        lambda x: isinstance(x, bool),
        "True | False",
    ),
    "decode_min_side": _Key(
        0,
        "inception crop of JPEGs in training: 0 decodes at full resolution. N > 0 decodes each "
        "JPEG at the smallest DCT scale (1/2, 1/4 or 1/8, libjpeg's scaled decoding) whose "
        "shorter side stays >= N pixels, as from a copy pre-resized to that shorter side: the "
        "same crop window, fewer pixels decoded, then resized to image_size (a crop smaller "
        "than image_size after scaling is upsampled: less detail). Evaluation decodes fully.",
        lambda x: _is_int(x) and x >= 0,
        "0 (full resolution) or an int >= 1",
    ),
    "host_size": _Key(
        0,
        "inception crop in training: 0 resizes each crop to image_size on the host. N > 0 "
        "(below image_size) resizes it to N x N on the host, which sends that in the wire "
        "dtype; the devices resize the batch to image_size (bilinear, rounded like the host) "
        "right after the transfer. The host resizes and sends (N / image_size)^2 of the "
        "pixels; a crop keeps at most N pixels of detail per side, which loses nothing on "
        "images stored with a shorter side near N. Evaluation is unchanged.",
        lambda x: _is_int(x) and x >= 0,
        "0 (resize on the host) or an int >= 1",
    ),
    "random_flip": _Key(
        "auto",
        "Random horizontal flip in training. 'auto': on, except for digits (not mirror symmetric).",
        lambda x: isinstance(x, bool) or x == "auto",
        "True | False | 'auto'",
    ),
    "eval_crop_ratio": _Key(
        0.875,
        "Evaluation: resize the shorter side to image_size / ratio (256 for 224), center-crop "
        "image_size. Also sets resize_crop's resize size.",
        lambda x: _is_number(x) and 0 < x <= 1,
        "a float in (0, 1]",
    ),
    "dtype": _Key(
        "uint8",
        "Dtype the images travel in from the host to the devices: pixels on the 0..255 scale, "
        "normalized by the model on the device. 'uint8' (rounded after resizing) moves a "
        "quarter of float32's bytes; 'bfloat16' and 'float32' keep the resized values.",
        _one_of(*DTYPES),
        " | ".join(map(repr, DTYPES)),
    ),
    # --- tf.data performance -------------------------------------------------------------------
    "shuffle_buffer": _Key(
        10_000,
        "imagenet2012 with file_format='tfrecord' only: shuffle buffer of encoded records "
        "(~110 KB each, so ~1 GB) on top of file shuffling. Random-access sources (ArrayRecord, "
        "image_folder, digits) draw a full permutation per epoch and need no buffer.",
        lambda x: _is_int(x) and x >= 1,
        "an int >= 1",
    ),
    "num_parallel_calls": _Key(
        -1,
        "Parallelism of the decode/augment map; -1 = tf.data.AUTOTUNE.",
        lambda x: _is_int(x) and (x == -1 or x >= 1),
        "-1 (AUTOTUNE) or an int >= 1",
    ),
    "private_threadpool_size": _Key(
        0,
        "Threads of a private tf.data pool for this pipeline; 0 = TF's shared pool (default).",
        lambda x: _is_int(x) and x >= 0,
        "an int >= 0",
    ),
    "cache": _Key(
        "auto",
        "image_folder: keep decoded images in host memory after the first pass. 'auto': when "
        "the split's decoded size (estimated from a sample of headers) fits cache_max_bytes. "
        "digits is always in memory; imagenet2012 is never cached.",
        lambda x: isinstance(x, bool) or x == "auto",
        "True | False | 'auto'",
    ),
    "cache_max_bytes": _Key(
        1 << 30,
        "Upper bound of decoded bytes that cache='auto' keeps in memory.",
        lambda x: _is_int(x) and x >= 0,
        "an int >= 0",
    ),
    "prefetch": _Key(
        2,
        "Batches transferred to the devices ahead of use (0 = none).",
        lambda x: _is_int(x) and x >= 0,
        "an int >= 0",
    ),
    "skip_corrupt": _Key(
        False,
        "False: an unreadable/corrupt image stops the run with its path. True: skip it, log "
        "it and count it (iterator.num_skipped).",
        lambda x: isinstance(x, bool),
        "True | False",
    ),
}


def _folder_needs_data_dir(cfg: Mapping[str, Any]) -> str | None:
    if cfg["name"] == "image_folder" and not cfg["data_dir"]:
        return (
            "config.data.data_dir is required for name='image_folder': the root that holds "
            "train/<class>/*.jpg and val/<class>/*.jpg (python -m lmsgd.data.prepare cifar10 "
            "prepares CIFAR-10 in that layout)"
        )
    return None


def _host_size_rule(cfg: Mapping[str, Any]) -> str | None:
    size = cfg["host_size"]
    if not size:
        return None
    if size >= cfg["image_size"]:
        return (
            f"config.data.host_size={size} needs a smaller value than "
            f"image_size={cfg['image_size']} (0 resizes on the host)"
        )
    if cfg["name"] == "synthetic" or effective_crop(cfg) != "inception":
        return (
            f"config.data.host_size={size} needs the inception crop of an image dataset; "
            f"name={cfg['name']!r}, crop={cfg['crop']!r} does not use it: set host_size=0"
        )
    return None


# type_safe=False: keys such as `cache` legitimately switch between 'auto' and a bool.
DATA = Section("data", _KEYS, rules=(_folder_needs_data_dir, _host_size_rule), type_safe=False)
DATA_CONFIG_DOCS: dict[str, str] = {k: v.doc for k, v in _KEYS.items()}


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults of every ``config.data`` key (the built-in digits dataset at 32x32)."""
    return DATA.defaults()


def validate_data_config(cfg: Mapping[str, Any]) -> None:
    """Raises ConfigError (a ValueError) naming the first bad key/value and what is allowed."""
    DATA.validate(cfg)


def resolve(cfg: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Validated copy of ``cfg`` (a complete config.data section)."""
    cfg = ml_collections.ConfigDict(dict(cfg), type_safe=False)
    DATA.normalize(cfg)
    validate_data_config(cfg)
    return cfg


def effective_crop(cfg: Mapping[str, Any]) -> str:
    """'inception' or 'resize_crop' after resolving 'auto'."""
    if cfg["crop"] != "auto":
        return cfg["crop"]
    return "resize_crop" if cfg["name"] == "digits" else "inception"


def effective_flip(cfg: Mapping[str, Any]) -> bool:
    """Whether training flips horizontally, after resolving 'auto'."""
    if cfg["random_flip"] != "auto":
        return bool(cfg["random_flip"])
    return cfg["name"] != "digits"
