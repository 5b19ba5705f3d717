"""The shared CIFAR-10 JPEG folders (real data), when present; skipped otherwise.

Unpacked once into a cache directory ($LMSGD_CACHE_DIR or ~/.cache/lmsgd), never into the
repository. Only a few images are decoded here, to keep the test fast.
"""

import os

import numpy as np
import pytest
from PIL import Image

import lmsgd.data as data
from lmsgd.data.prepare import cifar10_root

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="module")
def cifar_root(shared_data_dir):
    return cifar10_root(shared_data_dir / "cifar10-jpeg.tar.gz")


def test_cifar_counts(cifar_root):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.cache = "image_folder", str(cifar_root), False
    info = data.get_dataset_info(cfg)
    walk = {s: sum(len(f) for _, _, f in os.walk(cifar_root / s)) for s in ("train", "test")}
    assert (info.num_train_examples, info.num_eval_examples) == (walk["train"], walk["test"])
    assert (info.num_train_examples, info.num_eval_examples) == (50_000, 10_000)
    assert info.class_names == CLASSES and info.num_classes == 10


def test_cifar_first_batches(cifar_root):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.cache = "image_folder", str(cifar_root), False
    cfg.image_size, cfg.eval_crop_ratio = 32, 1.0  # eval image = the decoded file
    b = next(iter(data.eval_batches(cfg, global_batch_size=8, sharding=None)))
    first = sorted((cifar_root / "test" / "airplane").iterdir())[:8]
    ref = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in first])
    assert b["image"].dtype == np.uint8  # pixels; the model normalizes them on the device
    got = b["image"].astype(np.float32)
    # PIL and TF both use libjpeg but differ in IDCT/upsampling rounding (1-3 levels).
    assert np.abs(got - ref).mean() < 2.0
    assert np.abs(got - np.roll(ref, 1, axis=0)).mean() > 10  # another image is far off
    assert list(b["label"]) == [0] * 8 and b["mask"].sum() == 8
    tr = next(data.train_batches(cfg, global_batch_size=16, seed=0, sharding=None))
    assert tr["image"].shape == (16, 32, 32, 3) and len(set(tr["label"].tolist())) > 1
