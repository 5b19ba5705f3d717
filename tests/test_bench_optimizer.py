"""`python -m lmsgd.bench optimizer`: the stock-optax composition equals rmsprop_warmup, the
state is two parameter-sized buffers, and the suite writes sane JSON."""

import json
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lmsgd.bench import optimizer as bench_opt
from lmsgd.bench.__main__ import main
from lmsgd.optim import alpha_sgd_schedule, rmsprop_warmup

SHAPES = {"conv": (3, 3, 4, 8), "scale": (8,), "head": (8, 10), "bias": (10,)}


def _decayed_fraction(model: str) -> float:
    """Fraction of the model's parameters in kernels (more than one dimension)."""
    from lmsgd.bench.allreduce import model_shapes

    shapes = model_shapes(model).values()
    return sum(math.prod(s) for s in shapes if len(s) > 1) / sum(math.prod(s) for s in shapes)


def test_stock_composition_equals_rmsprop_warmup():
    """Over steps crossing the hand-over (alpha_sgd 0.11 -> 1) and three learning rates."""
    out = bench_opt.check_equivalence(SHAPES, steps=8, rtol=1e-5)
    assert out["max_relative_update_difference"] <= 1e-5
    assert out["max_abs_param_difference"] < 1e-5


def test_stock_composition_matches_update_and_state_step_by_step():
    """Independent of check_equivalence: other schedules and hyper-parameters; updates and
    the state buffers (m = nu, Delta = -trace) compared after every step."""
    lr = lambda c: 0.4 * (1.0 + 0.5 * (c >= 2))
    alpha = alpha_sgd_schedule(1.0, beta_center=2.0, beta_period=2.0)
    eta_rms = lambda c: 1e-3
    ours = rmsprop_warmup(lr, alpha, rmsprop_learning_rate=1e-3, momentum=0.9, decay=0.99)
    stock = bench_opt.stock_rmsprop_warmup(lr, alpha, eta_rms, momentum=0.9, decay=0.99)
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in SHAPES.items()}
    sa, sb = ours.init(params), stock.init(params)
    for _ in range(6):
        g = {k: jnp.asarray(rng.normal(size=s) * 10.0 ** rng.uniform(-3, 1), jnp.float32)
             for k, s in SHAPES.items()}  # fmt: skip
        ua, sa = ours.update(g, sa, params)
        ub, sb = stock.update(g, sb, params)
        for k in SHAPES:
            np.testing.assert_allclose(ua[k], ub[k], rtol=2e-5, atol=1e-7 * float(
                jnp.max(jnp.abs(ua[k]))))  # fmt: skip
        # The stock trace is -Delta, the velocity rmsprop_warmup keeps.
        np.testing.assert_allclose(sb[1].trace["conv"], -sa.delta["conv"], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(sb[0][1][0].nu["conv"], sa.m["conv"], rtol=1e-6)
        params = optax.apply_updates(params, ua)


def test_state_bytes_counts_parameter_sized_buffers():
    params = {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()}
    txs = bench_opt.optimizers()
    info = {name: bench_opt.state_bytes(tx.init(params), params) for name, (tx, _) in txs.items()}
    param_bytes = sum(math.prod(s) for s in SHAPES.values()) * 4
    assert info["rmsprop_warmup"]["param_sized_buffers"] == 2
    assert info["rmsprop_warmup"]["array_state_over_param_bytes"] == 2.0
    assert info["rmsprop_warmup"]["state_bytes"] == 2 * param_bytes + 4  # + int32 count
    assert info["stock_rmsprop_warmup"]["param_sized_buffers"] == 2
    assert info["sgd_momentum"]["param_sized_buffers"] == 1


def test_check_equivalence_detects_a_difference(monkeypatch):
    real = bench_opt.optimizers

    def wrong():
        out = real()
        out["stock_rmsprop_warmup"] = (
            optax.chain(out["stock_rmsprop_warmup"][0], optax.scale(1.01)),
            "off by 1%",
        )
        return out

    monkeypatch.setattr(bench_opt, "optimizers", wrong)
    with pytest.raises(AssertionError, match="differs"):
        bench_opt.check_equivalence(SHAPES, steps=2)


def test_optimizer_suite_smallest_setting(tmp_path, capsys):
    record = main(
        [
            "optimizer", "--model", "cifar_resnet8", "--reps", "2", "--min_seconds", "0",
            "--check_steps", "3", "--results_dir", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "stock_rmsprop_warmup == rmsprop_warmup over 3 steps" in out
    assert "stock_rmsprop_warmup_wd == rmsprop_warmup_wd over 3 steps" in out
    saved = json.loads(next(tmp_path.glob("bench_optimizer_*.json")).read_text())
    assert saved["suite"] == record["suite"] == "optimizer"
    assert saved["hardware"]["platform"] == "cpu" and saved["versions"]["optax"]
    assert set(saved["results"]) == {
        "rmsprop_warmup", "rmsprop_warmup_saturated", "rmsprop_warmup_eta0",
        "stock_rmsprop_warmup", "rmsprop_warmup_wd", "stock_rmsprop_warmup_wd", "sgd_momentum",
    }  # fmt: skip
    # The slow-start rate never reaches 0: ours compiles to the stock chain's bytes; the
    # eta = 0 limit adds 8 per parameter (12 + 16 + 8 = 36 against 12 + 16 + 16 = 44).
    results = saved["results"]
    assert results["rmsprop_warmup"]["bytes_per_param_update"] == pytest.approx(36, abs=0.5)
    assert results["rmsprop_warmup_eta0"]["bytes_per_param_update"] == pytest.approx(44, abs=0.5)
    assert saved["summary"]["bytes_rmsprop_warmup_over_stock"] == pytest.approx(1.0, abs=0.01)
    # Weight decay inside: two loops read the parameter (16 + 20 + 12 = 48 with the update
    # applied), where add_decayed_weights first costs a pass of its own (12 + 40 = 52).
    apply = "bytes_per_param_update_and_apply"
    assert results["rmsprop_warmup_wd"][apply] == pytest.approx(48, abs=0.5)
    assert results["stock_rmsprop_warmup_wd"][apply] == pytest.approx(52, abs=0.5)
    # The floor: read g, m, Delta and (decayed kernels only) the parameter; write m, Delta, step.
    fraction = _decayed_fraction("cifar_resnet8")
    assert results["rmsprop_warmup_wd"]["floor_bytes_per_param"] == pytest.approx(
        {"update": 24 + 4 * fraction, "update_and_apply": 28}
    )
    assert saved["equivalence"]["max_relative_update_difference_wd"] <= 1e-5
    for r in results.values():
        assert len(r["compile_s"]) == 2 and r["compile_s_min"] == min(r["compile_s"]) > 0
    for r in saved["results"].values():
        for key in ("update_s_median", "state_bytes", "param_bytes", "state_over_param_bytes"):
            assert math.isfinite(r[key]) and r[key] > 0, key
    assert saved["results"]["rmsprop_warmup"]["param_sized_buffers"] == 2
    assert saved["equivalence"]["max_relative_update_difference"] <= 1e-5


def test_fusion_traffic_agrees_with_xla_cost_analysis_on_cpu():
    """On XLA:CPU (no tile padding, no prefetch copies) the kernels' operand and output bytes
    are what XLA's own cost analysis counts: an independent check of the HLO reading."""
    import jax

    from lmsgd.bench import common

    shapes = {"conv": (3, 3, 64, 64), "head": (256, 100), "bias": (100,)}
    params = common.random_tree(shapes, 0, 0.05)
    for name in ("rmsprop_warmup", "rmsprop_warmup_wd", "sgd_momentum"):
        tx = bench_opt.optimizers()[name][0]
        compiled, _ = bench_opt._compile_update(tx, params, jax.jit(tx.init)(params), params)
        traffic = common.fusion_traffic(compiled.as_text())
        xla = common.compiled_cost(compiled)["bytes_accessed"]
        assert traffic["fusions"] >= len(shapes)
        assert traffic["bytes"] == pytest.approx(xla, rel=0.01), name


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("libtpu") is None, reason="needs libtpu (.[plan])"
)
def test_tpu_compiled_update_is_at_its_floor(tmp_path, capsys):
    """Compiled for a TPU v5p chip, each tensor's update is one kernel with all its outputs
    (m, Delta and the parameter), moving the floor's bytes: the formula, not our output."""
    record = main(
        ["optimizer", "--target", "tpu:v5p:2x2x1", "--model", "cifar_resnet8",
         "--results_dir", str(tmp_path)]
    )  # fmt: skip
    assert "compiled for one TPU" in capsys.readouterr().out
    from lmsgd.bench.allreduce import model_shapes

    tensors = len(model_shapes("cifar_resnet8"))
    fraction = _decayed_fraction("cifar_resnet8")
    for name, buffers in (("rmsprop_warmup", 2), ("rmsprop_warmup_wd", 2), ("sgd_momentum", 1)):
        r = record["results"][name]
        wd = fraction if name.endswith("_wd") else 0.0  # kernels read the parameter
        assert r["param_sized_buffers"] == buffers
        assert r["update_and_apply"]["outputs_per_fusion"].count(buffers + 1) == tensors
        floor = (1 + buffers + wd) * 4 + (buffers + 1) * 4  # read g, state (, p); write
        assert r["update"]["fused_bytes_per_param"] == pytest.approx(floor, rel=1e-3)
        apply_floor = (2 + buffers) * 4 + (buffers + 1) * 4  # read g, state, p; write
        assert r["update_and_apply"]["fused_bytes_per_param"] == pytest.approx(
            apply_floor, rel=1e-3
        )
    with open(record["json_path"]) as f:
        assert json.load(f)["summary"]["fused_bytes_over_floor_update_and_apply"] < 1.001


@pytest.mark.parametrize(
    ("target", "says"),
    [("gpu:h100:8x1", "only TPU targets"), ("bogus", "unknown --target 'bogus'; allowed"),
     ("tpu:v9:2x2", "unknown TPU generation 'v9'")],
)  # fmt: skip
def test_bad_target_is_one_line(target, says):
    with pytest.raises(SystemExit, match=says) as info:
        main(["optimizer", "--target", target, "--model", "cifar_resnet8"])
    assert str(info.value).startswith("error: ") and "\n" not in str(info.value)
