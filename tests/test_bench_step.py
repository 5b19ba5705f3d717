"""`python -m lmsgd.bench step` in its smallest setting: runs, prints, writes sane JSON."""

import json
import math

import jax
import pytest

from lmsgd.bench.__main__ import main

TINY = [
    "--quick",
    "--model", "cifar_resnet8", "--width_multiplier", "0.25", "--per_device_batch", "2",
    "--image_size", "8", "--steps", "2", "--warmup", "1", "--rounds", "2",
    "--peak_matmul_size", "64",
]  # fmt: skip


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_step_suite_smallest_setting(tmp_path, capsys, monkeypatch):
    clears = []
    clear_caches = jax.clear_caches
    monkeypatch.setattr(jax, "clear_caches", lambda: (clears.append(1), clear_caches())[1])
    record = main(["step", *TINY, "--compile_rounds", "2", "--results_dir", str(tmp_path)])
    # Every compile starts cold: the two baselines share traces (same model and optimizer).
    assert len(clears) == 2 * 3
    out = capsys.readouterr().out
    assert "ours / baseline" in out and "MFU" in out and "mem/dev" in out
    assert "minflt/step" in out and "parameter-sized buffers" in out
    files = list(tmp_path.glob("bench_step_*.json"))
    assert len(files) == 1 and record["suite"] == "step"
    saved = json.loads(files[0].read_text())

    hw, versions, config = saved["hardware"], saved["versions"], saved["config"]
    assert hw["platform"] == "cpu" and hw["device_count"] == jax.device_count() == 8
    assert hw["device_kind"] and hw["cpu_count"] >= 1
    assert all(versions[k] for k in ("jax", "jaxlib", "flax", "optax", "lmsgd"))
    assert config["global_batch"] == 16 and config["model"] == "cifar_resnet8"
    assert config["num_classes"] == 10 and config["mesh_shape"] == [8]

    assert _positive(saved["peak"]["peak_flops_per_s_total"])
    assert set(saved["results"]) == {"ours", "baseline", "baseline_nodonate"}
    for r in saved["results"].values():
        for key in (
            "lower_s", "compile_s", "step_s_median", "images_per_s", "images_per_s_per_device",
            "model_flops_per_step_per_device", "model_flops_per_step_global", "mfu",
            "memory_bytes_per_device", "temp_bytes_per_device", "num_params",
            "images_per_s_best",
        ):  # fmt: skip
            assert _positive(r[key]), (key, r[key])
        assert len(r["step_s_all"]) == 2
        # Two alternating compile rounds; the reported time is the fastest round's.
        rounds = r["compile_rounds_s"]
        assert len(rounds) == 2 and all(_positive(lo) and _positive(co) for lo, co in rounds)
        assert r["lower_s"] + r["compile_s"] == min(lo + co for lo, co in rounds)
        assert r["model_flops_per_step_global"] == 8 * r["model_flops_per_step_per_device"]
        assert math.isfinite(r["final_loss"])
        assert r["minor_faults_per_step"] >= 0
        assert r["temp_param_buffers"] == r["temp_bytes_per_device"] / saved["param_bytes"]
    ours, base = saved["results"]["ours"], saved["results"]["baseline"]
    undonated = saved["results"]["baseline_nodonate"]
    # Equal programs but for donation: without it, the new state cannot reuse the old one's
    # buffers, so the step holds more memory (arguments and outputs both counted).
    assert undonated["memory_per_device"]["alias"] == 0 < base["memory_per_device"]["alias"]
    assert undonated["memory_bytes_per_device"] > base["memory_bytes_per_device"]
    assert saved["param_bytes"] == 4 * ours["num_params"]
    assert math.isfinite(saved["ours_minus_baseline_temp_param_buffers"])
    assert _positive(saved["ours_over_baseline_compile"])
    assert ours["num_params"] == base["num_params"]
    # Ours: one fused gradient all-reduce (+ the pooled statistics), nothing per layer.
    assert ours["collectives_compiled"]["all-reduce/f32"]["count"] <= 3
    assert base["collectives_compiled"]["all-reduce/f32"]["count"] >= 1
    assert _positive(saved["ours_over_baseline_images_per_s"])
    assert _positive(saved["ours_over_baseline_memory"])


def test_baseline_mirrors_our_resnet50():
    """Same parameter count as lmsgd's ResNet-50; nn.BatchNorm with moving averages."""
    import jax.numpy as jnp

    from lmsgd.bench.baseline import create_baseline_model
    from lmsgd.models import count_params, create_model

    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    ours = jax.eval_shape(lambda x: create_model("resnet50").init(jax.random.key(0), x,
                                                                  train=False), x)  # fmt: skip
    base = jax.eval_shape(
        lambda x: create_baseline_model("resnet50", num_classes=1000).init(
            jax.random.key(0), x, train=False
        ),
        x,
    )
    assert count_params(ours["params"]) == count_params(base["params"]) == 25_557_032
    stats = jax.tree_util.tree_leaves_with_path(base["batch_stats"])
    assert {p[-1].key for p, _ in stats} == {"mean", "var"}


