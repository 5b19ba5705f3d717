"""GPU targets on XLA:GPU's deviceless compiler, and overlap read from compiled schedules.

References are independent of the code under test: a hand-written scheduled HLO module whose
overlap is worked out by hand, the analytic FLOPs of convolutions and dense layers
(2 x outputs x window x input features, three passes in training), the parameter count from
the model's own init, and the spec files' own device names. Tests that need the CUDA plugin
(`jax-cuda12-plugin` + `jax-cuda12-pjrt`, in the `plan` extra CI installs) skip only when it is
not installed.
"""

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmsgd.parallel import hlo_text, xla_flags
from lmsgd.plan import gpu as gpu_lib
from lmsgd.plan import schedule as S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_plugin = pytest.mark.skipif(
    not gpu_lib.plugin_available(), reason="CUDA PJRT plugin not installed (the 'plan' extra)"
)

CONV = "window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f"
# The computations both hand schedules call: the reduction and a fused convolution.
COMPUTATIONS = f"""%add (a: f16[], b: f16[]) -> f16[] {{
  %a = f16[] parameter(0)
  %b = f16[] parameter(1)
  ROOT %s = f16[] add(%a, %b)
}}

%fused_conv (p0: f32[1,8,8,4], p1: f32[3,3,4,4]) -> f32[1,8,8,4] {{
  %p0 = f32[1,8,8,4]{{3,2,1,0}} parameter(0)
  %p1 = f32[3,3,4,4]{{3,2,1,0}} parameter(1)
  %cv = f32[1,8,8,4]{{3,2,1,0}} convolution(%p0, %p1), {CONV}
  ROOT %r = f32[1,8,8,4]{{3,2,1,0}} maximum(%cv, %cv)
}}
"""
HAND_SCHEDULE = f"""HloModule m, is_scheduled=true

{COMPUTATIONS}
ENTRY %main (x: f32[1,8,8,4], w: f32[3,3,4,4], g: f16[1000], h: f16[3000]) -> (f16[1000]) {{
  %x = f32[1,8,8,4]{{3,2,1,0}} parameter(0)
  %w = f32[3,3,4,4]{{3,2,1,0}} parameter(1)
  %g = f16[1000]{{0}} parameter(2)
  %h = f16[3000]{{0}} parameter(3)
  %c1 = f32[1,8,8,4]{{3,2,1,0}} convolution(%x, %w), {CONV}
  %ars1 = f16[1000]{{0}} all-reduce-start(%g), replica_groups={{{{0,1}}}}, to_apply=%add,
    backend_config={{"collective_backend_config":{{"is_sync":false}}}}
  %c2 = f32[1,8,8,4]{{3,2,1,0}} convolution(%c1, %w), {CONV}
  %ard1 = f16[1000]{{0}} all-reduce-done(%ars1)
  %c3 = f32[1,8,8,4]{{3,2,1,0}} fusion(%c2, %w), kind=kOutput, calls=%fused_conv
  %ars2 = f16[3000]{{0}} all-reduce-start(%h), replica_groups={{{{0,1}}}}, to_apply=%add
  %ard2 = f16[3000]{{0}} all-reduce-done(%ars2)
  ROOT %t = (f16[1000]{{0}}, f16[3000]{{0}}) tuple(%ard1, %ard2)
}}
"""
CONV_FLOPS = 2 * (8 * 8 * 4) * (3 * 3 * 4)  # one 3x3 conv, 4 -> 4 channels, 8x8, batch 1


def test_hand_schedule_positions_flops_and_issued_share():
    s = S.parse_schedule(HAND_SCHEDULE)
    assert s.flops == [0, 0, 0, 0, CONV_FLOPS, 0, CONV_FLOPS, 0, CONV_FLOPS, 0, 0, 0]
    assert s.last_compute == 8  # the fusion that holds the third convolution
    ar = S.select(s, "all-reduce", {"f16"})
    assert [(c.bytes, c.start, c.done, c.is_async) for c in ar] == [
        (2000, 5, 7, True),
        (6000, 9, 10, True),
    ]
    # 2,000 of 8,000 bytes start before the last convolution.
    assert S.issued_before_compute_end(s, ar) == pytest.approx(0.25)
    # The first has one of three convolutions between its start and done.
    assert S.compute_after(s, ar) == pytest.approx(2000 / 8000 / 3)


