"""config.data.decode_min_side: JPEGs decoded at a reduced DCT scale in training;
config.data.host_size: the host sends smaller crops, the devices resize them.

Compared with the default path (full-resolution fused decode-and-crop) on real photographs
(scikit-image's): the same examples in the same order, the same crop windows (per-image
colour statistics agree), uint8 batches of the same shape.
"""

import jax
import numpy as np
import pytest
from PIL import Image

import lmsgd.data as data
from lmsgd.data.pipeline import device_resize

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


def batches(root, steps=2, sharding=None, **kw):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size, cfg.cache = "image_folder", str(root), 48, False
    for k, v in kw.items():
        cfg[k] = v
    it = data.train_batches(cfg, global_batch_size=4, seed=5, sharding=sharding)
    return [jax.tree.map(np.asarray, next(it)) for _ in range(steps)]


def data_sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))  # 1 example each
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


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


@pytest.mark.parametrize("cache", [False, True])
def test_host_size_sends_small_crops_that_the_devices_resize(photo_root, cache):
    """host_size=24 at image_size 48: the host's batches are 24 px crops of the same windows
    (same examples, same order); on the devices they are 48 px again, close to the
    reference path's crops (two bilinear resizes instead of one: a little detail lost)."""
    ref = batches(photo_root, cache=cache, sharding=data_sharding())
    host = batches(photo_root, cache=cache, host_size=24)
    dev = batches(photo_root, cache=cache, host_size=24, sharding=data_sharding())
    for r, h, d in zip(ref, host, dev, strict=True):
        assert h["image"].shape == (4, 24, 24, 3) and h["image"].dtype == np.uint8
        assert d["image"].shape == r["image"].shape == (4, 48, 48, 3)
        assert d["image"].dtype == r["image"].dtype == np.uint8
        np.testing.assert_array_equal(h["label"], r["label"])  # same examples, same order
        np.testing.assert_array_equal(d["label"], r["label"])
    ref_x = np.concatenate([b["image"] for b in ref]).astype(np.float32)
    dev_x = np.concatenate([b["image"] for b in dev]).astype(np.float32)
    host_x = np.concatenate([b["image"] for b in host]).astype(np.float32)
    assert not np.array_equal(ref_x, dev_x)
    # Same window, same flip: per-image colour means within a few levels (also of the
    # host's small crops), spreads within 15% (detail above 24 px per side is lost).
    mean_r, mean_d = ref_x.mean(axis=(1, 2)), dev_x.mean(axis=(1, 2))
    assert np.abs(mean_d - mean_r).max() < 3, np.abs(mean_d - mean_r).max()
    assert np.abs(host_x.mean(axis=(1, 2)) - mean_r).max() < 3
    std_r, std_d = ref_x.std(axis=(1, 2, 3)), dev_x.std(axis=(1, 2, 3))
    assert np.all(np.abs(std_d / std_r - 1) < 0.15), std_d / std_r
    # Pixel for pixel: far closer than another example's crop (a 24 px crop of a 320 px
    # photograph drops most of its detail, so not close in absolute terms).
    other = np.abs(np.roll(dev_x, 1, axis=0) - ref_x).mean()
    assert np.abs(dev_x - ref_x).mean() < 0.5 * other, (np.abs(dev_x - ref_x).mean(), other)
    # Left and right halves agree too: the flip is the reference's.
    half_r, half_d = ref_x[:, :, :24].mean(axis=(1, 2)), dev_x[:, :, :24].mean(axis=(1, 2))
    assert np.abs(half_d - half_r).max() < 6
    assert np.abs(np.roll(mean_d, 1, axis=0) - mean_r).max() > 10  # the test can fail


def test_device_resize_matches_the_hosts_bilinear_resize():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 20, 24, 3)).astype(np.uint8)
    want = tf.saturate_cast(tf.round(tf.image.resize(x, [48, 48], method="bilinear")), tf.uint8)
    got = np.asarray(device_resize(x, 48))
    assert got.dtype == np.uint8 and got.shape == (2, 48, 48, 3)
    diff = np.abs(got.astype(int) - want.numpy().astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
    f = np.asarray(device_resize(x.astype(np.float32), 48))
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, tf.image.resize(x, [48, 48]).numpy(), atol=1e-3)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"host_size": 48}, "needs a smaller value than image_size=48"),
        ({"host_size": 24, "crop": "resize_crop"}, "needs the inception crop"),
        ({"host_size": -1}, "host_size"),
    ],
)
def test_host_size_validation(overrides, match):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size = "image_folder", "/data", 48
    for k, v in overrides.items():
        cfg[k] = v
    with pytest.raises(ValueError, match=match):
        data.validate_data_config(cfg)