@pytest.mark.parametrize("flag", ["--compile_rounds", "--accumulation_steps"])
def test_bad_counts_are_one_argparse_error(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["step", flag, "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: '0' is not an integer >= 1" in err and "Traceback" not in err


def _has(module):
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("gpu:h100:2x1", marks=pytest.mark.skipif(
            not _has("jax_plugins.xla_cuda12"), reason="needs the CUDA plugin (.[plan])")),
        pytest.param("tpu:v5p:2x2x1", marks=pytest.mark.skipif(
            not _has("libtpu"), reason="needs libtpu (.[plan])")),
    ],
)  # fmt: skip
def test_step_target_compiles_ours_and_baseline_deviceless(target, tmp_path, capsys):
    args = ["step", "--target", target, "--model", "cifar_resnet8",
            "--width_multiplier", "0.25", "--per_device_batch", "2", "--image_size", "8",
            "--dtype", "bfloat16", "--allreduce_dtype", "bfloat16",
            "--phases", "warmup,sgd,warmup_flatten",
            "--results_dir", str(tmp_path)]  # fmt: skip
    record = main(args)
    out = capsys.readouterr().out
    compiler = "by XLA:GPU" if target.startswith("gpu") else "by the TPU compiler"
    assert compiler in out and "ours / baseline" in out
    saved = json.loads(next(tmp_path.glob("bench_step_target_*.json")).read_text())
    ours, base = saved["results"]["ours"], saved["results"]["baseline"]
    for r in (ours, base):
        assert _positive(r["peak_bytes"]) and _positive(r["temp_bytes"])
        assert _positive(r["flops"]) and _positive(r["bytes_accessed"])
        assert r["kernels"]["kernels"] > 0 and 0.0 <= r["exposed_allreduce_share"] <= 1.0
        if target.startswith("gpu"):
            assert r["kernels"]["cudnn"] > 0
    if target.startswith("gpu"):
        # Same network, batch and compiler: the same convolution and dot FLOPs.
        assert ours["flops"] == pytest.approx(base["flops"], rel=0.01)
    ratios = record["ratios_ours_over_baseline"]
    assert ratios["peak_bytes"] == pytest.approx(ours["peak_bytes"] / base["peak_bytes"])
    # After the hand-over ours neither reads nor carries the second optimizer buffer.
    sgd = saved["results"]["sgd"]
    assert sgd["bytes_accessed"] < ours["bytes_accessed"]
    assert sgd["peak_bytes"] <= ours["peak_bytes"]
    assert record["ratios_by_phase"]["sgd"]["bytes_accessed"] < ratios["bytes_accessed"]
    # allreduce.flatten sends the same gradient bytes (per tensor, reshaped).
    flat = saved["results"]["warmup_flatten"]
    assert flat["flops"] == pytest.approx(ours["flops"], rel=0.01)
    assert flat["allreduce"]["bytes"] == ours["allreduce"]["bytes"]


def test_baseline_step_is_the_flax_examples():
    """Per-device statistics (no all-reduce per layer), moving averages kept per device, and
    every all-reduce of the program float32 (read from the lowered program: XLA:CPU would
    promote a bfloat16 one anyway), carrying the float32 gradient of every parameter."""
    import re

    import jax.numpy as jnp
    import numpy as np
    import optax

    from lmsgd.bench import baseline
    from lmsgd.models import count_params
    from lmsgd.parallel import batch_sharding, create_mesh

    mesh = create_mesh()
    n = mesh.devices.size
    model = baseline.create_baseline_model(
        "cifar_resnet8", num_classes=10, dtype="bfloat16", width_multiplier=0.25
    )
    tx = baseline.baseline_optimizer(0.1)
    state = baseline.create_baseline_state(model, tx, jax.random.key(0), (8, 8, 3), mesh)
    rng = np.random.default_rng(0)
    # Device d's images are offset by d: per-device statistics differ, pooled ones would not.
    images = rng.normal(size=(n, 2, 8, 8, 3)) + np.arange(n)[:, None, None, None, None]
    batch = jax.device_put(
        {"image": jnp.asarray(images.reshape(2 * n, 8, 8, 3), jnp.bfloat16),
         "label": jnp.asarray(rng.integers(0, 10, 2 * n), jnp.int32)},
        batch_sharding(mesh),
    )  # fmt: skip
    step = baseline.make_baseline_train_step(model, tx, mesh, donate=False)
    text = step.lower(state, batch).as_text()
    # Operand types of each all-reduce: `"stablehlo.all_reduce"(...) ({...}) : (T, ...) -> ...`.
    operands = re.findall(r"stablehlo\.all_reduce\".*?\}\) : \((.*?)\) ->", text, flags=re.S)
    types = [t for group in operands for t in re.findall(r"tensor<([^>]*)>", group)]
    assert {t.split("x")[-1] for t in types} == {"f32"}, types
    sizes = [int(np.prod([int(d) for d in t.split("x")[:-1]])) for t in types]
    # The gradient of every parameter, loss and accuracy; no statistics.
    assert sum(sizes) == count_params(state.params) + 2
    new_state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and set(metrics) == {"loss", "accuracy"}
    means = [np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(new_state.batch_stats)
             if p[-1].key == "mean"]  # fmt: skip
    assert all(m.shape[0] == n for m in means)
    first = means[0]  # the stem's: the image offsets show through, device by device
    assert np.all(np.ptp(first, axis=0) > 0)
    assert count_params(new_state.params) == count_params(state.params)
    assert optax.tree.norm(new_state.params) != optax.tree.norm(state.params)
