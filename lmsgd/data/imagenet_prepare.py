"""`python -m lmsgd.data.prepare imagenet2012`: the ILSVRC2012 tars to what training reads.

Input: ``ILSVRC2012_img_train.tar`` (one tar per synset, ``n01440764.tar`` of
``n01440764_NNNN.JPEG``) and ``ILSVRC2012_img_val.tar`` (flat, ``ILSVRC2012_val_000000NN.JPEG``)
in ``--manual_dir``. Output, by ``--format``:

* ``array_record`` (default) / ``tfrecord``: TFDS's own ``imagenet2012`` builder writes them
  into ``--data_dir`` (TFDS converts the 22 CMYK JPEGs and the one PNG of the train set to RGB
  JPEG, and labels the validation images with the list it ships).
* ``folders``: ``--data_dir/train/<synset>/*.JPEG`` and ``--data_dir/val/<synset>/*.JPEG``
  for ``config.data.name='image_folder'``; validation labels from TFDS's list
  (``validation_labels.txt``: line k is the synset of ``ILSVRC2012_val_%08d.JPEG`` % k);
  CMYK and PNG files become RGB JPEGs (quality 100, as TFDS does).

Safe to rerun: a prepared dataset is left as it is (folders: each finished synset). Safe to
start on every host: a lock file in ``--data_dir`` (holding host, pid and start time) lets one
process prepare; the others say who prepares and wait for it, then print the settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import socket
import sys
import tarfile
import time

from lmsgd.errors import DataError

NAME = "imagenet2012"
TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
FORMATS = ("array_record", "tfrecord", "folders")
LOCK_NAME = ".lmsgd_prepare_imagenet2012.lock"
DONE_NAME = ".lmsgd_prepared.json"  # folders: written last
# Prepared output over input: TFDS's records and the folders hold the same JPEG bytes as the
# tars (plus a few re-encoded files and the records' framing); 10% margin.
SPACE_FACTOR = 1.1
_POLL_S = float(os.environ.get("LMSGD_PREPARE_POLL_S", "10"))


def _say(msg: str) -> None:
    print(msg, flush=True)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def data_dir_root(data_dir: str | None) -> str:
    """The TFDS data_dir: ``data_dir``, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def prepare_command(data_dir: str | None, file_format: str) -> str:
    """The command that prepares imagenet2012 as `file_format` into `data_dir`."""
    fmt = "" if file_format == "array_record" else f" --format {file_format}"
    return (
        f"python -m lmsgd.data.prepare imagenet2012 --manual_dir <folder with {TARS[0]} and "
        f"{TARS[1]}> --data_dir {data_dir_root(data_dir)}{fmt}"
    )


def check_tars(manual_dir: str) -> dict[str, int]:
    """Sizes of the two tars; DataError naming what is missing and where to get it."""
    if not os.path.isdir(manual_dir):
        raise DataError(f"--manual_dir {manual_dir} is not a directory; it must hold "
                        f"{TARS[0]} and {TARS[1]}")  # fmt: skip
    missing = [t for t in TARS if not os.path.isfile(os.path.join(manual_dir, t))]
    if missing:
        raise DataError(
            f"--manual_dir {manual_dir} lacks {' and '.join(missing)}: download "
            "ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB) from "
            "https://image-net.org/download-images (free account) into it"
        )
    return {t: os.path.getsize(os.path.join(manual_dir, t)) for t in TARS}


def settings(fmt: str, data_dir: str) -> str:
    """The `--config.data.*` flags that read what `fmt` prepared into `data_dir`."""
    if fmt == "folders":
        return f"--config.data.name=image_folder --config.data.data_dir={data_dir}"
    flags = f"--config.data.name=imagenet2012 --config.data.data_dir={data_dir}"
    return flags + (" --config.data.file_format=tfrecord" if fmt == "tfrecord" else "")


# --- one preparer per directory --------------------------------------------------------------


def lock_holder(data_dir: str) -> str | None:
    """'pid P on host H since T (lock file L)' while a prepare holds `data_dir`, else None."""
    path = os.path.join(data_dir, LOCK_NAME)
    try:
        with open(path) as f:
            owner = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"unknown owner (lock file {path})"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')} since {since} (lock file {path})"


def _stale(path: str) -> bool:
    """A lock left by a dead process of this host (another host's cannot be checked)."""
    try:
        with open(path) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, ValueError):
        return False
    return False


