"""`python -m lmsgd.bench allreduce` in its smallest setting: runs, prints, writes sane JSON,
and the half-precision wire dtypes move half the bytes of float32."""

import json
import math

import pytest

from lmsgd.bench.__main__ import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("allreduce")
    record = main(
        [
            "allreduce", "--model", "cifar_resnet8", "--sizes", "1000", "--reps", "1",
            "--min_seconds", "0", "--results_dir", str(out),
        ]
    )  # fmt: skip
    files = list(out.glob("bench_allreduce_*.json"))
    assert len(files) == 1 and record["suite"] == "allreduce"
    return json.loads(files[0].read_text())


def _row(saved, kind, algorithm, fuse, dtype):
    (row,) = [
        r for r in saved["results"]
        if (r["kind"], r["algorithm"], r["fuse"], r["dtype"]) == (kind, algorithm, fuse, dtype)
    ]  # fmt: skip
    return row


def test_schema_and_figures(saved):
    assert saved["hardware"]["device_count"] == 8 and saved["hardware"]["platform"] == "cpu"
    assert saved["versions"]["jax"] and saved["config"]["mesh_2d"] == [2, 4]
    # 3 dtypes x (flat fused, flat per-tensor, hierarchical, two_dimensional, 1 sweep size).
    assert len(saved["results"]) == 15
    for r in saved["results"]:
        for key in ("time_s_median", "algbw_bytes_per_s", "busbw_bytes_per_s", "payload_bytes",
                    "time_vs_float32"):  # fmt: skip
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["busbw_bytes_per_s"] == pytest.approx(r["algbw_bytes_per_s"] * 2 * 7 / 8)
        assert r["lowered"]["bytes"] > 0 and r["compiled"]["bytes"] > 0


def test_half_precision_moves_half_the_bytes(saved):
    f32 = _row(saved, "gradient", "flat", True, "float32")
    assert f32["lowered"]["dtypes"] == ["f32"] and f32["lowered"]["count"] == 1
    assert f32["elements"] == saved["config"]["gradient_elements"]
    for dtype, short in (("bfloat16", "bf16"), ("float16", "f16")):
        row = _row(saved, "gradient", "flat", True, dtype)
        assert row["lowered"]["dtypes"] == [short]
        assert row["lowered_bytes_vs_float32"] == 0.5
    # XLA:CPU keeps float16 but promotes bfloat16 all-reduces to float32 (GPUs keep bf16).
    assert _row(saved, "gradient", "flat", True, "float16")["compiled_bytes_vs_float32"] == 0.5
    assert _row(saved, "gradient", "flat", True, "bfloat16")["compiled"]["dtypes"] == ["f32"]
    assert set(saved["gradient_flat_fused_vs_float32"]) == {"bfloat16", "float16"}


def test_per_tensor_and_two_level_algorithms(saved):
    tensors = saved["config"]["gradient_tensors"]
    assert _row(saved, "gradient", "flat", False, "float32")["lowered"]["count"] == tensors
    hier = _row(saved, "gradient", "hierarchical", True, "float32")
    assert hier["lowered"]["count"] == 2 and hier["mesh_shape"] == [2, 4]
    two_d = _row(saved, "gradient", "two_dimensional", True, "float32")
    assert two_d["lowered"]["ops"] == ["all-gather", "all-reduce", "reduce-scatter"]
