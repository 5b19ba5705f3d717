"""ImageNet from the ILSVRC2012 tars: `python -m lmsgd.data.prepare imagenet2012` on a miniature
ILSVRC written in the real layouts (tests/helpers.py), then read and trained on.

Fast: preparing ArrayRecords and image folders (the CMYK JPEG and the PNG named .JPEG end up
RGB JPEGs; validation images get TFDS's labels), rerunning, one preparer per directory, the
one-line errors, and one global order for any process count. Slow (multiprocess): a run on
2 processes resumed on 1, and the reverse, against the uninterrupted run.
"""

import contextlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from helpers import MINI_CMYK, MINI_PNG, MINI_VAL, write_mini_ilsvrc
from PIL import Image

import lmsgd.data as data
from lmsgd.data import imagenet_prepare
from lmsgd.errors import DataError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _prepare(manual, data_dir, fmt):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        flags = imagenet_prepare.prepare(str(manual), str(data_dir), fmt)
    return flags, out.getvalue()


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The tars, prepared once as ArrayRecord and once as image folders."""
    root = tmp_path_factory.mktemp("ilsvrc")
    facts = write_mini_ilsvrc(root / "manual")
    runs = {fmt: _prepare(root / "manual", root / fmt, fmt) for fmt in ("array_record", "folders")}
    return root, facts, runs


def _cfg(root, fmt, **kw):
    cfg = data.default_data_config()
    cfg.name = "image_folder" if fmt == "folders" else "imagenet2012"
    cfg.data_dir, cfg.image_size = str(root / fmt), 16
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def _tfds_labels():
    import tensorflow_datasets as tfds

    folder = tfds.core.tfds_path("datasets/imagenet2012")
    return (folder / "labels.txt").read_text().split(), (
        folder / "validation_labels.txt"
    ).read_text().split()


def test_prepare_array_record_says_disk_and_settings_and_keeps_every_image(mini):
    root, facts, runs = mini
    flags, out = runs["array_record"]
    assert "needs about" in out and "free there" in out
    assert (
        flags == f"--config.data.name=imagenet2012 --config.data.data_dir={root / 'array_record'}"
    )
    assert out.rstrip().endswith(flags)
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.builder("imagenet2012", data_dir=str(root / "array_record"))
    names, val_labels = _tfds_labels()
    seen = {}
    for split in ("train", "validation"):
        source = builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
        for i in range(len(source)):
            ex = tf.train.Example.FromString(source[i]).features.feature
            name = ex["file_name"].bytes_list.value[0].decode()
            image = ex["image"].bytes_list.value[0]
            assert image[:2] == b"\xff\xd8", name  # JPEG, also the PNG
            assert tf.io.decode_jpeg(image).shape[-1] == 3, name  # RGB, also the CMYK one
            seen[name] = names[ex["label"].int64_list.value[0]]
    train = {n: s for n, s in seen.items() if not n.startswith("ILSVRC2012_val_")}
    assert len(train) == facts["train"] and {MINI_CMYK, MINI_PNG} <= set(train)
    assert all(n.startswith(s + "_") for n, s in train.items())
    val = [seen[f"ILSVRC2012_val_{k:08d}.JPEG"] for k in range(1, MINI_VAL + 1)]
    assert val == val_labels[:MINI_VAL] == facts["val_labels"]


def test_prepare_folders_applies_the_validation_labels_and_fixes_cmyk_and_png(mini):
    root, facts, runs = mini
    flags, out = runs["folders"]
    assert flags == f"--config.data.name=image_folder --config.data.data_dir={root / 'folders'}"
    _, val_labels = _tfds_labels()
    for k in range(1, MINI_VAL + 1):
        assert (
            root / "folders" / "val" / val_labels[k - 1] / f"ILSVRC2012_val_{k:08d}.JPEG"
        ).is_file()
    files = sorted((root / "folders").rglob("*.JPEG"))
    assert len(files) == facts["train"] + MINI_VAL
    for f in files:
        with Image.open(f) as im:
            assert (im.format, im.mode) == ("JPEG", "RGB"), f
    assert sorted(p.name for p in (root / "folders" / "train").iterdir()) == facts["synsets"]
    info = data.get_dataset_info(_cfg(root, "folders"))
    assert (info.num_train_examples, info.num_eval_examples) == (facts["train"], MINI_VAL)


def test_rerun_skips_and_another_format_in_the_same_directory_is_refused(mini):
    root, _, runs = mini
    for fmt in ("array_record", "folders"):
        flags, out = _prepare(root / "manual", root / fmt, fmt)
        assert (
            out.startswith(f"imagenet2012 is already prepared as {fmt}") and flags == runs[fmt][0]
        )
    with pytest.raises(DataError, match="already prepared as array_record.*another --data_dir"):
        _prepare(root / "manual", root / "array_record", "tfrecord")
    # Training asks for the format the data has.
    with pytest.raises(DataError, match="--config.data.file_format=array_record"):
        data.get_dataset_info(_cfg(root, "array_record", file_format="tfrecord"))


def test_an_interrupted_folders_run_is_finished_without_redoing_its_synsets(mini, tmp_path):
    root, facts, _ = mini
    target = tmp_path / "folders"
    shutil.copytree(root / "folders", target)
    # Stopped inside the train tar: the last synset half written, val/ not started.
    (target / imagenet_prepare.DONE_NAME).unlink()
    shutil.rmtree(target / "val")
    last = target / "train" / facts["synsets"][-1]
    last.rename(last.with_name(last.name + ".partial"))
    kept = target / "train" / facts["synsets"][0]
    marker = kept / "kept"  # a prepared synset is not written again
    marker.write_text("")
    flags, out = _prepare(root / "manual", target, "folders")
    assert out.startswith("preparing imagenet2012 as folders") and out.rstrip().endswith(flags)
    assert marker.exists() and last.is_dir() and not last.with_name(last.name + ".partial").exists()
    assert len(list((target / "val").rglob("*.JPEG"))) == MINI_VAL
    assert (target / imagenet_prepare.DONE_NAME).exists()


def test_a_second_process_says_who_prepares_and_waits(tmp_path, monkeypatch):
    write_mini_ilsvrc(tmp_path / "manual", per_synset=1)
    target = tmp_path / "folders"
    target.mkdir()
    lock = target / imagenet_prepare.LOCK_NAME
    lock.write_text(json.dumps({"host": "host-7", "pid": 4242, "started": time.time()}))
    monkeypatch.setattr(imagenet_prepare, "_POLL_S", 0.05)
    result = {}

    def second():
        result["flags"], result["out"] = _prepare(tmp_path / "manual", target, "folders")

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # waits while the lock is held
    (target / imagenet_prepare.DONE_NAME).write_text("{}")  # the other one finishes
    lock.unlink()
    waiter.join(10)
    assert not waiter.is_alive()
    first, *rest = result["out"].splitlines()
    assert first.startswith(
        f"imagenet2012 is being prepared into {target} by pid 4242 on host host-7"
    )
    assert not (target / "train").exists()  # it prepared nothing itself
    assert rest[-1].strip() == result["flags"]


def test_training_on_partly_prepared_folders_names_the_command(mini, tmp_path):
    root, _, _ = mini
    partial = tmp_path / "folders"
    shutil.copytree(root / "folders", partial)
    (partial / imagenet_prepare.DONE_NAME).unlink()
    (partial / "val").rename(partial / "val.partial")  # stopped while writing val/
    with pytest.raises(DataError) as e:
        data.get_dataset_info(_cfg(tmp_path, "folders"))
    msg = str(e.value)
    assert "partly prepared (val.partial left by a stopped run)" in msg and "\n" not in msg
    assert f"--data_dir {partial} --format folders`" in msg
    (partial / "val.partial").rename(partial / "val")  # a user's own folders: no marker, fine
    assert data.get_dataset_info(_cfg(tmp_path, "folders")).num_eval_examples == MINI_VAL


def test_errors_are_one_line_naming_the_value(tmp_path):
    with pytest.raises(
        DataError, match="lacks ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"
    ):
        imagenet_prepare.prepare(str(tmp_path), str(tmp_path / "out"), "array_record")
    with pytest.raises(DataError, match="--format folders needs --data_dir"):
        imagenet_prepare.prepare(str(tmp_path), None, "folders")
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.data.prepare", "imagenet2012", f"--manual_dir={tmp_path}",
         "--format=zip"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "lmsgd.data.prepare: error: argument --format: invalid choice: 'zip' (choose from "
        "'array_record', 'tfrecord', 'folders') (see --help)"
    ]


def test_one_global_order_for_any_process_count(mini):
    """Global batch s of epoch e: rows [s G, (s + 1) G) of the epoch's permutation of all
    examples (seeded by (seed, e)); process p of P reads rows p G/P .. (p + 1) G/P of it."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from lmsgd.data.augment import example_seed

    root, facts, _ = mini
    cfg, g, seed, n = _cfg(root, "array_record"), 16, 3, facts["train"]
    steps = n // g
    # Labels straight from the records (TFDS's own reader), by index.
    builder = tfds.builder("imagenet2012", data_dir=str(root / "array_record"))
    source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    labels = np.array([source[i]["label"] for i in range(n)])
    one = data.train_batches(cfg, global_batch_size=g, seed=seed, sharding=None,
                             process_index=0, process_count=1)  # fmt: skip
    two = [data.train_batches(cfg, global_batch_size=g, seed=seed, sharding=None,
                              process_index=p, process_count=2) for p in range(2)]  # fmt: skip
    for epoch in range(2):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), example_seed(seed, epoch, 0, stream=0)
        ).numpy()
        assert sorted(perm) == list(range(n))
        for s in range(steps):
            a, (b0, b1) = next(one), [next(t) for t in two]
            np.testing.assert_array_equal(a["label"], labels[perm[s * g : (s + 1) * g]])
            np.testing.assert_array_equal(a["label"], np.concatenate([b0["label"], b1["label"]]))
            np.testing.assert_array_equal(a["image"], np.concatenate([b0["image"], b1["image"]]))
    # Resuming at (epoch 1, step 1) on 2 processes: process 1's rows of that step.
    resumed = data.train_batches(
        cfg, global_batch_size=g, seed=seed, sharding=None, start_epoch=1, start_step=1,
        process_index=1, process_count=2,
    )  # fmt: skip
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), example_seed(seed, 1, 0, stream=0)
    ).numpy()
    np.testing.assert_array_equal(next(resumed)["label"], labels[perm[g + g // 2 : 2 * g]])
    # Evaluation: every validation image once.
    ev = iter(data.eval_batches(cfg, global_batch_size=g, sharding=None))
    masks = [next(ev)["mask"] for _ in range(3)]
    assert sum(float(m.sum()) for m in masks) == MINI_VAL


# ---- end to end: trained on 2 processes, resumed on 1, and the reverse --------------------

STEPS_PER_EPOCH = 3  # 62 training images, global batch 16
STOP = 4  # epoch 1, step 1; the run has 5 steps, so the first step after the resume is its last
TINY = [
    "--config=configs/default.py", "--config.allreduce.dtype=float32",
    "--config.optimizer.name=momentum", "--config.model.width_multiplier=0.25",
    "--config.data.image_size=16", "--config.global_batch_size=16",
    "--config.eval_batch_size=16", "--config.num_epochs=1.6",  # ceil(1.6 * 3) = 5 steps
    "--config.logging.tensorboard=False", f"--config.checkpoint.every_steps={STOP}",
    "--config.checkpoint.async_save=False", "--config.logging.every_steps=1",
]  # fmt: skip


def _env(devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHON=sys.executable,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")  # fmt: skip
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    return env


def _one_process(workdir, flags, *extra):
    from lmsgd import cli
    from lmsgd.train import train_and_evaluate

    config, _ = cli.parse(["lmsgd.train", f"--workdir={workdir}", *TINY, *flags.split(), *extra])
    return train_and_evaluate(config, str(workdir))


def _two_processes(workdir, flags, *extra):
    out = subprocess.run(
        ["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "4", "--quiet", "--",
         f"--workdir={workdir}", *TINY, *flags.split(), *extra],
        cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log0 = (workdir / "logs" / "process_0.log").read_text()
    assert out.returncode == 0, log0[-3000:] + out.stderr[-2000:]
    return log0


def _params(workdir):
    from lmsgd.checkpointing import load_state_arrays

    step, state = load_state_arrays(str(workdir))
    return step, [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def _max_diff(a, b):
    (sa, pa), (sb, pb) = _params(a), _params(b)
    assert sa == sb == 5
    return max(float(np.max(np.abs(x - y))) for x, y in zip(pa, pb))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("fmt", ["array_record", "folders"])
def test_two_processes_resume_on_one_and_one_on_two_with_the_same_examples(mini, tmp_path, fmt):
    root, _, runs = mini
    flags = runs[fmt][0]
    _one_process(tmp_path / "straight", flags)
    # Stopped on 2 processes x 4 devices, resumed on 1 process x 8 devices.
    _two_processes(tmp_path / "two", flags, f"--config.stop_after_steps={STOP}")
    assert _params(tmp_path / "two")[0] == STOP
    assert json.loads((tmp_path / "two" / "layout.json").read_text())["num_processes"] == 2
    summary = _one_process(tmp_path / "two", flags)
    assert summary["resumed_from_step"] == STOP
    assert _max_diff(tmp_path / "two", tmp_path / "straight") < 1e-6
    if fmt == "folders":  # image folders: one direction (their order was process-free before)
        return
    # Stopped on 1 process, resumed on 2.
    _one_process(tmp_path / "one", flags, f"--config.stop_after_steps={STOP}")
    log0 = _two_processes(tmp_path / "one", flags)
    assert f"resumed from checkpoint {STOP}" in log0
    assert _max_diff(tmp_path / "one", tmp_path / "straight") < 1e-6


@pytest.mark.slow
def test_training_on_unprepared_imagenet_stops_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "lmsgd.train", f"--workdir={tmp_path / 'w'}", *TINY,
         "--config.data.name=imagenet2012", f"--config.data.data_dir={tmp_path / 'none'}"],
        cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "lmsgd.train: error: imagenet2012 is not prepared"
    )
    assert "python -m lmsgd.data.prepare imagenet2012 --manual_dir" in lines[0]
    assert not (tmp_path / "none").exists()
