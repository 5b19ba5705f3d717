"""The batch-size / learning-rate sweep: planning, order, reuse and resume, divergence records
(on the `tiny` preset with the built-in digits), and the README table against the committed
results."""

import json
import pathlib

import pytest

from lmsgd.experiments import large_batch as lb
from lmsgd.experiments import report, runner
from lmsgd.experiments import sweep as sw

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = sw.SWEEPS["sweep_tiny"]


def test_plan_has_every_point_once_seed_major_informative_order():
    points = sw.plan(TINY)
    # batch points (c, f at 40 and 80) + the learning-rate points beyond x1 (f x4 at 80).
    assert len(points) == len(set(points)) == (2 * 2 + 1) * 2
    assert [p.seed for p in points] == [0] * 5 + [1] * 5
    assert [(p.recipe, p.batch, p.lr_multiplier) for p in points[:5]] == [
        ("c", 40, 1.0), ("f", 40, 1.0), ("c", 80, 1.0), ("f", 80, 1.0), ("f", 80, 4.0)]  # fmt: skip
    assert len({p.name for p in points}) == len(points)

    full = sw.plan(sw.SWEEPS["sweep"])
    assert len(full) == (4 * 4 + 2 * 2) * 2 == 40
    first = full[:20]
    assert {p.seed for p in first} == {0}
    # The smallest batch, then the largest, then the learning-rate batch with its multipliers.
    assert [p.batch for p in first[:8]] == [1280] * 4 + [10240] * 4
    assert [(p.batch, p.lr_multiplier) for p in first[12:16]] == [(5120, 4.0)] * 2 + [
        (5120, 2.0)] * 2  # fmt: skip
    assert {p.batch for p in first[16:]} == {2560}
    assert max(p.batch for p in full) / 50_000 >= 0.2


def test_point_commands_set_batch_ghost_bn_and_scaled_rate():
    sweep = sw.SWEEPS["sweep"]
    goyal_x4 = sw.point_run(sweep, sw.Point("c", 5120, 4.0, 1), pathlib.Path("/r"))
    cmd = goyal_x4.display_command()
    assert "c_goyal.py:sweep" in cmd and "--config.seed=1" in cmd
    assert "--config.global_batch_size=5120" in cmd
    assert "--config.model.bn_virtual_batch_size=160" in cmd
    assert "--config.optimizer.lr_per_256=0.4" in cmd
    assert goyal_x4.config.global_batch_size == 5120
    assert goyal_x4.config.model.bn_virtual_batch_size == 160
    assert goyal_x4.config.num_cpu_devices == 1
    settings = lb.load_recipe(lb.recipe_path("c"), "sweep")
    assert settings.num_epochs == 12.0 and settings.data.image_size == 8
    # Each recipe's own (linear) scaling rule sets the x1 rate; no override at x1.
    lars = sw.point_run(sweep, sw.Point("d", 10240, 1.0, 0), pathlib.Path("/r"))
    assert "lr_per_256" not in lars.display_command()
    assert runner.settings(lars.config)["base_learning_rate"] == pytest.approx(29 / 128 * 40)
    assert runner.settings(lars.config)["bn_examples"] == 160


def fake_execute(outcomes):
    """Stands in for runner.execute: the record a run would give, by point name."""
    calls = []

    def execute(run):
        calls.append(run.name)
        status, value = outcomes.get(run.name, ("ok", 0.5))
        ok = status == "ok"
        return {
            "status": status,
            "diverged_step": value if status == "diverged" else None,
            "final_top1": value if ok else None,
            "best_top1": value if ok else None,
            "best_epoch": 0.15 if ok else None,
            "final_train_loss": 2.0 if ok else None,
            "curves": {"train": [{"step": 2, "loss": 2.0}],
                       "eval": [{"step": 2, "epoch": 0.1, "top1": value}] if ok else []},
            "steps": 3, "steps_per_epoch": 17,
            "settings": runner.settings(run.config),
            "bn_span_examples": 5, "num_devices": 8, "eval_examples": 360,
            "wall_time_s": 1.0, "train_wall_time_s": 0.5, "images_per_s": 100.0,
            "error": None if ok else f"{status} tail",
        }  # fmt: skip

    return execute, calls


