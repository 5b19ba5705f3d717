"""`python -m lmsgd.bench input` in its smallest setting: runs, prints, writes sane JSON."""

import json
import math
import subprocess
import sys

from lmsgd.bench.__main__ import main


def test_input_suite_smallest_setting(tmp_path, capsys):
    record = main(
        [
            "input", "--quick", "--num_images", "16", "--batch_size", "8", "--num_batches", "2",
            "--warmup_batches", "1", "--image_size", "32", "--cache_dir", str(tmp_path / "c"),
            "--results_dir", str(tmp_path / "r"),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "decode_and_crop" in out and "images/s" in out
    files = list((tmp_path / "r").glob("bench_input_*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert set(saved["results"]) == {
        "decode_and_crop", "decode_then_crop", "resize_crop", "tfds_image_folder"
    }  # fmt: skip
    for r in saved["results"].values():
        for key in ("images_per_s", "images_per_s_per_core"):
            assert math.isfinite(r[key]) and r[key] > 0
    assert saved["hardware"]["cores_available"] >= 1 and saved["versions"]["jax"]
    assert saved["config"]["batch_size"] == 8 and record["suite"] == "input"
    assert math.isfinite(saved["speedup_decode_and_crop"])
    # Generated JPEGs are ImageNet-like: 500x375.
    from PIL import Image

    jpeg = next((tmp_path / "c").rglob("*.JPEG"))
    assert Image.open(jpeg).size == (500, 375)


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.bench", "input", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--quick" in out and "--results_dir" in out
