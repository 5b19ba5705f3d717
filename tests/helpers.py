"""What several test modules share (no tests here): tiny models, batches and configs, image
folders written with PIL, tolerances, and where the optional real data is.

Test modules import from here, never from one another.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
from PIL import Image

from lmsgd.config import base_config
from lmsgd.data.prepare import shared_data_dir
from lmsgd.models import create_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- data: tiny image folders ---------------------------------------------------------

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


# --- the sharded step: a tiny model and batches (tests/test_step.py, test_accumulation) ---

NDEV = 8
PER_DEVICE = 2
IMAGE = (8, 8, 3)
CLASSES = 10


def tiny_model(**kw):
    return create_model(
        "cifar_resnet8",
        num_classes=CLASSES,
        width_multiplier=0.25,
        zero_init_residual=False,  # so every parameter gets a gradient from step one
        **kw,
    )


def batches(num_steps, seed=0, batch=NDEV * PER_DEVICE):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_steps):
        # Per-device offsets make per-device, grouped and global statistics differ.
        offsets = np.repeat(rng.normal(0, 1, (batch // PER_DEVICE, 1, 1, 3)), PER_DEVICE, 0)
        out.append(
            {
                "image": (rng.normal(size=(batch, *IMAGE)) + offsets).astype(np.float32),
                "label": rng.integers(0, CLASSES, batch).astype(np.int32),
            }
        )
    return out


def max_rel_err(a, b):
    errs = jax.tree.map(
        lambda x, y: (
            float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            / (float(np.max(np.abs(np.asarray(y)))) + 1e-12)
        ),
        a,
        b,
    )
    return max(jax.tree.leaves(errs))


# --- the driver: a tiny run on digits (tests/test_train.py, test_driver_edges.py) ---------


def tiny_config(**overrides):
    config = base_config()
    config.num_epochs = 0.5  # ceil(0.5 * 22) = 11 steps
    config.global_batch_size = 64
    config.eval_batch_size = 64
    config.eval_every_epochs = 0.25
    config.model.name = "cifar_resnet8"
    config.model.width_multiplier = 0.25
    config.data.name = "digits"
    config.data.image_size = 8
    config.optimizer.rmsprop_warmup.beta_center = 0.2
    config.optimizer.rmsprop_warmup.beta_period = 0.2
    config.optimizer.slow_start.boundaries = (0.3, 0.4, 0.45)
    config.checkpoint.every_steps = 4
    config.checkpoint.async_save = False
    config.logging.every_steps = 2
    config.logging.tensorboard = True
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return config


# --- real data (optional) ------------------------------------------------------------------


def shared_data_path():
    """The folder holding cifar10-jpeg.tar.gz ($LMSGD_SHARED_DATA), or None where absent."""
    path = shared_data_dir()
    return path if (path / "cifar10-jpeg.tar.gz").exists() else None
