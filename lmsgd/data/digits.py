"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes; no download).

Images are stored as uint8 [N, 8, 8, 3] (grey repeated over 3 channels, 0..16 scaled to
0..255); the pipeline resizes them to config.data.image_size. The train/validation split is
fixed: stratified, seed 0, ``digits_validation_fraction`` held out.

Normalization uses the digits' own statistics (mean/std of the training pixels on the 0..255
scale, one value for all channels) rather than ImageNet's: most pixels are background 0, so
ImageNet's numbers would leave the inputs far from zero mean / unit variance.
"""

from __future__ import annotations

import functools

import numpy as np

NUM_CLASSES = 10


@functools.lru_cache(maxsize=4)
def load_digits_split(validation_fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images, labels), 'eval': (images, labels)}; uint8 [N,8,8,3], int32 [N]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = data.target.astype(np.int32)
    idx_train, idx_eval = train_test_split(
        np.arange(len(labels)), test_size=validation_fraction, random_state=0, stratify=labels
    )
    # Sorted: the stored order is the original order, independent of the splitter's shuffle.
    idx_train, idx_eval = np.sort(idx_train), np.sort(idx_eval)
    return {
        "train": (images[idx_train], labels[idx_train]),
        "eval": (images[idx_eval], labels[idx_eval]),
    }


def digits_mean_std(validation_fraction: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (identical) mean and std of the training pixels, 0..255 scale."""
    images, _ = load_digits_split(validation_fraction)["train"]
    mean, std = float(images.mean()), float(images.std())
    return (mean,) * 3, (std,) * 3
