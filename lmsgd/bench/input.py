"""Input pipeline throughput: training images/s per core, peak host memory and host-to-device
bytes of every training input path, side by side in one run.

Without ``--data_dir`` it writes ImageNet-like JPEGs: crops of the real photographs that
scikit-image ships (``skimage.data``), resized to the size distribution of ILSVRC-2012's
training images (about 400x350 on average) and saved at JPEG quality 85-95 (mean 90). Each
path runs in its own process (its peak RSS is that process's), in alternating order over
``--repeats`` rounds; the median is reported, with its ratio to the default path
(``decode_and_crop``). Per core means per CPU-second: images divided by the user + system
time of the path's process (every thread) over the timed batches, a cost that other jobs on
the machine do not distort; wall-clock images/s are kept next to it.
Prints a table and writes JSON (hardware, versions, config, figures) to ``--results_dir``.
A path is one entry of :data:`PATHS`: add one by name there.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lmsgd.bench import common

_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "lmsgd", "bench_input")
REFERENCE = "decode_and_crop"


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
    parser.add_argument(
        "--dtype", default="uint8", choices=("uint8", "bfloat16", "float32"),
        help="wire dtype of the images sent to the devices (config.data.dtype)",
    )  # fmt: skip
    parser.add_argument(
        "--min_side", type=int, default=160,
        help="shorter side of the fast paths: config.data.decode_min_side of 'dct_scaled', "
        "the prepared copy of 'preresized'",
    )  # fmt: skip
    parser.add_argument(
        "--host_size", type=int, default=160,
        help="config.data.host_size of the 'device_resize' paths: the side of the crops the "
        "host sends (below --image_size)",
    )  # fmt: skip
    parser.add_argument("--cache_dir", default=_CACHE, help="where generated JPEGs go")
    parser.add_argument("--results_dir", default="./results", help="JSON output folder")
    parser.add_argument(
        "--modes", default=None, help="comma-separated subset of the paths (default: all)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds over all modes (median reported)"
    )
    parser.add_argument("--quick", action="store_true", help="small setting, ~1 min on 2 cores")


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


# --- ImageNet-like JPEGs from real photographs ------------------------------------------------

# scikit-image's colour photographs (shipped in its wheel, no download).
PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry",
    "stereo_motorcycle", "retina", "rocket",
)  # fmt: skip


def _photos() -> list[np.ndarray]:
    try:
        from skimage import data as skdata
    except ImportError:
        raise SystemExit(
            "bench input's ImageNet-like JPEGs need scikit-image: pip install 'lmsgd[bench]'"
        ) from None
    out = []
    for name in PHOTOS:
        img = getattr(skdata, name)()
        imgs = img[:2] if name == "stereo_motorcycle" else (img,)  # left and right views
        out += [np.asarray(x)[..., :3] for x in imgs]
    return out


def ilsvrc_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn like ILSVRC-2012 training images: the longer side 500 for half
    of them (the Flickr downloads' usual size), else 200-500; aspect 4:3, 3:2 or 1:1 (a
    quarter portrait). Mean about 410 x 350."""
    long = 500 if rng.random() < 0.5 else int(rng.integers(200, 501))
    short = round(long / rng.choice([4 / 3, 3 / 2, 1.0], p=[0.6, 0.25, 0.15]))
    return (short, long) if rng.random() < 0.25 else (long, short)


