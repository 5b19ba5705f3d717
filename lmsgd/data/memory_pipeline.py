"""The digits pipeline on numpy: in-memory images, resize-and-crop, no TensorFlow.

It keeps the contract of the tf.data pipelines (:mod:`lmsgd.data.pipeline`): an epoch is a
permutation drawn from (seed, epoch), cut into global batches with the layout of
:mod:`lmsgd.data.sharding`; a crop offset and a flip are functions of (seed, epoch, example
index), so a resumed run and any number of processes see the batches of an uninterrupted
one. Resizing is bilinear with half-pixel centres and no antialiasing, as
``tf.image.resize(..., 'bilinear')``, done once per split (the digits are 8x8: 1,797 images).
Batches carry pixels in the wire dtype (uint8 by default, rounded after resizing, as the
tf.data pipelines): the model normalizes them on the device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np

from lmsgd.data import config, sources
from lmsgd.data import sharding as shard_lib

# Independent random streams per (seed, epoch).
_ORDER, _CROP, _FLIP = 0, 1, 2


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([stream, epoch, seed % (1 << 64)]))


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64 weights of 1-D bilinear resizing with half-pixel centres.

    Output pixel i samples input coordinate (i + 0.5) * n_in / n_out - 0.5, clamped to the
    edge pixels, as TensorFlow's bilinear resize without antialiasing does.
    """
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    weights = np.zeros((n_out, n_in), np.float64)
    np.add.at(weights, (np.arange(n_out), lo), 1 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 or float [N, h, w, C] -> float32 [N, height, width, C], bilinear.

    One matrix product per (image, channel), in float64: equal channels (grey digits) stay
    bitwise equal after rounding to float32, whatever order BLAS sums in.
    """
    wy = resize_matrix(images.shape[1], height)
    wx = resize_matrix(images.shape[2], width)
    planes = images.astype(np.float64).transpose(0, 3, 1, 2)  # [N, C, h, w]
    out = wy @ planes @ wx.T
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1), dtype=np.float32)


def to_wire(images: np.ndarray, dtype: str) -> np.ndarray:
    """float pixels (0..255) -> ``dtype``: uint8 rounds half to even (as ``tf.round``) and
    saturates; bfloat16 and float32 keep the values."""
    if dtype == "uint8":
        return np.clip(np.round(images), 0, 255).astype(np.uint8)
    return images.astype(jnp.bfloat16 if dtype == "bfloat16" else np.float32)


def eval_images(images: np.ndarray, size: int, ratio: float) -> np.ndarray:
    """Shorter side resized to size / ratio keeping the aspect, centre crop: float32
    [N, size, size, 3] (all images of a split share one shape)."""
    h, w = images.shape[1:3]
    scale = round(size / ratio) / min(h, w)
    new_h, new_w = (max(int(np.round(d * scale)), size) for d in (h, w))
    oy, ox = (new_h - size) // 2, (new_w - size) // 2
    return resize(images, new_h, new_w)[:, oy : oy + size, ox : ox + size, :]


def epoch_order(
    num_examples: int,
    seed: int,
    epoch: int,
    steps: int,
    process_index: int,
    process_count: int,
    local_batch: int,
) -> np.ndarray:
    """[steps, local_batch] example indices this process reads in ``epoch``, step by step:
    the epoch's permutation cut into ``steps`` global batches, this process's rows of each."""
    perm = _rng(seed, epoch, _ORDER).permutation(num_examples)
    grid = perm[: steps * process_count * local_batch].reshape(steps, process_count, local_batch)
    return grid[:, process_index, :]


def train_stream(
    cfg, src: sources.Source, *, seed, start_epoch, start_step, steps, p, n_proc, b
) -> Iterator[dict]:
    """This process's training batches {'image', 'label'} forever from (start_epoch,
    start_step): ChainerMN's resize to size/ratio square and random size crop, and a random
    flip when configured."""
    split = src.train
    size = cfg.image_size
    big = int(round(size / cfg.eval_crop_ratio))
    # Resized once, in the wire dtype; crops and flips are slices of it.
    resized = to_wire(resize(split.images, big, big), cfg.dtype)
    windows = np.lib.stride_tricks.sliding_window_view(resized, (size, size), axis=(1, 2))
    flip = config.effective_flip(cfg)
    n = len(split)
    for epoch in itertools.count(start_epoch):
        order = epoch_order(n, seed, epoch, steps, p, n_proc, b)
        offsets = _rng(seed, epoch, _CROP).integers(0, big - size + 1, size=(n, 2))
        flips = _rng(seed, epoch, _FLIP).random(n) < 0.5
        for step in range(start_step if epoch == start_epoch else 0, steps):
            idx = order[step]
            crops = windows[idx, offsets[idx, 0], offsets[idx, 1]]  # [b, 3, size, size]
            crops = np.moveaxis(crops, 1, -1)
            if flip:
                crops = np.where(flips[idx, None, None, None], crops[:, :, ::-1], crops)
            yield {"image": np.ascontiguousarray(crops), "label": split.labels[idx]}


def eval_stream(
    cfg, src: sources.Source, *, global_batch_size: int, p: int, n_proc: int, b: int
) -> Iterator[dict]:
    """This process's ``ceil(N / G)`` evaluation batches; ``mask`` 0 marks the padding."""
    split = src.eval
    size = cfg.image_size
    real, num_batches = shard_lib.eval_local_indices(len(split), global_batch_size, p, n_proc)
    images = eval_images(split.images, size, cfg.eval_crop_ratio)
    images = to_wire(images, cfg.dtype)
    for k in range(num_batches):
        idx = real[k * b : (k + 1) * b]
        n_real = len(idx)
        batch = {
            "image": np.zeros((b, size, size, 3), images.dtype),
            "label": np.zeros(b, np.int32),
            "mask": np.zeros(b, np.float32),
        }
        batch["image"][:n_real] = images[idx]
        batch["label"][:n_real] = split.labels[idx]
        batch["mask"][:n_real] = 1.0
        yield batch
