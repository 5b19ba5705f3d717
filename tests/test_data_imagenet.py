"""imagenet2012 through TFDS: the unprepared-data error, and the TFRecord pipeline on mock
data (the ArrayRecord path runs on a miniature ILSVRC in tests/test_imagenet.py)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import lmsgd.data as data
from lmsgd.errors import DataError


def imagenet_cfg(data_dir, **kw):
    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size = "imagenet2012", str(data_dir), 24
    cfg.shuffle_buffer = 16
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def test_unprepared_data_stops_in_one_line_naming_the_command(tmp_path):
    for fmt in ("array_record", "tfrecord"):
        with pytest.raises(DataError) as e:
            data.get_dataset_info(imagenet_cfg(tmp_path, file_format=fmt))
        msg = str(e.value)
        assert "\n" not in msg and "imagenet2012 is not prepared in" in msg
        flag = " --format tfrecord" if fmt == "tfrecord" else ""
        assert f"--data_dir {tmp_path}{flag}`" in msg
        assert "python -m lmsgd.data.prepare imagenet2012 --manual_dir" in msg
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


@pytest.fixture()
def mocked(tmp_path, monkeypatch):
    # mock_data replaces reading, not the "prepared" check.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=10):
        yield tmp_path


def test_mock_info_and_batches(mocked):
    # tfds.testing.mock_data mocks TFRecord reading (the sequential path).
    cfg = imagenet_cfg(mocked, file_format="tfrecord")
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
    cfg = imagenet_cfg(mocked, file_format="tfrecord")
    it = iter(data.eval_batches(cfg, global_batch_size=8, sharding=None))
    masks = [next(it)["mask"] for _ in range(3)]
    # The mock split holds 10 records: 8 + 2 real, then padding only.
    assert [float(m.sum()) for m in masks] == [8.0, 2.0, 0.0]