def test_hand_schedule_time_line():
    s = S.parse_schedule(HAND_SCHEDULE)
    # 1 s per convolution; all-reduces 2 s and 0.5 s. By hand: c1 ends at 1, ars1 runs
    # 1-3, c2 ends at 2, ard1 waits to 3, c3 ends at 4, ars2 runs 4-4.5: step 4.5 s.
    t = S.simulate(s, 3.0, {"ars1": 2.0, "ars2": 0.5})
    assert (t.step_s, t.exposed_s, t.comm_s) == pytest.approx((4.5, 1.5, 2.5))
    assert t.overlap == pytest.approx(0.4)
    # Synchronous: the first all-reduce stalls compute, nothing is hidden.
    sync = re.sub(r"%ars1 = .*\n", "", HAND_SCHEDULE).replace(
        "%ard1 = f16[1000]{0} all-reduce-done(%ars1)",
        "%ard1 = f16[1000]{0} all-reduce(%g), replica_groups={{0,1}}, to_apply=%add",
    )
    t = S.simulate(S.parse_schedule(sync), 3.0, {"ard1": 2.0, "ars2": 0.5})
    assert t.step_s == pytest.approx(5.5) and t.overlap == pytest.approx(0.0)


# The same schedule as jax 0.11+ prints it: replica groups in the mesh-axes and iota forms,
# the async all-reduce-start returning ((operands), result), the second all-reduce run as a
# Triton fusion (fusion-start / fusion-done calling a computation that holds the all-reduce),
# and /*index=N*/ comments in a tuple.
HAND_SCHEDULE_NEW_FORM = f"""HloModule m, is_scheduled=true

{COMPUTATIONS}
%fused_all_reduce (q: f16[3000]) -> f16[3000] {{
  %q = f16[3000]{{0}} parameter(0)
  ROOT %ar = f16[3000]{{0}} all-reduce(%q), replica_groups=[1,2]<=[2], to_apply=%add
}}

ENTRY %main (x: f32[1,8,8,4], w: f32[3,3,4,4], g: f16[1000], h: f16[3000]) -> (f16[1000]) {{
  %x = f32[1,8,8,4]{{3,2,1,0}} parameter(0)
  %w = f32[3,3,4,4]{{3,2,1,0}} parameter(1)
  %g = f16[1000]{{0}} parameter(2)
  %h = f16[3000]{{0}} parameter(3)
  %c1 = f32[1,8,8,4]{{3,2,1,0}} convolution(%x, %w), {CONV}
  %ars1 = ((f16[1000]{{0}}), f16[1000]{{0}}) all-reduce-start(%g), replica_groups=mesh['d'=2] {{'d'}}, to_apply=%add, output_to_operand_aliasing={{{{1}}: (0, {{}})}}, backend_config={{"collective_backend_config":{{"is_sync":false}}}}
  %c2 = f32[1,8,8,4]{{3,2,1,0}} convolution(%c1, %w), {CONV}
  %ard1 = f16[1000]{{0}} all-reduce-done(%ars1)
  %c3 = f32[1,8,8,4]{{3,2,1,0}} fusion(%c2, %w), kind=kOutput, calls=%fused_conv
  %ars2 = ((f16[3000]{{0}}), f16[3000]{{0}}) fusion-start(%h), kind=kCustom, calls=%fused_all_reduce, backend_config={{"fusion_backend_config":{{"kind":"__triton_collective"}}}}
  %ard2 = f16[3000]{{0}} fusion-done(%ars2)
  ROOT %t = (f16[1000]{{0}}, /*index=1*/f16[3000]{{0}}) tuple(%ard1, %ard2)
}}
"""  # noqa: E501


def test_hand_schedule_reads_the_same_in_the_new_text_form():
    old, new = S.parse_schedule(HAND_SCHEDULE), S.parse_schedule(HAND_SCHEDULE_NEW_FORM)
    assert new.flops == old.flops and new.last_compute == old.last_compute
    fields = [(c.name, c.op, c.dtypes, c.bytes, c.start, c.done, c.is_async)
              for c in old.collectives]  # fmt: skip
    assert [(c.name, c.op, c.dtypes, c.bytes, c.start, c.done, c.is_async)
            for c in new.collectives] == fields  # fmt: skip
    assert [hlo_text.group_size(c.replica_groups) for c in new.collectives] == [2, 2]
    ar_old, ar_new = S.select(old, "all-reduce"), S.select(new, "all-reduce")
    assert S.summary(new, ar_new) == S.summary(old, ar_old)
    seconds = {"ars1": 2.0, "ars2": 0.5}
    assert S.simulate(new, 3.0, seconds) == S.simulate(old, 3.0, seconds)
    # The collectives report: each async pair once, the groups of two in both forms.
    from lmsgd.parallel import describe_collectives

    def report(text):  # text order puts the fused computation's all-reduce first: sorted
        return sorted((c.op, c.dtype, c.bytes, c.group_size) for c in describe_collectives(text))

    expect = [("all-reduce", "f16", 2000, 2), ("all-reduce", "f16", 6000, 2)]
    assert report(HAND_SCHEDULE_NEW_FORM) == report(HAND_SCHEDULE) == expect


