"""Image decoding and augmentation as TF graph ops (one example at a time, inside tf.data.map).

All randomness is stateless: every random op takes a seed tensor derived from
(seed, epoch, example index) by :func:`example_seed`, so an example gets the same crop and
flip in an uninterrupted and in a resumed run, whatever the number of processes.

Inputs are either encoded bytes (JPEG/PNG/GIF/BMP; JPEGs take the fused decode-and-crop
path) or an already decoded uint8 [h, w, 3] image (digits, cached folders). Outputs are
[S, S, 3] pixels on the 0..255 scale in the wire dtype (uint8 by default, rounded after
resizing): the model normalizes them on the device (``lmsgd.models.resnet.normalize_input``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lmsgd.data._tf import tf
from lmsgd.data.config import IMAGENET_MEAN as IMAGENET_MEAN
from lmsgd.data.config import IMAGENET_STD as IMAGENET_STD

# A crop window: (offset_y, offset_x, height, width) as int32 scalars.
Window = tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]


def example_seed(seed: tf.Tensor, epoch: tf.Tensor, index: tf.Tensor, stream: int) -> tf.Tensor:
    """A [2] int64 seed for stateless ops, unique per (seed, epoch, example index, stream)."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    key = tf.random.experimental.stateless_fold_in(base, tf.constant(stream, tf.int64))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))


# The reduced sizes libjpeg decodes at (DCT scaling): 1/1, 1/2, 1/4, 1/8.
DCT_SCALES = (1, 2, 4, 8)


