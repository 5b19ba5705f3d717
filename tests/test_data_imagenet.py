"""imagenet2012 through TFDS: the missing-download error, and the pipeline on mock data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import lmsgd.data as data


def imagenet_cfg(data_dir, **kw):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size = "imagenet2012", str(data_dir), 24
    cfg.shuffle_buffer = 16
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_missing_manual_download_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.get_dataset_info(imagenet_cfg(tmp_path))
    msg = str(e.value)
    manual = str(tmp_path / "downloads" / "manual")
    assert "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
    assert manual in msg and "https://image-net.org" in msg
    assert f"tfds build imagenet2012 --data_dir={tmp_path} --manual_dir={manual}" in msg


@pytest.fixture()
def mocked(tmp_path):
    # With the tars in place the builder is "prepared" (a no-op under mock_data).
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (manual / name).write_bytes(b"")
    with tfds.testing.mock_data(num_examples=10):
        yield tmp_path


def test_mock_info_and_batches(mocked):
    cfg = imagenet_cfg(mocked)
    info = data.get_dataset_info(cfg)
    assert (info.num_classes, info.image_shape) == (1000, (24, 24, 3))
    assert (info.num_train_examples, info.num_eval_examples) == (1_281_167, 50_000)
    it = data.train_batches(cfg, global_batch_size=4, seed=0, sharding=None)
    b = next(it)
    assert b["image"].shape == (4, 24, 24, 3) and b["label"].dtype == np.int32
    assert np.all((b["label"] >= 0) & (b["label"] < 1000)) and np.isfinite(b["image"]).all()
    second = next(it)
    # Resume at step 1 of epoch 0: identical second batch (records skipped undecoded).
    resumed = data.train_batches(cfg, global_batch_size=4, seed=0, sharding=None, start_step=1)
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], second["image"])
    np.testing.assert_array_equal(got["label"], second["label"])


def test_mock_eval_pads_with_mask(mocked):
    cfg = imagenet_cfg(mocked)
    it = iter(data.eval_batches(cfg, global_batch_size=8, sharding=None))
    masks = [next(it)["mask"] for _ in range(3)]
    # The mock split holds 10 records: 8 + 2 real, then padding only.
    assert [float(m.sum()) for m in masks] == [8.0, 2.0, 0.0]
