"""image_folder: counting, exact eval, process slices, resume, augmentation, bad input."""

import os

import jax
import numpy as np
import pytest
from helpers import (
    ids_from_images,
    walk_labels,
    write_noise_folder,
    write_solid_folder,
)
from PIL import Image

import lmsgd.data as data

# 18 train images, 17 val images (17 at batch 8 does not divide).
SOLID = {"train": [6, 7, 5], "val": [6, 6, 5]}


@pytest.fixture(scope="module")
def solid_root(tmp_path_factory):
    return write_solid_folder(tmp_path_factory.mktemp("solid"), SOLID)


@pytest.fixture(scope="module")
def noise_root(tmp_path_factory):
    return write_noise_folder(tmp_path_factory.mktemp("noise"))


def folder_cfg(root, **kw):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size = "image_folder", str(root), 16
    for k, v in kw.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def test_info_counts_files(solid_root):
    info = data.get_dataset_info(folder_cfg(solid_root))
    assert info.num_train_examples == len(walk_labels(solid_root / "train")) == 18
    assert info.num_eval_examples == len(walk_labels(solid_root / "val")) == 17
    assert info.num_classes == 3 and info.image_shape == (16, 16, 3)
    assert info.class_names == ("class_0", "class_1", "class_2")


@pytest.mark.parametrize("cache", [False, True])
def test_exact_eval_single_process(solid_root, sharding, cache):
    assert jax.device_count() == 8
    cfg = folder_cfg(solid_root, cache=cache)
    ref = walk_labels(solid_root / "val")  # plain loop: (path, label) in id order
    batches = list(data.eval_batches(cfg, global_batch_size=8, sharding=sharding))
    assert len(batches) == 3 == data.num_eval_batches(data.get_dataset_info(cfg), 8)
    seen, counts = [], {"top1": 0.0, "top5": 0.0, "count": 0.0}
    for b in batches:
        assert isinstance(b["image"], jax.Array) and b["image"].shape == (8, 16, 16, 3)
        assert b["image"].sharding.spec[0] == "data"
        mask = np.asarray(b["mask"])
        ids = ids_from_images(np.asarray(b["image"]))
        labels = np.asarray(b["label"])
        for i, m, lab in zip(ids, mask, labels):
            if m:
                seen.append(i)
                assert lab == ref[i][1]
        # Logits that are right for even ids only: reference top-1 = even real ids.
        logits = jax.nn.one_hot(np.where(ids % 2 == 0, labels, (labels + 1) % 3), 3)
        out = data.masked_topk_correct(logits, b["label"], b["mask"])
        for k in counts:
            counts[k] += float(out[k])
    assert sorted(seen) == list(range(17))
    assert counts["count"] == 17
    assert counts["top1"] == sum(1 for i in range(17) if i % 2 == 0)
    assert counts["top5"] == 17  # k=5 > 3 classes: everything is in the top-k


def test_processes_read_disjoint_slices(solid_root):
    cfg = folder_cfg(solid_root)
    g = 4
    steps = data.steps_per_epoch(data.get_dataset_info(cfg), g)  # 18 // 4 = 4
    per_proc = []
    for p in range(2):
        it = data.train_batches(
            cfg, global_batch_size=g, seed=3, sharding=None, process_index=p, process_count=2
        )
        per_proc.append([ids_from_images(next(it)["image"]) for _ in range(steps)])
    single = data.train_batches(cfg, global_batch_size=g, seed=3, sharding=None)
    for s in range(steps):
        a, b = per_proc[0][s], per_proc[1][s]
        assert len(a) == len(b) == 2 and not set(a) & set(b)
        # Together the two halves are exactly the single-process global batch.
        np.testing.assert_array_equal(
            np.concatenate([a, b]), ids_from_images(next(single)["image"])
        )
    epoch = np.concatenate([np.concatenate(x) for x in per_proc])
    assert len(set(epoch)) == len(epoch) == steps * g  # no repeats within an epoch
    # Eval: disjoint, and together every example exactly once.
    evals = []
    for p in range(2):
        for b in data.eval_batches(
            folder_cfg(solid_root),
            global_batch_size=8,
            sharding=None,
            process_index=p,
            process_count=2,
        ):
            assert b["image"].shape[0] == 4
            evals.append((p, ids_from_images(b["image"])[b["mask"] > 0]))
    ids0 = np.concatenate([x for p, x in evals if p == 0])
    ids1 = np.concatenate([x for p, x in evals if p == 1])
    assert not set(ids0) & set(ids1)
    assert sorted(np.concatenate([ids0, ids1])) == list(range(17))
    assert sum(1 for p, _ in evals if p == 0) == sum(1 for p, _ in evals if p == 1) == 3


