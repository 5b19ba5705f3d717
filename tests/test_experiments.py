"""The large-batch experiment end to end on the `tiny` preset (built-in digits, a few steps)."""

import json
import pathlib

import pytest

from lmsgd.config import validate_config
from lmsgd.experiments import large_batch as lb
from lmsgd.optim import scale_epochs

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPE_FILES = sorted(
    p for p in (REPO / "configs" / "cifar10_large_batch").glob("*.py") if p.name != "__init__.py"
)


def test_every_recipe_has_a_config_file_and_nothing_else_is_there():
    assert sorted(p.name for p in RECIPE_FILES) == sorted(r.file for r in lb.RECIPES.values())


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_recipe_configs_validate_and_document_themselves(path):
    doc = path.read_text().split('"""')[1]
    assert "python -m lmsgd.train" in doc and "Hardware" in doc and "Expected" in doc
    assert f"configs/cifar10_large_batch/{path.name}" in doc
    for preset in lb.PRESETS:
        config = lb.load_recipe(path, preset)
        validate_config(config)
        p = lb.PRESETS[preset]
        assert config.num_epochs == p.num_epochs
        assert config.global_batch_size in (p.large_batch, p.small_batch)
        assert config.num_cpu_devices == p.num_devices


def test_one_scaling_rule_from_the_papers_epochs():
    full = lb.load_recipe(lb.recipe_path("f"), "full")
    quick = lb.load_recipe(lb.recipe_path("f"), "quick")
    assert full.optimizer.rmsprop_warmup.beta_center == 10.0
    assert full.optimizer.slow_start.boundaries == (40.0, 70.0, 85.0)
    assert quick.optimizer.to_dict() == scale_epochs(full.optimizer, 24.0).to_dict()
    assert quick.optimizer.rmsprop_warmup.beta_center == pytest.approx(10 * 24 / 90)
    goyal = lb.load_recipe(lb.recipe_path("c"), "quick").optimizer
    assert goyal.goyal.warmup_epochs == pytest.approx(5 * 24 / 90)
    assert goyal.goyal.boundaries == pytest.approx((8.0, 16.0, 80 * 24 / 90))
    # The paper's batch-to-dataset ratio: 1,280 / 50,000 = 2.6% (32,768 / 1,281,167 = 2.6%).
    assert full.global_batch_size == lb.load_recipe(lb.recipe_path("c"), "quick").global_batch_size
    assert abs(1280 / 50_000 - 32768 / 1_281_167) < 1e-3
    assert lb.load_recipe(lb.recipe_path("a"), "full").global_batch_size == 128
    ablation = lb.load_recipe(lb.recipe_path("g"), "quick")
    assert ablation.model.norm_mode == "moving_average"
    assert ablation.optimizer.to_dict() == quick.optimizer.to_dict()  # scaled once, not twice


def test_missing_cifar10_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMSGD_SHARED_DATA", str(tmp_path / "no_shared"))
    monkeypatch.setenv("LMSGD_CACHE_DIR", str(tmp_path / "no_cache"))
    monkeypatch.delenv("LMSGD_CIFAR10_DIR", raising=False)
    with pytest.raises(SystemExit, match="needs CIFAR-10.*cifar10-jpeg.tar.gz not found"):
        lb.main(["--preset", "quick", "--results_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    # --dry_run lists the commands without data.
    assert lb.main(["--preset", "full", "--results_dir", str(tmp_path / "o"), "--dry_run"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 14 and all("python -m lmsgd.train" in c for c in commands)


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path):
    out = tmp_path / "results"
    assert lb.main(["--preset", "tiny", "--results_dir", str(out), "--recipes", "c,f"]) == 0

    results = json.loads((out / "results.json").read_text())
    for key in ("experiment", "preset", "recipes", "seeds", "hardware", "wall_time_s", "runs",
                "summary", "eval_examples", "devices"):  # fmt: skip
        assert key in results, key
    assert results["preset"]["name"] == "tiny" and results["preset"]["reduced"]
    assert results["hardware"]["cpu_cores"] >= 1 and results["devices"] == "8 x cpu"
    assert [r["recipe"] for r in results["runs"]] == ["c", "f"]
    for run in results["runs"]:
        assert run["status"] == "ok", run["error"]
        for key in ("final_top1", "best_top1", "best_epoch", "wall_time_s", "train_wall_time_s"):
            assert isinstance(run[key], float), key
        assert 0 <= run["final_top1"] <= run["best_top1"] <= 1
        assert run["eval_examples"] == 360 and run["steps"] == 6
        assert run["num_devices"] == 8 and run["bn_span_examples"] == 5  # 40 / 8 per device
        train, evals = run["curves"]["train"], run["curves"]["eval"]
        assert [t["step"] for t in train] == [2, 4, 6]
        assert all({"step", "epoch", "loss", "accuracy"} <= set(t) for t in train)
        assert [e["step"] for e in evals] == [4, 6] and all("top1" in e for e in evals)
        assert run["command"].startswith("python -m lmsgd.train --config=")
        assert (pathlib.Path(run["workdir"]) / "metrics.jsonl").exists()
    assert results["runs"][1]["settings"]["optimizer"] == "rmsprop_warmup"

    table = (out / "results.md").read_text()
    assert "REDUCED" in table
    rows = [line for line in table.splitlines() if line.startswith("| (")]
    assert len(rows) == 2 and rows[0].startswith("| (c)") and rows[1].startswith("| (f)")
    assert all(line.count("|") == 9 for line in rows)
    assert (out / "test_accuracy.png").stat().st_size > 0

    # A rerun reuses the finished runs instead of training again.
    again = lb.run_experiment("tiny", out, ["c"], [0], echo=lambda *a: None)
    assert again["runs"][0]["final_top1"] == results["runs"][0]["final_top1"]
