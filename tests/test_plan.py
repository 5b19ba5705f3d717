"""lmsgd.plan: the compiled step's memory and collectives, targets, and user errors.

References are computed independently of the planner: parameter counts from the model's own
`init` (via `jax.eval_shape`), memory from compiling `lmsgd.step.make_train_step` the way the
driver does, and communication time by hand from the ring formula.
"""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lmsgd.config import base_config, validate_config
from lmsgd.models import create_model
from lmsgd.parallel.collectives import Collective
from lmsgd.plan import HARDWARE, PlanError, parse_target, plan
from lmsgd.plan import estimate as estimate_lib
from lmsgd.plan import targets as targets_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(global_batch=64, image_size=16, dtype="float16"):
    cfg = base_config()
    cfg.num_epochs = 2.0
    cfg.global_batch_size = global_batch
    cfg.model.name = "cifar_resnet8"
    cfg.model.width_multiplier = 0.5
    cfg.data.name = "synthetic"
    cfg.data.num_classes = 10
    cfg.data.image_size = image_size
    cfg.data.num_train_examples = max(1024, global_batch)
    cfg.data.num_eval_examples = 64
    cfg.allreduce.dtype = dtype
    validate_config(cfg)
    return cfg


def param_count(cfg) -> int:
    model = create_model(
        cfg.model.name,
        num_classes=cfg.data.num_classes,
        width_multiplier=cfg.model.width_multiplier,
    )
    shape = (1, cfg.data.image_size, cfg.data.image_size, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


def driver_memory(cfg):
    """memory_analysis() of the step compiled as lmsgd.train does it, on the 8 real devices."""
    from lmsgd.data import synthetic
    from lmsgd.parallel import batch_sharding
    from lmsgd.plan.compile import dataset_info
    from lmsgd.run import build

    run = build(cfg)
    state, step = run.init_state(), run.train_step()
    batch = synthetic.make_batch(
        dataset_info(cfg.data), cfg.global_batch_size, 0, cfg.data.dtype, batch_sharding(run.mesh)
    )
    return step.lower(state, batch).compile().memory_analysis()


def test_targets_parse_aliases_and_name_allowed_values():
    t = parse_target("gpu:h100:8x128")
    assert (t.num_devices, t.num_nodes, t.devices_per_node) == (1024, 128, 8)
    assert parse_target("v5p-2048").spec == "tpu:v5p:8x8x16"
    assert parse_target("akiba2017").spec == "gpu:p100-pcie:8x128"
    assert parse_target("cpu:8").num_devices == 8
    for bad, named in [("tpu:v9:2x2", "'v9'"), ("gpu:x100:8x1", "'x100'"), ("bogus", "'bogus'")]:
        with pytest.raises(PlanError, match=named) as e:
            parse_target(bad)
        assert "allowed" in str(e.value)
    with pytest.raises(PlanError, match="v5p"):
        parse_target("nope:1")


def test_missing_libtpu_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # makes `import libtpu` fail
    with pytest.raises(PlanError, match=r"pip install .*\[plan\]"):
        targets_lib.tpu_devices(parse_target("tpu:v5p:2x2x1"))


def test_ring_formula_by_hand():
    hw = HARDWARE["h100"]
    grad = Collective("all-reduce", "f16", 1000, 2_000_000, 1024, "{}")
    bandwidth = 2_000_000 * 2 * 1023 / 1024 / min(450e9, 400e9)
    for steps, latency_steps in [("ring", 2 * 1023), ("tree", 2 * 10)]:
        a = estimate_lib.Assumptions(
            0.5, link_efficiency=1.0, inter_latency_s=5e-6, gpu_latency_steps=steps
        )
        link, s = estimate_lib.collective_seconds(
            grad, hw, a, num_devices=1024, per_node=8, topology=(8, 128)
        )
        # Spans nodes: NCCL rings through all NICs, limited by min(NVLink, node network).
        assert link == "inter-node"
        assert s == pytest.approx(bandwidth + 5e-6 * latency_steps)


def test_cpu8_memory_collectives_and_measure():
    cfg = tiny_config()
    n_params = param_count(cfg)
    p = plan(cfg, "cpu:8", measure_steps=2)
    assert p.num_params == n_params
    # float16 gradients: 2 bytes per parameter, all-reduced once per step (XLA:CPU keeps f16).
    # XLA drops the all-reduce of a few gradients it proves identical on all devices.
    assert p.gradient_allreduce_bytes == pytest.approx(2 * n_params, rel=0.01)
    ref = driver_memory(cfg)
    assert p.memory["argument_bytes"] == ref.argument_size_in_bytes
    assert p.memory["temp_bytes"] == ref.temp_size_in_bytes
    assert p.memory["alias_bytes"] == ref.alias_size_in_bytes
    assert p.fits and p.per_device_batch == 8 and p.bn_span == 8
    assert p.steps_per_epoch == 1024 // 64 and p.total_steps == 2 * 16
    assert p.measured_step_s > 0 and p.estimate.step_s > 0
    assert p.estimate.run_s == pytest.approx(p.estimate.step_s * p.total_steps)


def test_does_not_fit_is_reported():
    # 2,048 images of 256 x 256 per GPU: the activations alone exceed a P100's 16 GB.
    cfg = tiny_config(global_batch=8 * 2048, image_size=256)
    p = plan(cfg, "gpu:p100:8x1")
    assert not p.fits
    assert p.memory["peak_bytes"] > HARDWARE["p100"].hbm_bytes


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("libtpu") is None, reason="needs libtpu (.[plan])"
)
def test_tpu_topology_compiles_with_tpu_compiler():
    cfg = tiny_config(global_batch=16)
    # 128-512 channels: TPU tiles (128 lanes) then pad the gradient buffers by < 1%.
    cfg.model.width_multiplier = 8.0
    p = plan(cfg, "tpu:v5p:2x2x1")
    n_params = param_count(cfg)
    assert p.compiled_for == "tpu" and p.num_devices == 4 and p.per_device_batch == 4
    # TPU packs two f16 values per u32 word: count bytes, not elements.
    packed = [c for c in p.collectives if c["op"] == "all-reduce" and c["dtype"] == "u32"]
    assert packed
    # Only all-reduces (gradients, statistics, metrics): the optimizer update, which runs
    # on the replicated gradient outside the shard_map, adds no collective of its own.
    assert {c["op"] for c in p.collectives} == {"all-reduce"}, p.collectives
    assert 2 * n_params <= p.gradient_allreduce_bytes <= 1.01 * 2 * n_params
    assert p.fits and p.memory["capacity_bytes"] == int(HARDWARE["v5p"].hbm_bytes)
    assert p.flops > 0 and p.estimate.step_s > 0
    # The overlap comes from the TPU program's own schedule, over the same gradient bytes.
    assert p.estimate.overlap_source == "compiled schedule"
    assert p.overlap["bytes"] == p.gradient_allreduce_bytes
    assert 0.0 <= p.overlap["issued_before_backward_end"] <= 1.0
    assert 0.0 <= p.estimate.overlap <= 1.0


