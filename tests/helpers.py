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
    """Solid images [B, H, W, 3] as the pipelines send them (pixels) -> example ids [B]."""
    pixels = np.asarray(images, np.float32)
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


# --- a miniature ILSVRC2012 in the real layouts (tests/test_imagenet.py) ------------------

# TFDS labels the validation tar by position: the k-th of its sorted file names gets line k of
# validation_labels.txt. So the miniature holds the first MINI_VAL validation images (all
# labels then right); 33 is the first count whose synsets include one of the train set's
# CMYK JPEGs (n02077923_14822.JPEG), and they include the PNG's (n02105855_2933.JPEG).
MINI_VAL = 33
MINI_CMYK = "n02077923_14822.JPEG"
MINI_PNG = "n02105855_2933.JPEG"


def _tar_add(tar, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _photo(rng, kind: str = "JPEG") -> bytes:
    import io

    h, w = (int(x) for x in rng.integers(40, 72, size=2))
    base = rng.integers(0, 256, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    img = (base + 60 * np.sin(np.stack([yy, xx, yy + xx], -1) / rng.uniform(3, 9))) % 256
    out = io.BytesIO()
    if kind == "CMYK":
        Image.fromarray(img.astype(np.uint8)).convert("CMYK").save(out, "JPEG", quality=90)
    else:
        Image.fromarray(img.astype(np.uint8)).save(out, kind, quality=90)
    return out.getvalue()


def write_mini_ilsvrc(manual_dir: pathlib.Path, per_synset: int = 2) -> dict:
    """ILSVRC2012_img_train.tar (per-synset tars of `<synset>_<n>.JPEG`, one CMYK JPEG and one
    PNG named .JPEG among them) and ILSVRC2012_img_val.tar (flat, ILSVRC2012_val_%08d.JPEG,
    the first MINI_VAL) in `manual_dir`. Returns {'synsets', 'val_labels', 'train': count}."""
    import io
    import tarfile

    import tensorflow_datasets as tfds

    root = tfds.core.tfds_path("datasets/imagenet2012")
    val_labels = (root / "validation_labels.txt").read_text().split()[:MINI_VAL]
    synsets = sorted(set(val_labels))
    special = {MINI_CMYK: "CMYK", MINI_PNG: "PNG"}
    rng = np.random.default_rng(0)
    manual_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(manual_dir / "ILSVRC2012_img_train.tar", "w") as outer:
        for synset in synsets:
            names = [f"{synset}_{100 + i}.JPEG" for i in range(per_synset)]
            names = [n for n in special if n.startswith(synset)] + names
            names = names[:per_synset]
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for name in names:
                    _tar_add(inner, name, _photo(rng, special.get(name, "JPEG")))
                    count += 1
            _tar_add(outer, f"{synset}.tar", buf.getvalue())
    with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w") as tar:
        for k in range(1, MINI_VAL + 1):
            _tar_add(tar, f"ILSVRC2012_val_{k:08d}.JPEG", _photo(rng))
    return {"synsets": synsets, "val_labels": val_labels, "train": count}
