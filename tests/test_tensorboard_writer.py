"""TensorBoard event files written without TensorFlow read back as what was logged."""

import struct
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from lmsgd.metric_logging import create_writer
from lmsgd.tensorboard_writer import TensorBoardWriter

LOGGED = {
    1: {"train/loss": 2.5, "train/accuracy": 0.125},
    2: {"train/loss": 1.75, "eval/top1": 0.5, "steps_per_sec": 3.0},
    5: {"train/loss": float("nan")},
}


def read_records(path):
    """The TFRecord framing by hand: length, its masked CRC32C, data, the data's CRC."""
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        (length_crc,) = struct.unpack("<I", data[i + 8 : i + 12])
        assert length_crc == masked_crc32c(data[i : i + 8])
        payload = data[i + 12 : i + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[i + 12 + length : i + 16 + length])
        assert payload_crc == masked_crc32c(payload)
        out.append(event_pb2.Event.FromString(payload))
        i += 16 + length
    return out


def scalars(events):
    return [
        (e.step, v.tag, v.simple_value)
        for e in events
        if e.HasField("summary")
        for v in e.summary.value
    ]


def _write(logdir):
    writer = TensorBoardWriter(str(logdir))
    for step, values in LOGGED.items():
        writer.write_scalars(step, values)
    writer.close()
    return writer.path


def test_event_file_records_hold_the_logged_scalars(tmp_path):
    path = _write(tmp_path / "tb")
    files = list((tmp_path / "tb").iterdir())
    assert [f.name for f in files] == [path.rsplit("/", 1)[1]]
    assert files[0].name.startswith("events.out.tfevents.")
    events = read_records(files[0])
    assert events[0].file_version == "brain.Event:2"
    got = scalars(events)
    want = [(s, k, v) for s, values in LOGGED.items() for k, v in values.items()]
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want]
    np.testing.assert_array_equal(
        [v for *_, v in got], np.float32([v for *_, v in want])
    )  # float32 in the file; NaN stays NaN


def test_tensorboard_reads_them_back_without_tensorflow(tmp_path):
    """TensorBoard's own reader, in a process where TensorFlow cannot be imported."""
    _write(tmp_path / "tb")
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"  # import tensorflow -> ImportError: the stub
        "from tensorboard.backend.event_processing import event_accumulator as ea\n"
        f"acc = ea.EventAccumulator({str(tmp_path / 'tb')!r}); acc.Reload()\n"
        "for tag in sorted(acc.Tags()['scalars']):\n"
        "    for e in acc.Scalars(tag): print(tag, e.step, repr(e.value))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    read = sorted(line.split() for line in out.stdout.splitlines())
    want = sorted(
        [k, str(s), repr(float(np.float32(v)))]
        for s, values in LOGGED.items()
        for k, v in values.items()
    )
    assert read == want


def test_create_writer_puts_the_event_file_in_workdir_tensorboard(tmp_path):
    writer = create_writer(str(tmp_path), tensorboard=True)
    writer.write_scalars(3, {"train/loss": 0.25})
    writer.close()
    (event_file,) = (tmp_path / "tensorboard").iterdir()
    assert scalars(read_records(event_file)) == [(3, "train/loss", pytest.approx(0.25))]
    assert (tmp_path / "metrics.jsonl").read_text().strip() == (
        '{"step": 3, "kind": "train", "loss": 0.25}'
    )