def test_cli_user_errors_are_one_line_without_traceback():
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "lmsgd.plan", "--config", "configs/default.py"]
    r = subprocess.run(cmd + ["--target", "tpu:v9:8x8"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "'v9'" in err[0] and "allowed" in err[0]


def test_max_batch_search_against_an_analytic_memory_curve(monkeypatch):
    """The search (affine guess + bisection on compiles) finds the analytic limit to ~6%."""
    import types

    from lmsgd.plan import planner

    capacity = 16e9

    def peak(b):  # state + activations, slightly super-linear like real programs
        return 1.2e9 + 30e6 * b + 2e3 * b * b

    compiled = []

    def fake_compile(config, mesh, per_device, options=None):
        compiled.append(per_device)
        return types.SimpleNamespace(peak_bytes=peak(per_device))

    monkeypatch.setattr(planner, "_compile_with_batch", fake_compile)
    best = planner._max_batch(None, None, 32, capacity, peak(32))
    exact = max(b for b in range(1, 5000) if peak(b) <= capacity)
    assert peak(best) <= capacity and best >= exact * 15 / 16
    assert len(compiled) <= 8  # each probe is a real compile on a pod-sized program


def test_two_dimensional_float32_on_gpus_moves_one_node_share_across_nodes():
    cfg = tiny_config(global_batch=32, dtype="float32")
    cfg.allreduce.algorithm = "two_dimensional"
    p = plan(cfg, "gpu:a100:8x4")
    n_params = param_count(cfg)
    assert p.num_devices == 32 and p.num_processes == 4 and p.per_device_batch == 1
    assert p.mesh == {"host": 4, "local": 8}
    from lmsgd.plan.gpu import plugin_available

    if plugin_available():  # XLA:GPU compiles the 32-GPU program itself
        assert p.compiled_for == "gpu" and not p.notes
    else:
        assert p.compiled_for == "cpu-proxy" and p.notes[0].startswith("FALLBACK")
    by_link = {(c.op, c.link): c for c in p.estimate.collectives}
    # Inside a node: reduce-scatter of the float32 gradient over NVLink (8 GPUs) ...
    assert by_link[("reduce-scatter", "intra-node")].group_size == 8
    # ... across nodes: an all-reduce of 1/8 of it, one GPU per node (4 nodes).
    across = by_link[("all-reduce", "inter-node-shared")]
    assert across.group_size == 4
    assert across.bytes == pytest.approx(4 * n_params / 8, rel=0.03)