def test_resume_yields_identical_batches(noise_root):
    cfg = folder_cfg(noise_root)
    g = 4
    steps = data.steps_per_epoch(data.get_dataset_info(cfg), g)  # 15 // 4 = 3
    full = data.train_batches(cfg, global_batch_size=g, seed=7, sharding=None)
    ref = [next(full) for _ in range(2 * steps + 2)]
    assert (full.epoch, full.step) == (2, 2)
    resumed = data.train_batches(
        cfg, global_batch_size=g, seed=7, sharding=None, start_epoch=1, start_step=1
    )
    assert (resumed.epoch, resumed.step) == (1, 1)
    for want in ref[steps + 1 :]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert (resumed.epoch, resumed.step) == (2, 2)
    # Each epoch is reshuffled and augmented anew; another seed gives other batches.
    assert not np.array_equal(ref[0]["image"], ref[steps]["image"])
    other = next(data.train_batches(cfg, global_batch_size=g, seed=8, sharding=None))
    assert not np.array_equal(other["image"], ref[0]["image"])
    with pytest.raises(ValueError, match="start_step=3"):
        data.train_batches(cfg, global_batch_size=g, seed=7, sharding=None, start_step=steps)


def test_train_batch_contents(noise_root, sharding):
    cfg = folder_cfg(noise_root)
    it = data.train_batches(cfg, global_batch_size=8, seed=0, sharding=sharding)
    b = next(it)
    # The sharded global batch carries uint8 pixels: the model normalizes on the device.
    assert b["image"].dtype == np.uint8 and b["image"].shape == (8, 16, 16, 3)
    assert b["label"].dtype == np.int32 and b["image"].sharding.spec[0] == "data"
    assert all(s.data.dtype == np.uint8 for s in b["image"].addressable_shards)
    x = np.asarray(b["image"], np.float32)
    # Uniform noise 0..255, resized: spread over the whole range.
    assert x.min() < 40 and x.max() > 215 and abs(x.mean() - 127.5) < 30
    cfg = folder_cfg(noise_root, dtype="bfloat16")
    bf = next(data.train_batches(cfg, global_batch_size=8, seed=0, sharding=sharding))
    assert bf["image"].dtype == jax.numpy.bfloat16
    # The same pixels, unrounded (bfloat16 holds 0..255 to within half a level above 128).
    assert np.abs(np.asarray(bf["image"], np.float32) - x).max() <= 1.0
    labels = {lab for _, lab in walk_labels(noise_root / "train")}
    assert set(np.asarray(b["label"]).tolist()) <= labels


def test_decode_and_crop_matches_decode_then_crop(noise_root):
    """Same crops either way (same stateless seeds); pixels differ only at crop borders."""
    kw = dict(global_batch_size=4, seed=1, sharding=None)
    fused = next(data.train_batches(folder_cfg(noise_root, decode_and_crop=True), **kw))
    plain = next(data.train_batches(folder_cfg(noise_root, decode_and_crop=False), **kw))
    cached = next(data.train_batches(folder_cfg(noise_root, cache=True), **kw))
    np.testing.assert_array_equal(fused["label"], plain["label"])
    np.testing.assert_array_equal(plain["image"], cached["image"])
    fused, plain = (np.asarray(x["image"], np.float32) for x in (fused, plain))
    diff = np.abs(fused - plain)
    assert diff.mean() < 3  # ~3 grey levels on average at most, vs ~50 for other crops
    assert np.abs(fused - np.roll(plain, 1, axis=0)).mean() > 15