@contextlib.contextmanager
def _exclusive(data_dir: str, fmt: str):
    """Holds the lock file for the duration; yields False (after saying who holds it) when
    another process does."""
    path = os.path.join(data_dir, LOCK_NAME)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
             "format": fmt}  # fmt: skip
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if _stale(path):
            os.unlink(path)
            with _exclusive(data_dir, fmt) as got:
                yield got
            return
        yield False
        return
    try:
        os.write(fd, json.dumps(owner).encode())
        os.close(fd)
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- TFDS: array_record / tfrecord -------------------------------------------------------------


def _builder(data_dir: str):
    from lmsgd.data import imagenet, requires

    tfds = requires.tensorflow_datasets("python -m lmsgd.data.prepare imagenet2012")
    absl_log = logging.getLogger("absl")  # a missing test tar is expected: it has no labels
    if _no_test_split_warning not in absl_log.filters:
        absl_log.addFilter(_no_test_split_warning)
    return tfds, imagenet.builder(data_dir)


def _no_test_split_warning(record: logging.LogRecord) -> bool:
    return "test split not found" not in record.getMessage()


def _tfds_done(data_dir: str, fmt: str) -> bool:
    _, builder = _builder(data_dir)
    if not builder.is_prepared():
        return False
    from lmsgd.data import imagenet

    have = imagenet.prepared_formats(builder)
    if fmt not in have:
        raise DataError(
            f"imagenet2012 in {data_dir} is already prepared as {', '.join(sorted(have))}; "
            f"read it with {settings(sorted(have)[0], data_dir)}, or prepare {fmt} into "
            "another --data_dir"
        )
    return True


def _prepare_tfds(manual_dir: str, data_dir: str, fmt: str) -> None:
    tfds, builder = _builder(data_dir)
    # A run killed mid-way leaves TFDS's temporary folder; we hold the lock, so it is stale.
    for left in sorted((builder.data_path.parent).glob("incomplete.*")):
        shutil.rmtree(left, ignore_errors=True)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    builder.download_and_prepare(download_config=config, file_format=fmt)


# --- image folders -----------------------------------------------------------------------------


def validation_labels() -> list[str]:
    """TFDS's validation labels: line k (from 1) is the synset of ILSVRC2012_val_%08d.JPEG.
    Read from the installed package's files (importing TFDS would start TensorFlow)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        from lmsgd.data import requires

        requires.tensorflow_datasets("the validation labels of imagenet2012")  # raises
    folder = os.path.join(spec.submodule_search_locations[0], "datasets", "imagenet2012")
    with open(os.path.join(folder, "validation_labels.txt")) as f:
        return f.read().split()


def rgb_jpeg(data: bytes) -> bytes:
    """`data` unchanged if it is an RGB or greyscale JPEG, else re-encoded as an RGB JPEG
    (the CMYK JPEGs and the PNG named .JPEG of ILSVRC2012's train set)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            return data
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=100)
        return out.getvalue()


def _write_files(folder: str, files) -> int:
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    n = 0
    for name, data in files:
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(rgb_jpeg(data))
        n += 1
    os.rename(tmp, folder)
    return n


def _members(tar: tarfile.TarFile):
    for m in tar:
        if m.isfile():
            yield os.path.basename(m.name), tar.extractfile(m).read()


def _prepare_folders(manual_dir: str, data_dir: str) -> dict[str, int]:
    counts = {"train": 0, "val": 0}
    train_dir = os.path.join(data_dir, "train")
    os.makedirs(train_dir, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, TARS[0])) as outer:
        for member in outer:
            if not member.isfile() or not member.name.endswith(".tar"):
                continue
            synset = os.path.basename(member.name)[: -len(".tar")]
            folder = os.path.join(train_dir, synset)
            if os.path.isdir(folder):  # done by an earlier run
                counts["train"] += len(os.listdir(folder))
                continue
            data = io.BytesIO(outer.extractfile(member).read())
            with tarfile.open(fileobj=data) as inner:
                counts["train"] += _write_files(folder, _members(inner))
    labels = validation_labels()
    val_dir = os.path.join(data_dir, "val")
    if os.path.isdir(val_dir):
        counts["val"] = sum(len(os.listdir(os.path.join(val_dir, d))) for d in os.listdir(val_dir))
        return counts
    tmp = val_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(os.path.join(manual_dir, TARS[1])) as tar:
        for name, data in _members(tar):
            number = int(name.split("_")[-1].split(".")[0])  # ILSVRC2012_val_00000001.JPEG
            folder = os.path.join(tmp, labels[number - 1])
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(rgb_jpeg(data))
            counts["val"] += 1
    os.rename(tmp, val_dir)
    return counts