def _scaled_decode(
    image: tf.Tensor, shape: tf.Tensor, window: Window, min_side: int, fused: bool
) -> tf.Tensor:
    """The window of a JPEG decoded at the smallest DCT scale 1/N (N in DCT_SCALES) whose
    shorter side is still >= ``min_side`` (N = 1 when none is): the window covers the same
    part of the image, in the scaled image's pixels (ceil(H / N) x ceil(W / N))."""
    oy, ox, h, w = window
    short = tf.minimum(shape[0], shape[1])
    # ceil(short / N) falls with N: the count of N > 1 that keep min_side picks the largest.
    branch = tf.add_n([tf.cast((short + n - 1) // n >= min_side, tf.int32) for n in DCT_SCALES[1:]])

    def decode(n: int) -> Callable[[], tf.Tensor]:
        def fn() -> tf.Tensor:
            hs, ws = (shape[0] + n - 1) // n, (shape[1] + n - 1) // n
            y0, x0 = oy // n, ox // n
            y1 = tf.minimum((oy + h + n - 1) // n, hs)
            x1 = tf.minimum((ox + w + n - 1) // n, ws)
            hh, ww = tf.maximum(y1 - y0, 1), tf.maximum(x1 - x0, 1)
            if fused:
                crop = tf.stack([y0, x0, hh, ww])
                return tf.io.decode_and_crop_jpeg(image, crop, channels=3, ratio=n)
            full = tf.io.decode_jpeg(image, channels=3, ratio=n)
            return full[y0 : y0 + hh, x0 : x0 + ww, :]

        return fn

    return tf.switch_case(branch, [decode(n) for n in DCT_SCALES])


def _decode_window(
    image: tf.Tensor, window_fn: Callable[[tf.Tensor], Window], fused: bool, min_side: int = 0
) -> tf.Tensor:
    """Crop ``window_fn(shape)`` out of ``image`` (encoded string or decoded uint8 array);
    ``min_side`` > 0 decodes JPEGs at a reduced DCT scale (:func:`_scaled_decode`)."""
    if image.dtype != tf.string:  # Already decoded.
        oy, ox, h, w = window_fn(tf.shape(image))
        return image[oy : oy + h, ox : ox + w, :]

    def jpeg() -> tf.Tensor:
        # The JPEG header gives the size without decoding the pixels.
        shape = tf.io.extract_jpeg_shape(image)
        oy, ox, h, w = window_fn(shape)
        if min_side:
            return _scaled_decode(image, shape, (oy, ox, h, w), min_side, fused)
        if fused:
            return tf.io.decode_and_crop_jpeg(image, tf.stack([oy, ox, h, w]), channels=3)
        full = tf.io.decode_jpeg(image, channels=3)
        return full[oy : oy + h, ox : ox + w, :]

    def other() -> tf.Tensor:  # PNG, GIF, BMP: no partial decoding available.
        full = decode_full(image)
        oy, ox, h, w = window_fn(tf.shape(full))
        return full[oy : oy + h, ox : ox + w, :]

    out = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    out.set_shape([None, None, 3])
    return out


def decode_full(image: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (or a decoded array, passed through) -> uint8 [h, w, 3]."""
    if image.dtype != tf.string:
        return image
    out = tf.io.decode_image(image, channels=3, expand_animations=False, dtype=tf.uint8)
    out.set_shape([None, None, 3])
    return out


def inception_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    *,
    area_range: Sequence[float] = (0.08, 1.0),
    aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3),
    fused: bool = True,
    min_side: int = 0,
) -> tf.Tensor:
    """Inception random-resized crop: random area/aspect window, resized to [size, size, 3].

    With ``fused`` and a JPEG input only the window is decoded (decode_and_crop_jpeg). With
    ``min_side`` > 0 a JPEG is decoded at the smallest DCT scale 1/N (N = 1, 2, 4, 8) whose
    shorter side stays >= min_side: the same window (drawn on the full image), fewer pixels
    decoded, then resized to ``size``. Returns float32 in 0..255.
    """

    def window(shape: tf.Tensor) -> Window:
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
            seed=seed,
            min_object_covered=0.1,
            aspect_ratio_range=tuple(aspect_ratio_range),
            area_range=tuple(area_range),
            max_attempts=10,
            # After 10 failed attempts it returns the whole image, which is then resized.
            use_image_if_no_bounding_boxes=True,
        )
        return begin[0], begin[1], extent[0], extent[1]

    crop = _decode_window(image, window, fused, min_side)
    return tf.image.resize(crop, [size, size], method="bilinear")


def resize_random_crop(image: tf.Tensor, seed: tf.Tensor, size: int, ratio: float) -> tf.Tensor:
    """ChainerMN-style: resize the image to a square of size/ratio (256 for 224), random crop.

    The ChainerMN ImageNet example reads images pre-resized to 256x256 (aspect ratio not
    kept) and crops 224 at a uniformly random offset; this reproduces that. float32 0..255.
    """
    big = int(round(size / ratio))
    full = tf.image.resize(decode_full(image), [big, big], method="bilinear")
    offsets = tf.random.stateless_uniform([2], seed, 0, big - size + 1, dtype=tf.int32)
    return full[offsets[0] : offsets[0] + size, offsets[1] : offsets[1] + size, :]


def center_crop_eval(image: tf.Tensor, size: int, ratio: float) -> tf.Tensor:
    """Evaluation: resize the shorter side to size/ratio keeping aspect, center-crop size.

    float32 0..255, [size, size, 3].
    """
    full = decode_full(image)
    shape = tf.cast(tf.shape(full)[:2], tf.float32)
    short = int(round(size / ratio))
    scale = short / tf.reduce_min(shape)
    # Round, and never go below the crop size (guards against float rounding down).
    new_hw = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    resized = tf.image.resize(full, new_hw, method="bilinear")
    oy = (new_hw[0] - size) // 2
    ox = (new_hw[1] - size) // 2
    return resized[oy : oy + size, ox : ox + size, :]


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Flip left-right with probability 1/2, decided by ``seed``."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)


def to_wire(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """float32 pixels (0..255) -> ``dtype``: uint8 rounds to the nearest level (saturating);
    bfloat16 and float32 keep the resized values."""
    if dtype == tf.uint8:
        return tf.saturate_cast(tf.round(image), tf.uint8)
    return tf.cast(image, dtype)


def train_preprocess(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    crop: str,
    flip: bool,
    ratio: float,
    area_range: Sequence[float],
    aspect_ratio_range: Sequence[float],
    fused: bool,
    dtype: tf.DType,
    min_side: int = 0,
) -> tf.Tensor:
    """One training example: crop ('inception' | 'resize_crop'), flip, in ``dtype``;
    ``min_side``: see :func:`inception_crop`."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if crop == "inception":
        out = inception_crop(
            image,
            crop_seed,
            size,
            area_range=area_range,
            aspect_ratio_range=aspect_ratio_range,
            fused=fused,
            min_side=min_side,
        )
    elif crop == "resize_crop":
        out = resize_random_crop(image, crop_seed, size, ratio)
    else:
        raise ValueError(f"crop={crop!r}; allowed: 'inception' | 'resize_crop'")
    out.set_shape([size, size, 3])
    out = to_wire(out, dtype)
    # Flipping commutes with the rounding: done on the wire dtype (uint8: a quarter of the
    # bytes of float32), the pixels are the same.
    return random_flip(out, flip_seed) if flip else out


def eval_preprocess(image: tf.Tensor, *, size: int, ratio: float, dtype: tf.DType) -> tf.Tensor:
    """One evaluation example: resize shorter side, center crop, in ``dtype``."""
    out = center_crop_eval(image, size, ratio)
    out.set_shape([size, size, 3])
    return to_wire(out, dtype)
