"""Helpers shared by the data tests (no tests here): tiny image folders written with PIL."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

# Solid grey images: level 5 + 7 * id survives JPEG, crops, flips and resizes, so the
# example id can be read back from any preprocessed image.
LEVEL0, LEVEL_STEP = 5, 7
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


def write_solid_folder(root: pathlib.Path, counts: dict[str, list[int]]) -> pathlib.Path:
    """root/<split>/class_<k>/: counts[split][k] solid images; ids numbered per split."""
    for split, per_class in counts.items():
        i = 0
        for k, n in enumerate(per_class):
            d = root / split / f"class_{k}"
            d.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                level = LEVEL0 + LEVEL_STEP * i
                img = np.full((20 + i % 5, 24, 3), level, np.uint8)
                ext = "png" if i % 3 == 0 else "jpg"
                Image.fromarray(img).save(d / f"img_{i:03d}.{ext}", quality=95)
                i += 1
    return root


def ids_from_images(images: np.ndarray) -> np.ndarray:
    """Normalized solid images [B, H, W, 3] -> example ids [B]."""
    pixels = np.asarray(images, np.float32) * IMAGENET_STD + IMAGENET_MEAN
    level = pixels.reshape(len(pixels), -1).mean(axis=1)
    return np.round((level - LEVEL0) / LEVEL_STEP).astype(int)


def write_noise_folder(root: pathlib.Path, per_class=(5, 4, 6), val_per_class=(2, 2, 2)):
    """Random-noise JPEGs/PNGs of varied sizes in root/{train,val}/c<k>/."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", per_class), ("val", val_per_class)):
        for k, n in enumerate(counts):
            d = root / split / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(24, 60, size=2)
                img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ext = "png" if i == 0 else "JPEG"
                Image.fromarray(img).save(d / f"{i}.{ext}", quality=90)
    return root


def walk_labels(split_dir: pathlib.Path) -> list[tuple[str, int]]:
    """Plain-Python reference: (path, label) sorted by class folder, then file name."""
    out = []
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    for label, name in enumerate(classes):
        for f in sorted(os.listdir(split_dir / name)):
            out.append((str(split_dir / name / f), label))
    return out