def _folders_left(manual_dir: str, data_dir: str) -> float:
    """The fraction of the work an earlier, interrupted `folders` run left (by synsets)."""
    train_dir = os.path.join(data_dir, "train")
    if not os.path.isdir(train_dir):
        return 1.0
    with tarfile.open(os.path.join(manual_dir, TARS[0])) as outer:  # headers only
        synsets = [os.path.basename(m.name)[: -len(".tar")] for m in outer
                   if m.isfile() and m.name.endswith(".tar")]  # fmt: skip
    done = sum(os.path.isdir(os.path.join(train_dir, s)) for s in synsets)
    return 1.0 - done / max(len(synsets), 1)


def _folders_done(data_dir: str) -> bool:
    return os.path.isfile(os.path.join(data_dir, DONE_NAME))


def check_folders_complete(root: str) -> None:
    """DataError (one line naming the command that finishes it) when `root` is an image
    folder that `prepare --format folders` is writing or left unfinished."""
    if not os.path.isdir(root) or os.path.isfile(os.path.join(root, DONE_NAME)):
        return
    holder = lock_holder(root)
    partial = [n for n in ("train", "val") if os.path.isdir(os.path.join(root, n + ".partial"))]
    if os.path.isdir(os.path.join(root, "train")):
        with os.scandir(os.path.join(root, "train")) as entries:
            if any(e.name.endswith(".partial") for e in entries):
                partial.append("train/<synset>")
    if holder is None and not partial:
        return
    left = ", ".join(p + ".partial" for p in partial)
    state = f"being prepared now by {holder}" if holder else (
        f"partly prepared ({left} left by a stopped run)")  # fmt: skip
    raise DataError(
        f"image folder root {root} is {state}: run `{prepare_command(root, 'folders')}` to "
        "finish it (or wait for it), then rerun"
    )


# --- the command -------------------------------------------------------------------------------


def prepare(manual_dir: str, data_dir: str | None, fmt: str) -> str:
    """Prepares (or waits for another process to prepare) imagenet2012 in `fmt`; returns the
    `--config.data.*` settings that read it."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "folders" and not data_dir:
        raise DataError("--format folders needs --data_dir: the folder to write train/ and val/ "
                        "into (it becomes --config.data.data_dir)")  # fmt: skip
    for flag, path in (("--manual_dir", manual_dir), ("--data_dir", data_dir_root(data_dir))):
        if "://" in path:
            raise DataError(
                f"{flag} {path}: prepare reads and writes a local or mounted filesystem; prepare "
                "on a disk, then copy the result to the bucket (e.g. gsutil -m cp -r)"
            )
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    data_dir = os.path.abspath(data_dir_root(data_dir))
    done = (lambda: _folders_done(data_dir)) if fmt == "folders" else (
        lambda: _tfds_done(data_dir, fmt))  # fmt: skip
    flags = settings(fmt, data_dir)
    if done():
        _say(f"imagenet2012 is already prepared as {fmt} in {data_dir}; train with:\n  {flags}")
        return flags
    sizes = check_tars(manual_dir)
    os.makedirs(data_dir, exist_ok=True)
    need = SPACE_FACTOR * sum(sizes.values())
    free = shutil.disk_usage(data_dir).free
    told = False
    while True:
        with _exclusive(data_dir, fmt) as mine:
            if mine:
                if done():  # finished by the process we waited for
                    break
                if fmt == "folders":  # a rerun finishes what an interrupted one left
                    need *= _folders_left(manual_dir, data_dir)
                _say(f"preparing imagenet2012 as {fmt} from {manual_dir} into {data_dir}: "
                     f"needs about {_gb(need)} of disk ({_gb(free)} free there)")  # fmt: skip
                if free < need:
                    raise DataError(
                        f"{data_dir} has {_gb(free)} free, imagenet2012 as {fmt} needs about "
                        f"{_gb(need)}: free space or choose another --data_dir"
                    )
                start = time.time()
                if fmt == "folders":
                    counts = _prepare_folders(manual_dir, data_dir)
                    with open(os.path.join(data_dir, DONE_NAME), "w") as f:
                        json.dump({"format": fmt, "images": counts}, f)
                else:
                    _prepare_tfds(manual_dir, data_dir, fmt)
                _say(f"prepared imagenet2012 as {fmt} in {data_dir} in {time.time() - start:.0f} s")
                break
        if done():
            break
        if not told:
            _say(f"imagenet2012 is being prepared into {data_dir} by {lock_holder(data_dir)}; "
                 "waiting for it (if that process is gone, delete the lock file)")  # fmt: skip
            told = True
        time.sleep(_POLL_S)
    _say(f"train with:\n  {flags}")
    return flags


def main(args) -> None:
    try:
        prepare(args.manual_dir, args.data_dir, args.format)
    except DataError as e:
        print(f"lmsgd.data.prepare: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
