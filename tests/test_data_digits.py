"""digits (the default dataset) and synthetic data."""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

import lmsgd.data as data


def test_digits_info_and_exact_eval():
    cfg = data.default_data_config()
    info = data.get_dataset_info(cfg)
    ref = load_digits()
    assert info.num_train_examples + info.num_eval_examples == len(ref.target) == 1797
    assert info.num_eval_examples == pytest.approx(0.2 * 1797, abs=1)
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    labels, count = [], 0
    for b in data.eval_batches(cfg, global_batch_size=64, sharding=None):
        labels.append(b["label"][b["mask"] > 0])
        count += len(b["mask"])
    labels = np.concatenate(labels)
    assert count == 64 * data.num_eval_batches(info, 64)
    assert len(labels) == info.num_eval_examples
    # Stratified split: every class is held out in proportion to its frequency.
    np.testing.assert_allclose(
        np.bincount(labels, minlength=10), np.bincount(ref.target) * 0.2, atol=1
    )


def test_digits_train_batches():
    cfg = data.default_data_config()
    it = data.train_batches(cfg, global_batch_size=128, seed=0, sharding=None)
    x = np.concatenate([next(it)["image"] for _ in range(5)])
    assert x.shape == (640, 32, 32, 3) and x.dtype == np.uint8  # pixels travel as uint8
    # The model normalizes with the digits' own statistics: roughly zero mean, unit variance.
    info = data.get_dataset_info(cfg)
    x = (x.astype(np.float32) - np.float32(info.mean[0])) / np.float32(info.std[0])
    assert abs(x.mean()) < 0.25 and 0.7 < x.std() < 1.3
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey in 3 channels
    cfg.dtype, cfg.image_size = "bfloat16", 12
    b = next(data.train_batches(cfg, global_batch_size=8, seed=0, sharding=None))
    assert b["image"].dtype == jax.numpy.bfloat16 and b["image"].shape == (8, 12, 12, 3)


def test_digits_eval_image_matches_reference():
    """At 8x8 with crop ratio 1 the eval image is the raw digit: find it in scikit-learn."""
    cfg = data.default_data_config()
    cfg.image_size, cfg.eval_crop_ratio = 8, 1.0  # no resize, no crop: raw pixels
    b = next(iter(data.eval_batches(cfg, global_batch_size=4, sharding=None)))
    from lmsgd.data.digits import digits_mean_std, load_digits_split

    images, labels = load_digits_split(0.2)["eval"]
    mean, std = digits_mean_std(0.2)
    assert b["image"].dtype == np.uint8 and (mean, std) == (
        data.get_dataset_info(cfg).mean,
        data.get_dataset_info(cfg).std,
    )
    raw = b["image"][0, :, :, 0].astype(np.float64)
    idx = np.flatnonzero(
        np.all(np.round(load_digits().images * 255 / 16) == np.round(raw)[None], axis=(1, 2))
    )
    assert len(idx) >= 1 and load_digits().target[idx[0]] == b["label"][0] == labels[0]


def test_synthetic_on_device(monkeypatch):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    cfg = data.default_data_config()
    cfg.name, cfg.image_size, cfg.num_classes = "synthetic", 16, 7
    cfg.num_train_examples, cfg.num_eval_examples = 100, 20
    info = data.get_dataset_info(cfg)
    assert (info.num_classes, info.num_train_examples, info.image_shape) == (7, 100, (16, 16, 3))
    it = data.train_batches(cfg, global_batch_size=16, seed=0, sharding=sharding)
    b = next(it)
    assert b["image"].shape == (16, 16, 16, 3) and b["image"].sharding.spec[0] == "data"
    assert b["image"].dtype == np.uint8  # pixels 0..255, normalized by the model
    assert info.mean == (127.5,) * 3 and 73 < info.std[0] < 74
    assert int(b["label"].max()) < 7
    next(it)
    assert (it.epoch, it.step) == (0, 2)
    masks = [
        np.asarray(e["mask"])
        for e in data.eval_batches(cfg, global_batch_size=16, sharding=sharding)
    ]
    assert len(masks) == 2 and sum(m.sum() for m in masks) == 20
    local = next(
        data.train_batches(
            cfg, global_batch_size=16, seed=0, sharding=None, process_index=1, process_count=2
        )
    )
    assert isinstance(local["image"], np.ndarray) and local["image"].shape[0] == 8


@pytest.mark.parametrize("size, ratio", [(32, 0.875), (12, 1.0), (6, 0.9)])
def test_digits_numpy_pipeline_matches_tf_data(size, ratio):
    """The numpy digits pipeline resizes and crops as the tf.data one does: the same eval
    images, and training crops that are windows of TensorFlow's resized image."""
    tf = pytest.importorskip("tensorflow")
    from lmsgd.data import memory_pipeline, sources, tf_pipeline

    cfg = data.default_data_config()
    cfg.image_size, cfg.eval_crop_ratio = size, ratio
    src = sources.make_source(cfg)
    kw = dict(global_batch_size=64, p=0, n_proc=1, b=64)
    ours = next(memory_pipeline.eval_stream(cfg, src, **kw))
    theirs, _ = tf_pipeline.eval_stream(cfg, src, **kw)
    theirs = next(theirs)
    # Both round the same resized values to uint8: at most a level apart at a .5 tie.
    assert ours["image"].dtype == theirs["image"].dtype == np.uint8
    diff = np.abs(ours["image"].astype(np.int32) - theirs["image"])
    assert diff.max() <= 1 and diff.mean() < 0.05
    np.testing.assert_array_equal(ours["label"], theirs["label"])
    np.testing.assert_array_equal(ours["mask"], theirs["mask"])

    big = int(round(size / ratio))
    images = src.train.images[:16]
    want = tf.image.resize(images, [big, big], method="bilinear").numpy()
    np.testing.assert_allclose(memory_pipeline.resize(images, big, big), want, atol=1e-3)


def test_digits_numpy_pipeline_resumes_and_slices_by_process():
    """A batch depends on (seed, epoch, step) only: resuming at (1, 3) and reading as process 1
    of 2 give the rows of the uninterrupted single-process run."""
    cfg = data.default_data_config()
    cfg.image_size, cfg.random_flip = 16, True
    g = 256
    steps = data.steps_per_epoch(data.get_dataset_info(cfg), g)
    it = data.train_batches(cfg, global_batch_size=g, seed=3, sharding=None)
    full = [next(it) for _ in range(steps + 4)]
    resumed = data.train_batches(
        cfg, global_batch_size=g, seed=3, sharding=None, start_epoch=1, start_step=3
    )
    assert (resumed.epoch, resumed.step) == (1, 3)
    np.testing.assert_array_equal(next(resumed)["image"], full[steps + 3]["image"])
    half = data.train_batches(
        cfg, global_batch_size=g, seed=3, sharding=None, process_index=1, process_count=2
    )
    b = next(half)
    np.testing.assert_array_equal(b["image"], full[0]["image"][g // 2 :])
    np.testing.assert_array_equal(b["label"], full[0]["label"][g // 2 :])
    # Another epoch is another permutation.
    assert not np.array_equal(full[0]["label"], full[steps]["label"])