def _convnet_grad(batch=4, size=8, cin=3, mid=8, classes=5):
    """A 2-conv + dense net's gradient; returns (fn, args, analytic training FLOPs)."""

    def loss(params, x):
        y = jax.lax.conv_general_dilated(x, params["w1"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        y = jax.nn.relu(y)
        y = jax.lax.conv_general_dilated(y, params["w2"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        y = jnp.mean(jax.nn.relu(y), axis=(1, 2))
        return jnp.sum(y @ params["d"])

    params = {
        "w1": jnp.zeros((3, 3, cin, mid)),
        "w2": jnp.zeros((3, 3, mid, mid)),
        "d": jnp.zeros((mid, classes)),
    }
    x = jnp.zeros((batch, size, size, cin))
    conv1 = 2 * batch * size * size * mid * 9 * cin
    conv2 = 2 * batch * size * size * mid * 9 * mid
    dense = 2 * batch * mid * classes
    # forward + weight gradient for every layer; input gradient for all but the first conv.
    flops = 2 * conv1 + 3 * conv2 + 3 * dense
    return jax.jit(jax.grad(loss)), (params, x), flops


def test_hlo_flop_count_matches_analytic_formula_on_cpu():
    fn, args, flops = _convnet_grad()
    hlo = fn.lower(*args).compile().as_text()
    assert S.parse_schedule(hlo).total_flops == pytest.approx(flops, rel=0.02)


@needs_plugin
def test_hlo_flop_count_matches_analytic_formula_on_xla_gpu():
    from jax.sharding import SingleDeviceSharding

    fn, args, flops = _convnet_grad()
    dev = gpu_lib.gpu_devices(_target("gpu:h100:1x1"))[0]
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=SingleDeviceSharding(dev)),
        args,
    )
    hlo = fn.lower(*abstract).compile().as_text()
    assert "__cudnn$conv" in hlo  # cuDNN calls: counted from the forward conv's labels
    assert S.parse_schedule(hlo).total_flops == pytest.approx(flops, rel=0.02)


def _target(spec):
    from lmsgd.plan.targets import parse_target

    return parse_target(spec)


def test_every_gpu_model_has_a_spec_and_assumptions():
    from lmsgd.plan import HARDWARE
    from lmsgd.plan.estimate import ASSUMPTIONS

    gpus = {k for k, h in HARDWARE.items() if h.kind == "gpu"}
    assert gpus == set(gpu_lib.SPECS) and gpus <= set(ASSUMPTIONS)
    for name in set(gpu_lib.SPECS.values()):
        assert os.path.exists(os.path.join(gpu_lib.SPEC_DIR, name))


@needs_plugin
@pytest.mark.parametrize("model", ["b200", "h200"])
def test_newer_gpus_plan_a_small_step_on_xla_gpu(model):
    from test_plan import tiny_config

    from lmsgd.plan import plan

    p = plan(tiny_config(global_batch=16), f"gpu:{model}:8x1")
    assert p.compiled_for == "gpu" and p.kernels["cudnn"] > 0 and p.fits
    assert p.estimate.step_s > 0


def test_strip_fields_removes_scalars_and_messages_at_any_depth():
    text = (
        "a {\n  keep: 1\n  mem_clock_ghz: 0.7\n  collective_memory_granularity: 2\n"
        "  max_blocks_per_multiprocessor {\n    x: 1\n  }\n}\nb: 2\n"
    )
    assert gpu_lib.strip_fields(text) == "a {\n  keep: 1\n}\nb: 2\n"


@needs_plugin
@pytest.mark.parametrize("model", sorted(set(gpu_lib.SPECS)))
def test_every_shipped_spec_parses_and_names_its_gpu(model):
    with open(os.path.join(gpu_lib.SPEC_DIR, gpu_lib.SPECS[model])) as f:
        name = re.search(r'device_description_str: "([^"]+)"', f.read())[1]
    devices = gpu_lib.gpu_devices(_target(f"gpu:{model}:4x2"))
    assert len(devices) == 8 and {d.device_kind for d in devices} == {name}
    # topology 1 x NODES x GPUS: two processes (nodes) of four GPUs.
    assert [d.process_index for d in devices] == [0] * 4 + [1] * 4


@needs_plugin
def test_plan_gpu_target_compiles_with_xla_gpu():
    from test_plan import param_count, tiny_config

    from lmsgd.plan import plan

    cfg = tiny_config(global_batch=64, dtype="bfloat16")
    cfg.model.dtype = "bfloat16"
    p = plan(cfg, "gpu:h100:4x2")
    assert p.compiled_for == "gpu" and p.flops_source == "hlo count"
    assert p.num_processes == 2 and p.mesh == {"data": 8}
    assert p.kernels["cudnn"] > 0 and p.kernels["fusions"] > 0
    assert 0 < p.memory["peak_bytes"] < 64 * 2**20 and p.fits
    # bfloat16 stays 16-bit on the GPU wire (XLA:CPU would promote it to f32).
    grads = [c for c in p.collectives if c["op"] == "all-reduce" and c["dtype"] == "bf16"]
    assert sum(c["bytes"] for c in grads) == pytest.approx(2 * param_count(cfg), rel=0.01)
    # One group of all 8 GPUs, whichever form the compiler prints the groups in; the bytes
    # the schedule reader finds are the same gradients (an async pair counted once).
    assert {c["group_size"] for c in p.collectives} == {8}
    assert p.overlap["bytes"] == sum(c["bytes"] for c in grads)
    assert p.overlap["count"] >= 1 and p.overlap["async"] == p.overlap["count"]
    assert p.estimate.overlap_source == "compiled schedule"
    assert xla_flags.GPU_XLA_FLAGS.items() <= p.xla_flags.items()
    # FLOPs per image: the analytic count of the same network is tested above; here the
    # order of magnitude of cifar_resnet8 at width 0.5 on 16x16 images (~1 MFLOP).
    assert 1e5 < p.flops_per_image < 1e7


def test_plan_gpu_target_without_plugin_is_a_labelled_cpu_fallback(monkeypatch):
    from test_plan import tiny_config

    from lmsgd.plan import plan

    monkeypatch.setattr(gpu_lib, "plugin_available", lambda: False)
    p = plan(tiny_config(global_batch=64), "gpu:h100:8x2")
    assert p.compiled_for == "cpu-proxy" and p.notes[0].startswith("FALLBACK")
    assert p.kernels == {} and p.xla_flags == {}


def test_gpu_xla_flags_applied_only_on_gpu_and_never_over_the_users():
    env = {"JAX_PLATFORMS": "cpu"}
    assert xla_flags.apply_gpu_xla_flags(env) == [] and "XLA_FLAGS" not in env
    env = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_gpu_all_reduce_combine_threshold_bytes=1"}
    added = xla_flags.apply_gpu_xla_flags(env)
    assert env["XLA_FLAGS"].split()[0] == "--xla_gpu_all_reduce_combine_threshold_bytes=1"
    assert len(added) == len(xla_flags.GPU_XLA_FLAGS) - 1
    assert all(not a.startswith("--xla_gpu_all_reduce_combine") for a in added)
    opts = xla_flags.gpu_compiler_options("")
    assert opts["xla_gpu_enable_latency_hiding_scheduler"] is True
    assert opts["xla_gpu_all_reduce_combine_threshold_bytes"] == 8 * 2**20


def test_launchers_set_the_recommended_flags():
    for path in ("launch/slurm_gpu.sbatch", "launch/k8s/gpu-indexed-job.yaml"):
        with open(os.path.join(REPO, path)) as f:
            text = f.read()
        for k, v in xla_flags.GPU_XLA_FLAGS.items():
            assert f"--{k}={v}" in text, (path, k)


def test_kernel_counts_of_a_hand_written_gpu_entry():
    hlo = """HloModule m, is_scheduled=true

ENTRY %e (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  %c = (f32[2]{0}, u8[0]{0}) custom-call(%p, %p), custom_call_target="__cudnn$convForward"
  %g = f32[2]{0} get-tuple-element(%c), index=0
  %d = (f32[2]{0}, u8[0]{0}) custom-call(%g, %p), custom_call_target="__cudnn$convBackwardFilter"
  %f = f32[2]{0} fusion(%g), kind=kLoop, calls=%x
  ROOT %r = f32[2]{0} copy(%f)
}
"""
    k = gpu_lib.kernel_counts(hlo)
    assert k["cudnn"] == 2 and k["fusions"] == 1 and k["other"] == 1 and k["kernels"] == 4
    assert np.isfinite(math.fsum(k.values()))
