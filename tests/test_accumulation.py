"""Gradient accumulation with the paper's semantics: N devices x K micro-batches train exactly
like N*K devices with one micro-batch each (parameters, optimizer state and the pooled BN
statistics kept for evaluation), with and without ghost BN, float32 and float16 all-reduce."""

import functools

import jax
import numpy as np
import optax
import pytest
from helpers import IMAGE, batches, max_rel_err, tiny_model

from lmsgd.models import BatchStatsNorm
from lmsgd.parallel import create_mesh
from lmsgd.step import create_train_state, make_train_step


def _train(mesh, model, tx, steps, **kw):
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    step = make_train_step(model, tx, mesh, **kw)
    metrics = []
    for batch in steps:
        state, m = step(state, batch)
        metrics.append(jax.tree.map(float, m))
    return jax.tree.map(np.asarray, state), metrics


@pytest.mark.parametrize(
    ("virtual", "dtype", "unroll"),
    [(0, "float32", False), (2, "float32", False), (0, "float16", False), (2, "float32", True)],
)
def test_two_devices_times_four_equal_eight_devices(virtual, dtype, unroll):
    # 8 devices x 4 examples = 2 devices x 4 micro-batches x 4 examples: global batch 32, the
    # same examples in the same order (device d, micro-batch k holds chunk 4d + k).
    model = tiny_model(
        norm=functools.partial(BatchStatsNorm, group_size=1, virtual_batch_size=virtual)
    )
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.2, momentum=0.9))
    steps = batches(3, seed=7, batch=32)
    eight, m8 = _train(create_mesh(), model, tx, steps, allreduce_dtype=dtype)
    two, m2 = _train(
        create_mesh(devices=jax.devices()[:2]), model, tx, steps,
        allreduce_dtype=dtype, accumulation_steps=4, unroll=unroll,
    )  # fmt: skip
    # float32: the same sums in another order. float16: the two programs round different
    # partial sums (8 device gradients vs 2 sums of 4 micro-batch gradients) to float16, so
    # they can only agree to float16's precision (2^-11 per element). The yardstick: two
    # equally valid float16 reductions of the same 8 gradients (flat, and hierarchical over
    # 2 x 4) differ from each other by as much (measured: 2.2e-3 vs 2.0e-3 of the params).
    tol = 1e-5 if dtype == "float32" else 1e-2
    if dtype == "float16":
        other_order, _ = _train(
            create_mesh((2, 4)), model, tx, steps,
            allreduce_dtype=dtype, allreduce_algorithm="hierarchical",
        )  # fmt: skip
        for part in ("params", "opt_state"):
            yardstick = max_rel_err(getattr(other_order, part), getattr(eight, part))
            assert 0 < yardstick < tol
            assert max_rel_err(getattr(two, part), getattr(eight, part)) <= 1.5 * yardstick
    assert max_rel_err(two.params, eight.params) < tol
    assert max_rel_err(two.opt_state, eight.opt_state) < tol
    assert max_rel_err(two.batch_stats, eight.batch_stats) < tol
    np.testing.assert_allclose([m["loss"] for m in m2], [m["loss"] for m in m8], rtol=tol)
    np.testing.assert_allclose([m["accuracy"] for m in m2], [m["accuracy"] for m in m8], rtol=tol)
    # and the parameters moved: a step that did nothing would pass the comparisons above
    assert max_rel_err(eight.params, jax.tree.map(np.zeros_like, eight.params)) > 0


def test_accumulated_step_keeps_one_gradient_all_reduce():
    from lmsgd.models import count_params
    from lmsgd.parallel import describe_collectives

    model = tiny_model()
    tx = optax.sgd(0.1)
    mesh = create_mesh(devices=jax.devices()[:2])
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    batch = batches(1, batch=32)[0]
    programs = {
        k: make_train_step(model, tx, mesh, allreduce_dtype="float16", accumulation_steps=k)
        .lower(state, batch)
        .compile()
        for k in (1, 4)
    }
    f16 = {k: [c for c in describe_collectives(p) if c.dtype == "f16"] for k, p in programs.items()}
    # the float16 gradient travels once per step whatever K: every parameter's gradient,
    # 2 bytes each, in as many collectives as without accumulation
    assert sum(c.bytes for c in f16[4]) == 2 * count_params(state.params)
    assert len(f16[4]) == len(f16[1])


@pytest.mark.parametrize(
    ("variant", "devices", "micro"),
    [("pod", 1024, 32), ("pod", 128, 256), ("gpu8", 8, 256), ("v5p64", 32, 256)],
)
def test_paper_config_variants_keep_32768_images_and_32_image_statistics(variant, devices, micro):
    import pathlib

    from lmsgd.config import load_config_file
    from lmsgd.data.info import DatasetInfo
    from lmsgd.run import plan_run

    path = pathlib.Path(__file__).resolve().parents[1] / "configs/imagenet_resnet50_akiba32k.py"
    config = load_config_file(str(path), arg=variant)
    imagenet = DatasetInfo("imagenet2012", 1000, (224, 224, 3), 1_281_167, 50_000)
    plan = plan_run(config, imagenet, devices)
    # docs/recipe.md: 32,768 images per optimizer step, statistics over 32 images, 39 steps/epoch
    assert devices * plan.micro_batch * plan.accumulation_steps == 32768
    assert plan.micro_batch == micro and plan.bn_span_examples == 32
    assert plan.steps_per_epoch == 1_281_167 // 32768 == 39


@pytest.mark.parametrize("unroll", [True, False])
def test_peak_memory_is_flat_in_k(unroll):
    """At a fixed micro-batch, K micro-batches per step cost one micro-batch's activations
    (plus the gradient accumulator), rolled or unrolled: the unrolled loop (what CPU runs use)
    chains each micro-batch to the previous one's gradients, else XLA interleaves them."""
    import numpy as onp

    from lmsgd.models import count_params

    model = tiny_model()
    tx = optax.sgd(0.1)
    mesh = create_mesh(devices=jax.devices()[:1])
    image = (16, 16, 3)
    state = create_train_state(model, tx, jax.random.key(0), image, mesh)
    micro = 16
    temp = {}
    for k in (1, 4):
        rng = onp.random.default_rng(0)
        batch = {
            "image": rng.normal(size=(micro * k, *image)).astype(onp.float32),
            "label": rng.integers(0, 10, micro * k).astype(onp.int32),
        }
        step = make_train_step(model, tx, mesh, accumulation_steps=k, unroll=unroll)
        temp[k] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    param_bytes = 4 * count_params(state.params)
    assert temp[1] > 10 * param_bytes, temp  # activations dominate: the check can fail
    assert temp[4] <= 1.1 * temp[1] + 2 * param_bytes, (temp, param_bytes)
