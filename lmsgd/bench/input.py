"""Input pipeline throughput: training images/s (and per core) on an image folder.

Compares, in one run, the training pipeline with the Inception crop fused into JPEG
decoding (decode_and_crop_jpeg) against decoding the full image and then cropping, plus the
ChainerMN resize+crop mode and tfds.ImageFolder (which always decodes fully) with the same
crop. Without ``--data_dir`` it generates ImageNet-like JPEGs (500x375, quality 90) into a
cache directory. Prints a table and writes JSON (hardware, versions, config, figures) to
``--results_dir``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time
from typing import Any

import numpy as np

from lmsgd.bench import common

_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "lmsgd", "bench_input")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data_dir",
        default=None,
        help="image folder root (train/<class>/*.JPEG, val/...); default: generated JPEGs",
    )
    parser.add_argument("--num_images", type=int, default=None, help="generated images")
    parser.add_argument("--image_size", type=int, default=224, help="model input side")
    parser.add_argument("--batch_size", type=int, default=None, help="per-host batch")
    parser.add_argument("--num_batches", type=int, default=None, help="timed batches per mode")
    parser.add_argument("--warmup_batches", type=int, default=None, help="untimed batches")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--cache_dir", default=_CACHE, help="where generated JPEGs go")
    parser.add_argument("--results_dir", default="./results", help="JSON output folder")
    parser.add_argument(
        "--modes",
        default="decode_and_crop,decode_then_crop,resize_crop,tfds_image_folder",
        help="comma-separated subset of the modes to run",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds over all modes (median reported)"
    )
    parser.add_argument("--quick", action="store_true", help="small setting, < 1 min on 2 cores")


def _settings(args: argparse.Namespace) -> dict[str, int]:
    small = args.quick
    out = {
        "num_images": 128 if small else 512,
        "batch_size": 32 if small else 64,
        "num_batches": 6 if small else 30,
        "warmup_batches": 2 if small else 5,
        "repeats": 1 if small else 3,
    }
    for k in out:
        if getattr(args, k) is not None:
            out[k] = getattr(args, k)
    return out


def make_jpeg_folder(
    root: str,
    num_images: int,
    *,
    num_classes: int = 4,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
    seed: int = 0,
) -> str:
    """Write ImageNet-like JPEGs to root/{train,val}/class_k/ (val gets 1/8); returns root.

    Content is smooth colour fields plus fine noise, so the JPEGs have a realistic size
    (~100 KB at 500x375, q90, like ImageNet's) and decoding work (flat images decode faster).
    """
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    w, h = size
    for split, count in (("train", num_images), ("val", max(num_classes, num_images // 8))):
        for i in range(count):
            cls = f"class_{i % num_classes}"
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            coarse = rng.uniform(0, 255, (h // 25 + 1, w // 25 + 1, 3)).astype(np.uint8)
            img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
            img += rng.normal(0, 12, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                os.path.join(root, split, cls, f"{i:06d}.JPEG"), quality=quality
            )
    with open(done, "w") as f:
        f.write("ok\n")
    return root


def _time_iterator(it, warmup: int, timed: int, batch_size: int) -> dict[str, float]:
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(timed):
        next(it)
    seconds = time.perf_counter() - start
    ips = timed * batch_size / seconds
    return {"seconds": seconds, "images_per_s": ips, "images_per_s_per_core": ips / common.cores()}


def _pipeline_iterator(root: str, mode: str, s: dict, args) -> Any:
    import lmsgd.data as data

    cfg = data.default_data_config()
    cfg.name = "image_folder"
    cfg.data_dir = root
    cfg.image_size = args.image_size
    cfg.cache = False  # Measure decoding, not memory reads.
    cfg.dtype = args.dtype
    cfg.crop = "resize_crop" if mode == "resize_crop" else "inception"
    cfg.decode_and_crop = mode != "decode_then_crop"
    # sharding=None: host pipeline only (what feeds the devices), one process.
    return data.train_batches(
        cfg,
        global_batch_size=s["batch_size"],
        seed=0,
        sharding=None,
        process_index=0,
        process_count=1,
    )


def _image_folder_iterator(root: str, s: dict, args) -> Any:
    """tfds.ImageFolder (full decode, its own unseeded shuffle) + the same crop/flip/normalize."""
    from lmsgd.data import augment, requires
    from lmsgd.data._tf import tf

    tfds = requires.tensorflow_datasets("tfds.ImageFolder")

    builder = tfds.ImageFolder(root)
    ds = builder.as_dataset(split="train", shuffle_files=True).repeat()

    def fn(i, ex):
        key = augment.example_seed(0, 0, i, stream=1)
        image = augment.train_preprocess(
            ex["image"],
            key,
            size=args.image_size,
            crop="inception",
            flip=True,
            ratio=0.875,
            area_range=(0.08, 1.0),
            aspect_ratio_range=(3 / 4, 4 / 3),
            fused=False,
            mean=augment.IMAGENET_MEAN,
            std=augment.IMAGENET_STD,
            dtype=tf.bfloat16 if args.dtype == "bfloat16" else tf.float32,
        )
        return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.enumerate().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(s["batch_size"], drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


MODES = {
    "decode_and_crop": "file list, Inception crop fused into decoding (default)",
    "decode_then_crop": "file list, full decode, then Inception crop",
    "resize_crop": "file list, ChainerMN resize 256 + random 224 crop",
    "tfds_image_folder": "tfds.ImageFolder (full decode) + Inception crop",
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure each mode; print a table; write JSON to args.results_dir; return the record."""
    from lmsgd.data import requires

    requires.tensorflow("image-folder")  # before any image is generated
    s = _settings(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"--modes has unknown {unknown}; allowed: {', '.join(MODES)}")
    if args.data_dir:
        root, source = args.data_dir, "user image folder"
    else:
        sub = f"jpeg_{s['num_images']}_500x375_q90"
        root = make_jpeg_folder(os.path.join(args.cache_dir, sub), s["num_images"])
        source = "generated 500x375 JPEG, quality 90"
    import lmsgd.data as data

    cfg = data.default_data_config()
    cfg.name, cfg.data_dir = "image_folder", root
    info = data.get_dataset_info(cfg)
    if s["batch_size"] > info.num_train_examples:
        raise ValueError(
            f"--batch_size={s['batch_size']} exceeds the {info.num_train_examples} training "
            f"images in {root}"
        )

    def measure(mode: str) -> dict[str, float]:
        # A fresh pipeline per measurement: a pipeline left alive would keep filling its
        # prefetch buffer in the background and flatter its next measurement.
        if mode == "tfds_image_folder":
            it = _image_folder_iterator(root, s, args)
        else:
            it = _pipeline_iterator(root, mode, s, args)
        return _time_iterator(it, s["warmup_batches"], s["num_batches"], s["batch_size"])

    # Untimed pass first: kernel loading and thread-pool start-up would otherwise be charged
    # to whichever mode runs first. Then rounds in alternating order, median per mode.
    measure(modes[0])
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(s["repeats"]):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            runs[mode].append(measure(mode))
    results = {}
    for mode in modes:
        ips = sorted(x["images_per_s"] for x in runs[mode])
        median = float(np.median(ips))
        results[mode] = {
            "description": MODES[mode],
            "images_per_s": median,
            "images_per_s_per_core": median / common.cores(),
            "images_per_s_runs": ips,
        }

    record = {
        "suite": "input",
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(),
        "hardware": common.hardware(),
        "versions": common.versions(("tensorflow", "tensorflow-datasets")),
        "config": {
            **s,
            "image_size": args.image_size,
            "dtype": args.dtype,
            "data_dir": root,
            "data": source,
            "num_train_images": info.num_train_examples,
            "modes": modes,
        },
        "results": results,
    }
    if "decode_and_crop" in results and "decode_then_crop" in results:
        record["speedup_decode_and_crop"] = (
            results["decode_and_crop"]["images_per_s"] / results["decode_then_crop"]["images_per_s"]
        )
    _print_table(record)
    os.makedirs(args.results_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.results_dir, f"bench_input_{stamp}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {path}")
    record["json_path"] = path
    return record


def _print_table(record: dict[str, Any]) -> None:
    c = record["config"]
    print(
        f"input pipeline, {c['data']} ({c['num_train_images']} train images), "
        f"{c['image_size']}px {c['dtype']}, batch {c['batch_size']}, "
        f"{c['num_batches']} timed batches, {record['hardware']['cores_available']} cores"
    )
    header = f"{'mode':<20} {'images/s':>10} {'img/s/core':>11}  description"
    print(header)
    print("-" * len(header))
    for mode, r in record["results"].items():
        ips, per = r["images_per_s"], r["images_per_s_per_core"]
        assert math.isfinite(ips)
        print(f"{mode:<20} {ips:>10.1f} {per:>11.1f}  {r['description']}")
    if "speedup_decode_and_crop" in record:
        print(f"decode_and_crop / decode_then_crop: {record['speedup_decode_and_crop']:.2f}x")
