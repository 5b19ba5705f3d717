"""config.data: defaults, validation messages, DatasetInfo arithmetic, top-k helper."""

import numpy as np
import pytest

import lmsgd.data as data
from lmsgd.data.config import DATA_CONFIG_DOCS


def test_defaults_cover_documented_keys():
    cfg = data.default_data_config()
    assert set(cfg) == set(DATA_CONFIG_DOCS)
    assert cfg.name == "digits" and cfg.image_size == 32
    assert cfg.eval_crop_ratio == 0.875 and cfg.num_parallel_calls == -1
    assert cfg.skip_corrupt is False and cfg.dtype == "uint8"
    data.validate_data_config(cfg)
    cfg.cache = True  # type_safe=False: 'auto' -> bool is allowed
    data.validate_data_config(cfg)


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("name", "mnist", "'digits' | 'image_folder'"),
        ("crop", "center", "'inception' | 'resize_crop'"),
        ("dtype", "float16", "'uint8' | 'bfloat16'"),
        ("eval_crop_ratio", 1.5, "(0, 1]"),
        ("num_parallel_calls", 0, "AUTOTUNE"),
        ("crop_area_range", (0.5, 0.1), "lo <= hi"),
        ("cache", "yes", "'auto'"),
        ("image_size", 0, ">= 1"),
    ],
)
def test_bad_values_name_key_and_allowed(key, value, needle):
    cfg = data.default_data_config()
    cfg[key] = value
    with pytest.raises(ValueError) as e:
        data.validate_data_config(cfg)
    assert f"config.data.{key}={value!r}" in str(e.value) and needle in str(e.value)


def test_unknown_key_and_missing_data_dir():
    with pytest.raises(ValueError, match=r"unknown config key config.data.shuffle_bufer; did you"):
        data.validate_data_config({**data.default_data_config(), "shuffle_bufer": 3})
    with pytest.raises(ValueError, match="data_dir is required"):
        data.validate_data_config({**data.default_data_config(), "name": "image_folder"})
    with pytest.raises(ValueError, match=r"config is missing config.data.cache"):
        data.validate_data_config({k: v for k, v in data.default_data_config().items()
                                   if k != "cache"})  # fmt: skip


def test_steps_and_eval_batches():
    info = data.DatasetInfo("x", 10, (8, 8, 3), 103, 17)
    assert data.steps_per_epoch(info, 10) == 10
    assert data.num_eval_batches(info, 8) == 3
    with pytest.raises(ValueError, match="exceeds the 103"):
        data.steps_per_epoch(info, 104)


def test_masked_topk_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(13, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 13)
    mask = (rng.uniform(size=13) < 0.7).astype(np.float32)
    out = data.masked_topk_correct(logits, labels, mask, ks=(1, 3, 10))
    order = np.argsort(-logits, axis=1)
    for k in (1, 3, 10):
        ref = sum(mask[i] * (labels[i] in order[i, :k]) for i in range(13))
        assert float(out[f"top{k}"]) == pytest.approx(ref)
    assert float(out["count"]) == mask.sum()
