"""The planner's host CPUs per input path: the arithmetic against a hand formula."""

import json

import pytest

from lmsgd.plan import input_feed
from lmsgd.plan.hardware import HARDWARE


def rates(**per_cpu):
    return input_feed.Rates(dict(per_cpu), "test")


def test_cpus_needed_by_hand():
    # 32,768 images per 15 ms step over 256 hosts: 32768 / 0.015 / 256 = 8,533.3 images/s
    # per host; at 100 images/s per CPU that is 85.3 CPUs, at 30 it is 284.4.
    f = input_feed.feed(32768 / 0.015, 256, 208, rates(fast=100.0, slow=30.0))
    assert f["images_per_s_per_host"] == pytest.approx(8533.33, rel=1e-5)
    assert f["paths"]["fast"]["cpus_needed"] == pytest.approx(85.333, rel=1e-4)
    assert f["paths"]["slow"]["cpus_needed"] == pytest.approx(284.444, rel=1e-4)
    assert f["paths"]["fast"]["enough"] is True and f["paths"]["slow"]["enough"] is False
    text = "\n".join(input_feed.format_feed(f, "a TPU v5p host"))
    assert "8,533 images/s per host" in text and "208 logical CPUs (a TPU v5p host)" in text
    assert "TOO FEW CPUs" in text and "cannot feed the step with: slow" in text
    # Unknown host: the CPUs needed, no verdict.
    f = input_feed.feed(1000.0, 1, None, rates(a=250.0))
    assert f["paths"]["a"] == {"images_per_s_per_cpu": 250.0, "cpus_needed": 4.0, "enough": None}
    assert "not known" in "\n".join(input_feed.format_feed(f, None))


def test_host_cpus_per_target():
    h100, v5p = HARDWARE["h100"].as_dict(), HARDWARE["v5p"].as_dict()
    assert input_feed.host_cpus("gpu", h100, 8) == 224  # DGX H100: 112 cores, 224 threads
    assert input_feed.host_cpus("gpu", h100, 4) == 112  # half a server's GPUs, half its CPUs
    assert input_feed.host_cpus("tpu", v5p, 4) == 208
    assert input_feed.host_cpus("tpu", HARDWARE["v4"].as_dict(), 8) == 240  # one VM per host
    assert input_feed.host_cpus("gpu", HARDWARE["h100-pcie"].as_dict(), 8) is None
    for name, hw in HARDWARE.items():
        assert not hw.host_cpus or "host_cpus" in hw.sources, name  # every count is sourced


def test_rates_from_a_bench_input_json(tmp_path):
    record = {
        "suite": "input", "time_utc": "2026-01-02T03:04:05",
        "hardware": {"cores_available": 4, "cpu": "Some CPU"},
        "config": {"image_size": 224, "dtype": "uint8"},
        "results": {"decode_and_crop": {"images_per_s_per_core": 120.5},
                    "preresized": {"images_per_s_per_core": 300.0}},
    }  # fmt: skip
    path = tmp_path / "bench_input.json"
    path.write_text(json.dumps(record))
    r = input_feed.load_rates(str(path))
    assert r.per_cpu == {"decode_and_crop": 120.5, "preresized": 300.0}
    assert str(path) in r.source and "4 CPUs of Some CPU" in r.source and "2026-01-02" in r.source
    path.write_text(json.dumps({"results": {"x": {}}}))
    with pytest.raises(ValueError, match="not a `python -m lmsgd.bench input` results JSON"):
        input_feed.load_rates(str(path))
    committed = input_feed.load_rates()  # the committed file the planner reads by default
    assert {"decode_and_crop", "preresized", "dct_scaled"} <= set(committed.per_cpu)
    assert "committed" in committed.source