def make_jpeg_folder(root: str, num_images: int, *, num_classes: int = 4, seed: int = 0) -> str:
    """ImageNet-like JPEGs in root/{train,val}/class_k/ (val gets 1/8); returns root.

    Each is a random crop (25-100% of the area) of one of scikit-image's photographs, resized
    (antialiased) to an ILSVRC-like size and saved at quality 85-95: real image content, so
    file sizes and decoding work are a photograph's, not noise's.
    """
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    photos = _photos()
    for split, count in (("train", num_images), ("val", max(num_classes, num_images // 8))):
        for i in range(count):
            photo = photos[int(rng.integers(len(photos)))]
            h, w = photo.shape[:2]
            area = rng.uniform(0.25, 1.0)
            ch, cw = max(16, int(h * math.sqrt(area))), max(16, int(w * math.sqrt(area)))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            size = ilsvrc_like_size(rng)
            img = Image.fromarray(photo[y : y + ch, x : x + cw]).resize(size, Image.BICUBIC)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            d = os.path.join(root, split, f"class_{i % num_classes}")
            os.makedirs(d, exist_ok=True)
            img.save(os.path.join(d, f"{i:06d}.JPEG"), quality=int(rng.integers(85, 96)))
    with open(done, "w") as f:
        f.write("ok\n")
    return root


def write_preresized_copy(src: str, dst: str, min_side: int, quality: int = 90) -> str:
    """A copy of the image folder ``src`` whose images have their shorter side resized to
    ``min_side`` (antialiased; smaller ones are copied as they are), JPEG quality ``quality``."""
    from PIL import Image

    done = os.path.join(dst, ".complete")
    if os.path.exists(done):
        return dst
    for dirpath, _, files in os.walk(src):
        for name in files:
            if name.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            img = Image.open(os.path.join(src, rel)).convert("RGB")
            scale = min_side / min(img.size)
            if scale < 1:
                img = img.resize(
                    (round(img.width * scale), round(img.height * scale)), Image.BICUBIC
                )
            img.save(os.path.join(dst, rel), quality=quality)
    with open(done, "w") as f:
        f.write("ok\n")
    return dst


def write_tfrecords(src: str, dst: str, num_shards: int = 4) -> str:
    """The train split of the image folder ``src`` as TFRecord shards of tf.train.Example
    (``image/encoded``, ``label``): the storage TFDS's imagenet2012 reads."""
    from lmsgd.data import folders
    from lmsgd.data._tf import tf

    done = os.path.join(dst, ".complete")
    if os.path.exists(done):
        return dst
    os.makedirs(dst, exist_ok=True)
    split = folders.list_split(src, "train")
    writers = [
        tf.io.TFRecordWriter(os.path.join(dst, f"train.tfrecord-{k:05d}"))
        for k in range(num_shards)
    ]
    for i, (path, label) in enumerate(zip(split.paths, split.labels, strict=True)):
        with open(path, "rb") as f:
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.read()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[i % num_shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    with open(done, "w") as f:
        f.write("ok\n")
    return dst


def describe_jpegs(root: str) -> dict[str, float]:
    """Mean width, height and file size of the train split's images (headers only)."""
    from PIL import Image

    sizes, nbytes = [], []
    for dirpath, _, files in os.walk(os.path.join(root, "train")):
        for name in files:
            path = os.path.join(dirpath, name)
            with Image.open(path) as img:
                sizes.append(img.size)
            nbytes.append(os.path.getsize(path))
    arr = np.asarray(sizes, np.float64)
    return {
        "mean_width": float(arr[:, 0].mean()),
        "mean_height": float(arr[:, 1].mean()),
        "mean_file_bytes": float(np.mean(nbytes)),
        "num_train_images": len(sizes),
    }


# --- the paths --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Path:
    """One training input path: ``build(roots, settings, args)`` returns its batch iterator.

    ``roots`` holds 'folder' (the JPEGs) and whatever the path prepares ('preresized',
    'tfrecord'); ``prepare`` (if any) writes that once, before the timed runs."""

    description: str
    build: Callable[[dict, dict, Any], Any]
    prepare: Callable[[dict, Any], None] | None = None


def _data_cfg(root: str, args, **overrides):
    import lmsgd.data as data

    cfg = data.default_data_config()
    cfg.name, cfg.data_dir, cfg.image_size = "image_folder", root, args.image_size
    cfg.cache = False  # Measure decoding, not memory reads.
    cfg.dtype = args.dtype
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def _pipeline(root_key: str, **overrides) -> Callable[[dict, dict, Any], Any]:
    """The training pipeline (config.data with ``overrides``) on ``roots[root_key]``."""

    def build(roots: dict, s: dict, args) -> Any:
        import lmsgd.data as data

        cfg = _data_cfg(roots[root_key], args, **overrides)
        # sharding=None: host pipeline only (what feeds the devices), one process.
        return data.train_batches(
            cfg, global_batch_size=s["batch_size"], seed=0, sharding=None,
            process_index=0, process_count=1,
        )  # fmt: skip

    return build


def _augment(args, fused: bool, min_side: int = 0):
    from lmsgd.data import augment
    from lmsgd.data._tf import tf

    def fn(index, image):
        key = augment.example_seed(0, 0, index, stream=1)
        return augment.train_preprocess(
            image, key, size=args.image_size, crop="inception", flip=True, ratio=0.875,
            area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), fused=fused,
            dtype=tf.as_dtype(args.dtype), min_side=min_side,
        )  # fmt: skip

    return fn


def _tfds_image_folder(roots: dict, s: dict, args) -> Any:
    """tfds.ImageFolder (full decode, its own unseeded shuffle) + the same crop and flip."""
    from lmsgd.data import requires
    from lmsgd.data._tf import tf

    tfds = requires.tensorflow_datasets("tfds.ImageFolder")
    builder = tfds.ImageFolder(roots["folder"])
    ds = builder.as_dataset(split="train", shuffle_files=True).repeat()
    aug = _augment(args, fused=False)

    def fn(i, ex):
        return {"image": aug(i, ex["image"]), "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.enumerate().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(s["batch_size"], drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


def _tfrecord(roots: dict, s: dict, args) -> Any:
    """TFRecord shards read as TFDS reads imagenet2012's (interleaved files, a shuffle
    buffer of encoded records), then the default pipeline's fused Inception crop and flip."""
    from lmsgd.data._tf import tf

    files = sorted(
        os.path.join(roots["tfrecord"], f)
        for f in os.listdir(roots["tfrecord"])
        if f.startswith("train.tfrecord")
    )
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }
    aug = _augment(args, fused=True)

    def fn(i, record):
        ex = tf.io.parse_single_example(record, spec)
        return {"image": aug(i, ex["image/encoded"]), "label": tf.cast(ex["label"], tf.int32)}

    ds = tf.data.Dataset.from_tensor_slices(files).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=len(files), block_length=16)
    ds = ds.shuffle(1024, seed=0).enumerate()
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(s["batch_size"], drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()


def _prepare_preresized(roots: dict, args) -> None:
    src = roots["folder"]
    roots["preresized"] = write_preresized_copy(
        src, os.path.join(args.cache_dir, os.path.basename(src) + f"_short{args.min_side}"),
        args.min_side,
    )  # fmt: skip


def _prepare_tfrecord(roots: dict, args) -> None:
    src = roots["folder"]
    roots["tfrecord"] = write_tfrecords(
        src, os.path.join(args.cache_dir, os.path.basename(src) + "_tfrecord")
    )


PATHS: dict[str, Path] = {
    "decode_and_crop": Path(
        "image folder, Inception crop fused into JPEG decoding (the default)",
        _pipeline("folder"),
    ),
    "decode_then_crop": Path(
        "image folder, full decode, then Inception crop",
        _pipeline("folder", decode_and_crop=False),
    ),
    "resize_crop": Path(
        "image folder, ChainerMN resize to 256 square + random 224 crop",
        _pipeline("folder", crop="resize_crop"),
    ),
    "tfds_image_folder": Path(
        "tfds.ImageFolder (full decode) + Inception crop", _tfds_image_folder
    ),
    "tfrecord": Path(
        "the JPEGs in TFRecord shards (TFDS imagenet2012's storage), fused Inception crop",
        _tfrecord,
        _prepare_tfrecord,
    ),
    "dct_scaled": Path(
        "image folder, JPEGs decoded at the DCT scale keeping shorter side >= min_side "
        "(config.data.decode_min_side), fused Inception crop",
        lambda roots, s, args: _pipeline("folder", decode_min_side=args.min_side)(roots, s, args),
    ),
    "preresized": Path(
        "a prepared copy, shorter side resized to min_side, default pipeline",
        _pipeline("preresized"),
        _prepare_preresized,
    ),
    "cached": Path(
        "image folder decoded once into host memory (config.data.cache=True), crops from it",
        _pipeline("folder", cache=True),
    ),
    "preresized_cached": Path(
        "the prepared copy decoded once into host memory (config.data.cache=True)",
        _pipeline("preresized", cache=True),
        _prepare_preresized,
    ),
    "device_resize": Path(
        "the prepared copy decoded once into host memory; the host sends host_size crops "
        "(config.data.host_size), the devices resize them to image_size",
        lambda roots, s, args: _pipeline("preresized", cache=True, host_size=args.host_size)(
            roots, s, args
        ),
        _prepare_preresized,
    ),
    "device_resize_jpeg": Path(
        "the prepared copy (JPEG, fused crop); the host sends host_size crops "
        "(config.data.host_size), the devices resize them to image_size",
        lambda roots, s, args: _pipeline("preresized", host_size=args.host_size)(roots, s, args),
        _prepare_preresized,
    ),
}


# --- measuring --------------------------------------------------------------------------------


def _measure(path: str, roots: dict, s: dict, args_dict: dict) -> dict[str, Any]:
    """Runs in a fresh process: the path's warm-up and timed batches, its peak RSS."""
    args = argparse.Namespace(**args_dict)
    it = PATHS[path].build(roots, s, args)
    first = None
    for _ in range(s["warmup_batches"]):
        first = next(it)
    cpu0, start = _cpu_seconds(), time.perf_counter()
    for _ in range(s["num_batches"]):
        batch = next(it)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    batch = first if first is not None else batch
    images = s["num_batches"] * s["batch_size"]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "images_per_s": images / seconds,
        "images_per_cpu_s": images / cpu,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "h2d_bytes_per_step": int(sum(np.asarray(batch[k]).nbytes for k in ("image", "label"))),
        "image_dtype": str(np.asarray(batch["image"]).dtype),
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child(queue, *a) -> None:
    try:
        queue.put(("ok", _measure(*a)))
    except BaseException as e:  # reported by the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def measure_isolated(path: str, roots: dict, s: dict, args: argparse.Namespace) -> dict:
    """``_measure`` in a spawned process: fresh TensorFlow, no pipeline of another path left
    prefetching in the background, and RSS that is this path's alone."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    plain = {k: v for k, v in vars(args).items() if not k.startswith("_")}  # not the module
    proc = ctx.Process(target=_child, args=(queue, path, roots, s, plain))
    proc.start()
    status, out = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"bench input path {path!r} failed: {out}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure each path; print a table; write JSON to args.results_dir; return the record."""
    from lmsgd.data import requires

    requires.tensorflow("image-folder")  # before any image is generated
    s = _settings(args)
    modes = [m.strip() for m in (args.modes or ",".join(PATHS)).split(",") if m.strip()]
    unknown = [m for m in modes if m not in PATHS]
    if unknown:
        raise ValueError(f"--modes has unknown {unknown}; allowed: {', '.join(PATHS)}")
    if args.data_dir:
        root, source = args.data_dir, "user image folder"
    else:
        root = make_jpeg_folder(
            os.path.join(args.cache_dir, f"ilsvrc_like_v1_{s['num_images']}"), s["num_images"]
        )
        source = "ImageNet-like JPEGs (scikit-image photographs, ILSVRC sizes, quality 85-95)"
    stats = describe_jpegs(root)
    if s["batch_size"] > stats["num_train_images"]:
        raise ValueError(
            f"--batch_size={s['batch_size']} exceeds the {stats['num_train_images']} training "
            f"images in {root}"
        )
    roots = {"folder": root}
    for m in modes:
        if PATHS[m].prepare:
            PATHS[m].prepare(roots, args)

    # Rounds in alternating order, each measurement in its own process; median per path.
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(s["repeats"]):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            runs[mode].append(measure_isolated(mode, roots, s, args))
    n_cores = common.cores()
    results = {}
    for mode in modes:
        ips = sorted(x["images_per_s"] for x in runs[mode])
        per_cpu_s = sorted(x["images_per_cpu_s"] for x in runs[mode])
        median = float(np.median(ips))
        results[mode] = {
            "description": PATHS[mode].description,
            # Per core: images per CPU-second the path's process used (all its threads): the
            # cost of an image, which holds on a machine other jobs share.
            "images_per_s_per_core": float(np.median(per_cpu_s)),
            "images_per_cpu_s_runs": per_cpu_s,
            # Wall-clock throughput on this machine, and per available core.
            "images_per_s": median,
            "images_per_s_per_available_core": median / n_cores,
            "images_per_s_runs": ips,
            "peak_rss_bytes": max(x["peak_rss_bytes"] for x in runs[mode]),
            "h2d_bytes_per_step": runs[mode][0]["h2d_bytes_per_step"],
            "image_dtype": runs[mode][0]["image_dtype"],
        }
    if REFERENCE in results:
        ref = results[REFERENCE]
        for r in results.values():
            r["ratio_to_reference"] = r["images_per_s_per_core"] / ref["images_per_s_per_core"]
            r["wall_ratio_to_reference"] = r["images_per_s"] / ref["images_per_s"]
    image_bytes = args.image_size**2 * 3
    record = {
        "suite": "input",
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(),
        "hardware": common.hardware(),
        "versions": common.versions(("tensorflow", "tensorflow-datasets", "scikit-image")),
        "config": {
            **s,
            "image_size": args.image_size,
            "dtype": args.dtype,
            "min_side": args.min_side,
            "host_size": args.host_size,
            "data_dir": root,
            "data": source,
            **stats,
            "modes": modes,
            "reference": REFERENCE,
        },
        # What one step sends to the devices per host: images in the wire dtype + int32 labels.
        "h2d": {
            "dtype": args.dtype,
            "bytes_per_image": image_bytes * np.dtype(_np_dtype(args.dtype)).itemsize,
            "bytes_per_image_float32": image_bytes * 4,
            "bytes_per_step": s["batch_size"]
            * (image_bytes * np.dtype(_np_dtype(args.dtype)).itemsize + 4),
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


def _np_dtype(name: str):
    import ml_dtypes

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _print_table(record: dict[str, Any]) -> None:
    c = record["config"]
    print(
        f"input pipeline, {c['data']}: {c['num_train_images']} train images, mean "
        f"{c['mean_width']:.0f}x{c['mean_height']:.0f}, {c['mean_file_bytes'] / 1e3:.0f} KB; "
        f"{c['image_size']}px {c['dtype']}, batch {c['batch_size']}, {c['num_batches']} timed "
        f"batches, {c['repeats']} rounds, {record['hardware']['cores_available']} cores"
    )
    header = (
        f"{'path':<18} {'img/s/core':>10} {'ratio':>6} {'images/s':>9} {'peak RSS':>9} "
        f"{'H2D/step':>9}  description"
    )
    print(header)
    print("-" * len(header))
    print("img/s/core: images per CPU-second of the path's process; images/s: wall clock")
    for mode, r in record["results"].items():
        ips, per = r["images_per_s"], r["images_per_s_per_core"]
        assert math.isfinite(ips)
        ratio = r.get("ratio_to_reference", float("nan"))
        print(
            f"{mode:<18} {per:>10.1f} {ratio:>5.2f}x {ips:>9.1f} "
            f"{r['peak_rss_bytes'] / 2**30:>7.2f}Gi {r['h2d_bytes_per_step'] / 1e6:>7.2f}MB"
            f"  {r['description']}"
        )
    h = record["h2d"]
    print(
        f"host-to-device per step: {h['bytes_per_step'] / 1e6:.2f} MB ({h['dtype']} images, "
        f"{h['bytes_per_image'] / h['bytes_per_image_float32']:.2f}x float32's)"
    )