def test_eval_preprocessing_against_pil(tmp_path):
    """Resize shorter side to 16/0.875=18 and center-crop 16, compared with PIL + numpy.

    The image is upscaled (12x18 -> 18x27), where PIL's and TF's bilinear filters agree
    (when downscaling PIL also antialiases)."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(arr).save(tmp_path / split / "a" / "x.png")
    b = next(iter(data.eval_batches(folder_cfg(tmp_path), global_batch_size=1, sharding=None)))
    assert b["image"].dtype == np.uint8
    got = b["image"][0].astype(np.float32)
    ref = np.asarray(Image.fromarray(arr).resize((27, 18), Image.BILINEAR), np.float32)
    ref = ref[1:17, 5:21]  # center 16x16 of 18x27
    assert np.abs(got - ref).mean() < 1.0  # PIL rounds to uint8
    assert np.abs(got - np.roll(ref, 1, axis=1)).mean() > 20  # a 1-px shift is caught


# --- bad input ---------------------------------------------------------------------------


def test_missing_root_and_splits(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.get_dataset_info(folder_cfg(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"train.*not found"):
        data.get_dataset_info(folder_cfg(tmp_path))  # empty root
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.get_dataset_info(folder_cfg(tmp_path))
    (tmp_path / "train" / "a").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*train/a.* holds no images"):
        data.get_dataset_info(folder_cfg(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a" / "1.png")
    with pytest.raises(FileNotFoundError, match="val/, validation/, test/"):
        data.get_dataset_info(folder_cfg(tmp_path))


def test_class_mismatch(tmp_path):
    write_solid_folder(tmp_path, {"train": [1, 1, 1], "test": [1, 1]})
    with pytest.raises(ValueError, match=r"only in train: \['class_2'\], only in eval: \[\]"):
        data.get_dataset_info(folder_cfg(tmp_path))


@pytest.fixture()
def corrupt_root(tmp_path):
    root = write_solid_folder(tmp_path, {"train": [4, 4], "val": [3, 3]})
    good = (root / "val" / "class_1" / "img_004.jpg").read_bytes()
    bad = {
        "garbage": root / "val" / "class_0" / "img_001.jpg",
        "truncated": root / "val" / "class_1" / "img_004.jpg",
        "train": root / "train" / "class_1" / "img_005.jpg",
    }
    bad["garbage"].write_bytes(b"this is not a JPEG")
    bad["truncated"].write_bytes(good[: len(good) // 3])
    bad["train"].write_bytes(b"")
    os.symlink(root / "missing.png", root / "val" / "class_1" / "zz_dangling.png")
    return root, bad


def test_corrupt_image_fails_with_path(corrupt_root):
    root, bad = corrupt_root
    with pytest.raises(ValueError, match=r"corrupt image: .*img_001\.jpg.*skip_corrupt=True"):
        list(data.eval_batches(folder_cfg(root, cache=False), global_batch_size=4, sharding=None))
    with pytest.raises(ValueError, match=r"img_005\.jpg"):
        it = data.train_batches(
            folder_cfg(root, cache=False), global_batch_size=2, seed=0, sharding=None
        )
        for _ in range(8):
            next(it)
    with pytest.raises(ValueError, match=r"3 unreadable or corrupt image file\(s\)"):
        list(data.eval_batches(folder_cfg(root, cache=True), global_batch_size=4, sharding=None))


@pytest.mark.parametrize("cache", [False, True])
def test_corrupt_image_skipped_and_counted(corrupt_root, cache):
    root, bad = corrupt_root
    cfg = folder_cfg(root, cache=cache, skip_corrupt=True)
    it = data.eval_batches(cfg, global_batch_size=4, sharding=None)
    batches = list(it)
    assert len(batches) == 2  # ceil(7 / 4): same count as without corrupt files
    ids = np.concatenate([ids_from_images(b["image"])[b["mask"] > 0] for b in batches])
    assert sorted(ids) == [0, 2, 3, 5]  # 1, 4 corrupt; 6 is the dangling link
    assert it.num_skipped == 3
    assert sorted(os.path.basename(p) for p in it.skipped) == [
        "img_001.jpg",
        "img_004.jpg",
        "zz_dangling.png",
    ]
    tr = data.train_batches(cfg, global_batch_size=2, seed=0, sharding=None)
    for _ in range(8):  # two epochs of 4 steps
        assert next(tr)["image"].shape[0] == 2
    assert tr.num_skipped >= 1 and all(p.endswith("img_005.jpg") for p in tr.skipped)
