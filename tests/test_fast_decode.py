"""config.data.decode_min_side: JPEGs decoded at a reduced DCT scale in training.

Compared with the default path (full-resolution fused decode-and-crop) on real photographs
(scikit-image's): the same examples in the same order, the same crop windows (per-image
colour statistics agree), uint8 batches of the same shape.
"""

import numpy as np
import pytest
from PIL import Image

import lmsgd.data as data

pytest.importorskip("tensorflow")
skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    """8 train / 2 val JPEGs, 400x320 crops of two photographs, quality 90."""
    root = tmp_path_factory.mktemp("photos")
    photos = [skdata.astronaut(), skdata.coffee()]
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for i in range(n):
            photo = photos[i % 2]
            y, x = rng.integers(0, photo.shape[0] - 320), rng.integers(0, photo.shape[1] - 400)
            d = root / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(photo[y : y + 320, x : x + 400])
            img.save(d / f"{i}.jpg", quality=90)
    return root


def batches(root, steps=2, **kw):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size, cfg.cache = "image_folder", str(root), 48, False
    for k, v in kw.items():
        cfg[k] = v
    it = data.train_batches(cfg, global_batch_size=4, seed=5, sharding=None)
    return [next(it) for _ in range(steps)]


def test_dct_scaled_decode_keeps_order_shape_and_crops(photo_root):
    ref = batches(photo_root)
    fast = batches(photo_root, decode_min_side=100)  # 320 -> 160 at 1/2; 80 < 100 at 1/4
    for r, f in zip(ref, fast, strict=True):
        assert f["image"].dtype == r["image"].dtype == np.uint8
        assert f["image"].shape == r["image"].shape == (4, 48, 48, 3)
        np.testing.assert_array_equal(f["label"], r["label"])  # same examples, same order
    ref_x = np.concatenate([b["image"] for b in ref]).astype(np.float32)
    fast_x = np.concatenate([b["image"] for b in fast]).astype(np.float32)
    assert not np.array_equal(ref_x, fast_x)  # another decode really ran
    # Same window of the same image: per-image colour means within a few levels, spreads
    # within 10% (the scaled decode loses fine detail only).
    mean_r, mean_f = ref_x.mean(axis=(1, 2)), fast_x.mean(axis=(1, 2))
    assert np.abs(mean_f - mean_r).max() < 3, np.abs(mean_f - mean_r).max()
    std_r, std_f = ref_x.std(axis=(1, 2, 3)), fast_x.std(axis=(1, 2, 3))
    assert np.all(np.abs(std_f / std_r - 1) < 0.1), std_f / std_r
    assert np.abs(fast_x - ref_x).mean() < 8
    # Another image's crop is far off: the comparison can fail.
    assert np.abs(np.roll(mean_f, 1, axis=0) - mean_r).max() > 10


def test_min_side_larger_than_image_is_full_resolution(photo_root):
    """No scale keeps a 320 px side >= 400: the image is decoded at full size, as by the
    default path, pixel for pixel."""
    ref = batches(photo_root, steps=1)[0]
    full = batches(photo_root, steps=1, decode_min_side=400)[0]
    np.testing.assert_array_equal(full["image"], ref["image"])
