"""A `gs://` workdir: config.json, summary.json and metrics.jsonl go through epath (an object
store cannot rename or append), so a TPU pod run with a bucket workdir (launch/tpu_pod.sh)
gets them, and a rerun is checked against the bucket's config.json. The bucket is emulated:
epath's operations on `gs://bucket/...` are redirected to a local folder."""

import json

import pytest
from etils.epath import gpath
from etils.epath import testing as epath_testing

from lmsgd.config import base_config
from lmsgd.errors import IncompatibleCheckpointError
from lmsgd.metric_logging import JsonlWriter, drop_metrics_after, read_metrics
from lmsgd.workdir import check_compatible, config_as_json, write_json

BUCKET = "gs://bucket/runs/a"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    # With TensorFlow installed epath sends gs:// to tf.io.gfile before consulting the
    # backends mock_epath replaces; make it consult them.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    calls = []

    def local(original, path, *args, **kwargs):
        path = str(path)
        calls.append(path)
        assert path.startswith("gs://bucket/"), path
        local_path = tmp_path / path[len("gs://bucket/") :]
        local_path.parent.mkdir(parents=True, exist_ok=True)  # a bucket has no directories
        return original(str(local_path), *args, **kwargs)

    with epath_testing.mock_epath(open=local, exists=local):
        yield tmp_path, calls


def test_json_files_and_the_config_check_use_the_bucket(bucket):
    root, calls = bucket
    config = base_config()
    write_json(BUCKET, "config.json", config_as_json(config))
    assert json.loads((root / "runs/a/config.json").read_text()) == config_as_json(config)
    assert any(c.endswith("config.json") for c in calls)  # through epath, not open()
    check_compatible(BUCKET, config)  # the same config passes
    other = base_config()
    other.num_epochs = config.num_epochs + 1
    with pytest.raises(IncompatibleCheckpointError, match="num_epochs"):
        check_compatible(BUCKET, other)


def test_metrics_are_written_whole_and_dropped_on_resume(bucket):
    root, _ = bucket
    writer = JsonlWriter(f"{BUCKET}/metrics.jsonl", remote_write_interval_s=3600)
    for step in (1, 2, 3):
        writer.write_scalars(step, {"train/loss": 1.0 / step})
    assert not (root / "runs/a/metrics.jsonl").exists()  # buffered until flush or interval
    writer.flush()
    assert [r["step"] for r in read_metrics(BUCKET)] == [1, 2, 3]
    writer.close()
    # A resumed run: records after the restored step go, new ones append to the kept ones.
    assert drop_metrics_after(BUCKET, 1) == 2
    writer = JsonlWriter(f"{BUCKET}/metrics.jsonl", remote_write_interval_s=0)
    writer.write_scalars(2, {"eval/top1": 0.5})  # interval 0: written at once
    assert [(r["step"], r["kind"]) for r in read_metrics(BUCKET)] == [(1, "train"), (2, "eval")]
    writer.close()
