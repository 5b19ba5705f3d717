"""`python -m lmsgd.bench input`: ImageNet-like JPEGs, every path side by side, sane JSON."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from lmsgd.bench import input as bench_input
from lmsgd.bench.__main__ import main

pytest.importorskip("tensorflow")
pytest.importorskip("skimage")


def run_suite(tmp_path, modes, num_images=16):
    return main(
        [
            "input", "--quick", "--num_images", str(num_images), "--batch_size", "8",
            "--num_batches", "2", "--warmup_batches", "1", "--image_size", "32",
            "--min_side", "64", "--host_size", "24", "--modes", modes,
            "--cache_dir", str(tmp_path / "c"), "--results_dir", str(tmp_path / "r"),
        ]
    )  # fmt: skip


def test_ilsvrc_like_sizes():
    """The size distribution's mean is ILSVRC-2012's (about 400 x 350)."""
    rng = np.random.default_rng(0)
    sizes = np.array([bench_input.ilsvrc_like_size(rng) for _ in range(4000)])
    w, h = sizes.mean(axis=0)
    assert 370 < w < 430 and 320 < h < 380, (w, h)
    assert sizes.max() == 500 and sizes.min() >= 100


def test_input_suite_two_paths(tmp_path, capsys):
    record = run_suite(tmp_path, "decode_and_crop,dct_scaled")
    out = capsys.readouterr().out
    assert "decode_and_crop" in out and "img/s/core" in out and "peak RSS" in out
    files = list((tmp_path / "r").glob("bench_input_*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert set(saved["results"]) == {"decode_and_crop", "dct_scaled"}
    for r in saved["results"].values():
        for key in ("images_per_s", "images_per_s_per_core", "ratio_to_reference"):
            assert math.isfinite(r[key]) and r[key] > 0
        assert 100e6 < r["peak_rss_bytes"] < 64e9
        assert r["image_dtype"] == "uint8"
        # Per core = images per CPU-second of the path's process: a process cannot use more
        # CPU-seconds than its CPUs times the wall time.
        assert len(r["images_per_cpu_s_runs"]) == 1
        cores = saved["hardware"]["cores_available"]
        assert r["images_per_s_per_core"] >= 0.99 * r["images_per_s_per_available_core"]
        assert r["images_per_s_per_available_core"] == pytest.approx(r["images_per_s"] / cores)
        # What one step sends: 8 uint8 images of 32x32x3 and 8 int32 labels.
        assert r["h2d_bytes_per_step"] == 8 * (32 * 32 * 3 + 4) == saved["h2d"]["bytes_per_step"]
    assert saved["results"]["decode_and_crop"]["ratio_to_reference"] == 1.0
    assert saved["h2d"]["bytes_per_image_float32"] == 4 * saved["h2d"]["bytes_per_image"]
    assert saved["hardware"]["cores_available"] >= 1 and saved["versions"]["jax"]
    assert saved["config"]["batch_size"] == 8 and record["suite"] == "input"
    # The generated JPEGs: photographs at ILSVRC-like sizes, compressed like photographs
    # (noise at quality 90 takes over 1.5 bytes per pixel; photographs well under 1).
    from PIL import Image

    jpegs = sorted((tmp_path / "c").rglob("*.JPEG"))
    assert len(jpegs) == 16 + 4
    sizes = [Image.open(p).size for p in jpegs]
    assert max(max(s) for s in sizes) <= 500 and min(min(s) for s in sizes) >= 100
    per_pixel = [p.stat().st_size / (s[0] * s[1]) for p, s in zip(jpegs, sizes, strict=True)]
    assert np.mean(per_pixel) < 1.0, per_pixel


@pytest.mark.slow
def test_input_suite_every_path(tmp_path):
    record = run_suite(tmp_path, ",".join(bench_input.PATHS))
    assert set(record["results"]) == set(bench_input.PATHS)
    for r in record["results"].values():
        assert math.isfinite(r["images_per_s_per_core"]) and r["images_per_s_per_core"] > 0


def test_unknown_path_names_the_allowed(tmp_path):
    with pytest.raises(ValueError, match="allowed: decode_and_crop, decode_then_crop"):
        run_suite(tmp_path, "decode_and_crop,gpu_magic")


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.bench", "input", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--quick" in out and "--results_dir" in out and "--min_side" in out