def test_sweep_records_reuses_finished_and_diverged_runs_and_retries_failures(tmp_path):
    names = [p.name for p in sw.plan(TINY)]
    diverging = "f_paper_b00080_lrx4_seed0"
    failing = "c_goyal_b00080_lrx1_seed1"
    execute, calls = fake_execute({diverging: ("diverged", 2), failing: ("failed", None)})
    quiet = lambda *a: None  # noqa: E731
    records = sw.run_sweep("sweep_tiny", tmp_path, execute_run=execute, echo=quiet)
    assert calls == names  # in plan order
    assert [r["status"] for r in records].count("diverged") == 1
    div = json.loads((tmp_path / "runs" / f"{diverging}.json").read_text())
    assert div["status"] == "diverged" and div["diverged_step"] == 2 and div["final_top1"] is None
    assert div["point"] == {"recipe": "f", "batch": 80, "lr_multiplier": 4.0, "seed": 0}
    assert "lr_per_256=0.4" in div["command"]
    for path in (tmp_path / "runs").glob("*.json"):
        assert path.stat().st_size < 4000  # small files: committed as they come
    assert (tmp_path / ".gitignore").read_text().startswith("/work/")
    assert (tmp_path / "results.md").exists() and (tmp_path / "accuracy_vs_lr.png").exists()

    # Rerun: ok and diverged runs are reused, the failed one runs again.
    execute2, calls2 = fake_execute({})
    sw.run_sweep("sweep_tiny", tmp_path, execute_run=execute2, echo=quiet)
    assert calls2 == [failing]

    # A record of another protocol is not reused.
    stale = tmp_path / "runs" / f"{names[0]}.json"
    data = json.loads(stale.read_text())
    data["protocol"]["num_epochs"] = 99.0
    stale.write_text(json.dumps(data))
    execute3, calls3 = fake_execute({})
    sw.run_sweep("sweep_tiny", tmp_path, execute_run=execute3, echo=quiet)
    assert calls3 == [names[0]]

    # The table: the diverged run is named, not averaged; spread over seeds.
    table = report.sweep_markdown(TINY, sw.load_records(tmp_path), total=len(names))
    assert "Runs in: 10 of 10 (1 diverged)" in table
    assert "**diverged** x1 (step 2)" in table
    assert "diverges at x4" in table
    assert "50.00 ±0.00 (2)" in table


def test_collect_marks_divergence_with_the_step(tmp_path):
    run = sw.point_run(TINY, sw.Point("c", 40, 1.0, 0), tmp_path)
    run.workdir.mkdir(parents=True)
    (run.workdir / "train.log").write_text(
        "step 10 ...\nlmsgd.train.NonFiniteLossError: non-finite loss nan at step 37; the run "
        "stopped without saving it. Last good checkpoint: none\n"
    )
    record = runner.collect(run, returncode=1, wall_time_s=3.0)
    assert record["status"] == "diverged" and record["diverged_step"] == 37
    assert runner.diverged_step("no error") is None


def test_dry_run_lists_the_plan(tmp_path, capsys):
    assert lb.main(["--preset", "sweep_tiny", "--results_dir", str(tmp_path), "--dry_run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 and all("[to run]" in ln and "lmsgd.train" in ln for ln in lines)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tiny_sweep_real_runs_and_divergence(tmp_path):
    """Two real runs on the digits: one trains, one diverges (x1e29 rate) and is recorded."""
    tiny = sw.Sweep(name="t", preset="tiny", batch_recipes=("c",), batch_sizes=(40,),
                    lr_recipes=("c",), lr_batch=40, lr_multipliers=(1.0, 1e29), seeds=(0,),
                    bn_examples=5, checkpoint_every_epochs=1)  # fmt: skip
    sw.SWEEPS["t"] = tiny
    try:
        records = sw.run_sweep("t", tmp_path, echo=lambda *a: None)
    finally:
        del sw.SWEEPS["t"]
    ok, div = records
    assert ok["status"] == "ok" and 0 <= ok["final_top1"] <= 1 and ok["steps"] == 6
    assert ok["bn_span_examples"] == 5 and ok["eval_top1_curve"]
    assert div["status"] == "diverged" and isinstance(div["diverged_step"], int)
    assert "non-finite loss" in div["error"]


def test_readme_table_is_generated_from_the_committed_results():
    sweep = sw.SWEEPS["sweep"]
    results = REPO / "results" / "sweep"
    names = json.loads((results / "readme_runs.json").read_text())
    by_name = {sw.Point(**r["point"]).name: r for r in sw.load_records(results)}
    assert set(names) <= set(by_name), "README names runs that are not committed"
    records = [by_name[n] for n in names]
    expected = report.sweep_markdown(sweep, records, total=len(sw.plan(sweep)))
    assert sw.readme_table((REPO / "docs" / "results.md").read_text()) == expected
    for png in ("accuracy_vs_batch.png", "accuracy_vs_lr.png"):
        assert (results / png).stat().st_size < 200_000
