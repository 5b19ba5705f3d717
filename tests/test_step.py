"""The sharded train step against a single-device reference that never uses shard_map."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import CLASSES, IMAGE, NDEV, PER_DEVICE, batches, max_rel_err, tiny_model

from lmsgd.models import BatchStatsNorm, create_model, pool_statistics
from lmsgd.optim import create_optimizer, default_optimizer_config
from lmsgd.parallel import create_mesh, describe_collectives, per_device_batch_size
from lmsgd.step import (
    create_train_state,
    global_norm,
    make_eval_step,
    make_population_stats_step,
    make_train_step,
)


def reference_run(model, tx, params, batch_stats, steps, group_size):
    """Single device, no collectives: each group of devices' examples is normalized together
    (a group of 1 is one device's chunk), gradients are averaged over groups in float32, and
    statistics are pooled with numpy's union formula."""
    opt_state = tx.init(params)
    group_examples = PER_DEVICE * (group_size or NDEV)

    def group_loss(p, x, y):
        logits, upd = model.apply(
            {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.mean(ce), upd["batch_stats"]

    grad_fn = jax.jit(jax.grad(group_loss, has_aux=True))
    grad_norms, history = [], []
    for batch in steps:
        n_groups = batch["image"].shape[0] // group_examples
        grads, stats = [], []
        for g in range(n_groups):
            sl = slice(g * group_examples, (g + 1) * group_examples)
            gr, st = grad_fn(params, batch["image"][sl], batch["label"][sl])
            grads.append(gr)
            stats.append(st)
        mean_grad = jax.tree.map(
            lambda *g: sum(np.asarray(x, np.float64) for x in g) / len(g), *grads
        )
        grad_norms.append(float(np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(mean_grad)))))
        mean_grad = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), mean_grad)
        updates, opt_state = tx.update(mean_grad, opt_state, params)
        params = optax.apply_updates(params, updates)
        batch_stats = pool_groups(stats)
        history.append(params)
    return history, batch_stats, grad_norms


def pool_groups(stats):
    """numpy/pool_statistics union of each layer's per-group (mean, var)."""
    flats = [flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, st)) for st in stats]
    out = {}
    for key in flats[0]:
        if key[-1] == "mean":
            var_key = (*key[:-1], "var")
            m, v = pool_statistics(
                jnp.stack([f[key] for f in flats]), jnp.stack([f[var_key] for f in flats])
            )
            out[key], out[var_key] = m, v
    return flax.traverse_util.unflatten_dict(out)


def run_sharded(mesh, model, tx, steps, **kw):
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    init_params = jax.tree.map(np.asarray, state.params)
    init_stats = jax.tree.map(np.asarray, state.batch_stats)
    step = make_train_step(model, tx, mesh, **kw)
    metrics, history = [], []
    for batch in steps:
        state, m = step(state, batch)
        metrics.append(jax.tree.map(float, m))
        history.append(jax.tree.map(np.asarray, state.params))  # the state is donated
    return state, metrics, init_params, init_stats, step, history


@pytest.fixture(scope="module")
def mesh():
    return create_mesh()


@pytest.fixture(scope="module")
def mesh2d():
    return create_mesh((2, 4))


@pytest.mark.parametrize("group_size", [1, 2, 4, 0])
def test_equals_single_device_reference(mesh, group_size):
    model = tiny_model(norm=functools.partial(BatchStatsNorm, group_size=group_size))
    tx = optax.sgd(0.5, momentum=0.9)
    steps = batches(3, seed=group_size)
    state, metrics, params0, stats0, _, history = run_sharded(mesh, model, tx, steps)
    ref_history, ref_stats, ref_norms = reference_run(model, tx, params0, stats0, steps, group_size)
    # After one step and after three: the gradient is the global-batch mean at every step
    # (an extra psum, the shard_map trap, would scale it by 8).
    assert max_rel_err(history[0], ref_history[0]) < 1e-5
    assert max_rel_err(history[-1], ref_history[-1]) < 1e-5
    assert max_rel_err(state.batch_stats, ref_stats) < 1e-5
    np.testing.assert_allclose([m["grad_norm"] for m in metrics], ref_norms, rtol=1e-5)
    assert int(state.step) == 3


@pytest.fixture(scope="module")
def per_device_reference():
    model = tiny_model()
    tx = optax.sgd(0.5, momentum=0.9)
    steps = batches(2, seed=5)
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, create_mesh())
    params0 = jax.tree.map(np.asarray, state.params)
    history, _, _ = reference_run(model, tx, params0, state.batch_stats, steps, group_size=1)
    return model, tx, steps, history[-1]


@pytest.mark.parametrize(
    "algorithm,fuse",
    [("flat", True), ("hierarchical", True), ("two_dimensional", True), ("two_dimensional", False)],
)
def test_algorithms_agree_with_reference(mesh2d, per_device_reference, algorithm, fuse):
    model, tx, steps, ref = per_device_reference
    state, *_ = run_sharded(
        mesh2d, model, tx, steps, allreduce_algorithm=algorithm, allreduce_fuse=fuse
    )
    assert max_rel_err(state.params, ref) < 1e-5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_allreduce_close_to_float32(mesh, dtype):
    model = tiny_model()
    tx = optax.sgd(0.5)
    steps = batches(1, seed=2)
    s32, m32, params0, *_ = run_sharded(mesh, model, tx, steps)
    s16, m16, *_ = run_sharded(mesh, model, tx, steps, allreduce_dtype=dtype)
    d32 = jax.tree.map(lambda a, b: np.asarray(a) - b, s32.params, params0)
    d16 = jax.tree.map(lambda a, b: np.asarray(a) - b, s16.params, params0)
    diff = np.sqrt(
        sum(np.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(d16), jax.tree.leaves(d32)))
    )
    norm = np.sqrt(sum(np.sum(a**2) for a in jax.tree.leaves(d32)))
    assert diff / norm < 1e-2
    assert diff > 0  # it really travelled in lower precision
    np.testing.assert_allclose(m16[0]["grad_norm"], m32[0]["grad_norm"], rtol=1e-2)


def gradient_collectives(mesh, dtype, algorithm, fuse, param_count):
    model = tiny_model()
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    step = make_train_step(
        model, tx, mesh, allreduce_algorithm=algorithm, allreduce_dtype=dtype, allreduce_fuse=fuse
    )
    batch = batches(1)[0]
    return step.lower(state, batch), state


@pytest.mark.parametrize(
    "algorithm,dtype",
    [
        ("flat", "float32"),
        ("flat", "bfloat16"),
        ("flat", "float16"),
        ("hierarchical", "float16"),
        ("two_dimensional", "float16"),
        ("two_dimensional", "bfloat16"),
    ],
)
def test_collectives_carry_the_configured_dtype_and_all_gradient_bytes(mesh2d, algorithm, dtype):
    lowered, state = gradient_collectives(mesh2d, dtype, algorithm, True, None)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    stats = sum(x.size for x in jax.tree.leaves(state.batch_stats))
    size = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    hlo_dtype = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[dtype]
    programs = {"lowered": lowered, "compiled": lowered.compile()}
    for kind, program in programs.items():
        # XLA:CPU has no bfloat16 all-reduce and promotes it to float32 when compiling.
        expected = "f32" if (kind == "compiled" and dtype == "bfloat16") else hlo_dtype
        found = describe_collectives(program)
        grad = [c for c in found if c.dtype == expected and c.element_count >= params // 2]
        if algorithm == "two_dimensional":
            (scatter,) = [c for c in found if c.op == "reduce-scatter"]
            (gather,) = [c for c in found if c.op == "all-gather"]
            across = [
                c
                for c in found
                if c.op == "all-reduce"
                and c.dtype == expected
                and c.element_count == scatter.element_count
            ]
            assert scatter.dtype == gather.dtype == expected and across, (kind, found)
            # Inside the host the whole (padded) gradient is scattered, then gathered...
            assert scatter.group_size == gather.group_size == 4
            assert scatter.element_count * 4 == gather.element_count
            assert params <= gather.element_count < params + 4
            # ...and across hosts only a quarter of it travels.
            assert across[0].group_size == 2
        else:
            hops = 2 if algorithm == "hierarchical" else 1
            total = sum(c.bytes for c in found if c.op == "all-reduce" and c.dtype == expected)
            if expected == "f32":  # gradients and statistics may be combined into one buffer
                assert hops * params * 4 <= total <= hops * params * 4 + 8 * (stats + 8)
            else:
                assert total == hops * params * size
            assert 1 <= len(grad) <= 2 * hops  # fused: the gradient travels in a few ops


def test_unfused_sends_one_collective_per_tensor_before_combining(mesh):
    lowered, state = gradient_collectives(mesh, "float16", "flat", False, None)
    tensors = len(jax.tree.leaves(state.params))
    f16 = [c for c in describe_collectives(lowered) if c.dtype == "f16"]
    assert len(f16) == tensors
    assert sum(c.element_count for c in f16) == sum(x.size for x in jax.tree.leaves(state.params))


def test_step_compiles_once(mesh):
    model = tiny_model()
    steps = batches(4, seed=3)
    step = run_sharded(mesh, model, optax.sgd(0.1), steps)[4]
    assert step._cache_size() == 1


def test_state_is_donated(mesh):
    model = tiny_model()
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    step = make_train_step(model, tx, mesh)
    leaf = jax.tree.leaves(state.params)[0]
    step(state, batches(1)[0])
    assert leaf.is_deleted()


def test_batch_must_divide_over_devices(mesh):
    assert per_device_batch_size(64, mesh) == 8
    with pytest.raises(
        ValueError, match="global_batch_size=60 must be a positive multiple of the 8"
    ):
        per_device_batch_size(60, mesh)


def test_eval_step_counts_every_real_example(mesh):
    model = tiny_model()
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    state, _ = make_train_step(model, tx, mesh)(state, batches(1)[0])
    eval_step = make_eval_step(model, mesh)
    data = batches(1, seed=9, batch=32)[0]
    mask = np.zeros(32, np.float32)
    mask[:21] = 1  # a padded last batch: 21 real examples
    sums = jax.tree.map(float, eval_step(state, {**data, "mask": mask}))
    # Reference: plain per-example loop in evaluation mode on one device.
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, data["image"][:21], train=False
    )
    logits = np.asarray(logits)
    top1 = np.sum(np.argmax(logits, -1) == data["label"][:21])
    top5 = sum(lab in np.argsort(-row)[:5] for row, lab in zip(logits, data["label"][:21]))
    logp = (
        logits
        - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    loss = -np.sum(logp[np.arange(21), data["label"][:21]])
    assert sums["count"] == 21
    assert sums["top1_correct"] == top1
    assert sums["top5_correct"] == top5
    np.testing.assert_allclose(sums["loss_sum"], loss, rtol=1e-5)


def test_population_stats_pool_over_devices(mesh):
    """Precise-BN statistics of one batch equal the union of per-device statistics."""
    model = tiny_model()
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    data = batches(1, seed=4)[0]
    stats = make_population_stats_step(model, mesh)(state, data)
    _, ref_stats, _ = reference_run(
        model, optax.sgd(0.0), state.params, state.batch_stats, [data], 1
    )
    assert max_rel_err(stats, ref_stats) < 1e-5


def test_global_norm_matches_numpy_and_overflows_like_a_norm():
    rng = np.random.default_rng(0)
    tree = {
        "kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
        "bias": rng.normal(size=(8,)).astype(np.float32),
        "scalar": np.float32(2.5),
        "stats": {"mean": rng.normal(size=(5,)).astype(np.float32)},
        "half": rng.normal(size=(4, 2)).astype(np.float16),
    }
    leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
    expected = np.linalg.norm(np.concatenate(leaves))
    got = jax.jit(global_norm)(jax.tree.map(jnp.asarray, tree))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert float(global_norm({})) == 0.0
    # The train step's `finite` flag relies on this: a 1-D gradient entry above ~1.8e19 (which
    # rmsprop_warmup(saturate=False) would square to inf) makes the norm inf.
    tree["bias"][3] = 2e19
    assert np.isinf(jax.jit(global_norm)(jax.tree.map(jnp.asarray, tree)))


def test_donated_state_is_updated_in_place_without_copies(mesh):
    """Every state buffer pairs with its own output: the compiled step does not copy the 1-D
    optimizer state or statistics in and out."""
    import re

    model = create_model("cifar_resnet8", num_classes=CLASSES, width_multiplier=0.25)
    tx, _ = create_optimizer(
        default_optimizer_config(), global_batch_size=16, steps_per_epoch=10, num_epochs=2
    )
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    batch = {
        "image": jnp.zeros((NDEV * PER_DEVICE, *IMAGE), jnp.float32),
        "label": jnp.zeros((NDEV * PER_DEVICE,), jnp.int32),
    }
    step = make_train_step(model, tx, mesh)
    hlo = step.lower(state, batch).compile().as_text()
    entry = next(c for c in re.split(r"\n(?=\S)", hlo) if c.startswith("ENTRY"))
    inputs = set(re.findall(r"(%\S+) = \S+ parameter\(", entry))
    # Copies of a state input (kept before its buffer is overwritten) or into a donated
    # output buffer (ordered by control-predecessors); layout copies are neither.
    copied = [
        shape
        for shape, operand, rest in re.findall(r"= (\w+\[[\d,]*\])\S* copy\((%\S+?)\)(.*)", entry)
        if operand in inputs or "control-predecessors" in rest
    ]
    # Scalars (step counters) and at most one vector (XLA keeps the head's bias): with the
    # statistics' buffers mis-paired, every 1-D optimizer state and statistic was copied.
    assert len([shape for shape in copied if not shape.endswith("[]")]) <= 1, copied


def test_mean_gradient_is_not_written_out(mesh):
    """The all-reduced sums are scaled to the mean inside the optimizer's loops: no kernel
    of the compiled step only reads one all-reduced gradient and writes it out scaled (a pass
    over memory and a kernel per tensor, as when the gradient norm read the scaled mean)."""
    import re

    model = create_model("cifar_resnet8", num_classes=CLASSES, width_multiplier=0.25)
    tx, _ = create_optimizer(
        default_optimizer_config(), global_batch_size=16, steps_per_epoch=10, num_epochs=2
    )
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    batch = jax.tree.map(jnp.asarray, batches(1)[0])
    hlo = make_train_step(model, tx, mesh).lower(state, batch).compile().as_text()
    entry = next(c for c in re.split(r"\n(?=\S)", hlo) if c.startswith("ENTRY"))
    entry = re.sub(r"/\*index=\d+\*/", "", entry)
    reduces = re.findall(r"(%\S+) = \(([^)]*)\) all-reduce\(", entry)
    grad_reduce, _ = max(reduces, key=lambda r: r[1].count("["))  # the gradients' tuple
    reduced = dict(  # name -> shape of each all-reduced array
        re.findall(
            rf"(%\S+) = (\w+\[[\d,]*\])\S* get-tuple-element\({re.escape(grad_reduce)}\)", entry
        )
    )
    # (XLA may merge equal gradients, e.g. of two offsets at their initial values)
    assert len(reduced) > len(jax.tree.leaves(state.params)) // 2, "gradients not found"
    # A kernel of one all-reduced operand writing an array of its shape (not a norm's scalar,
    # nor a slice of the pooled statistics, which travel in the same all-reduce).
    scaled_copies = [
        line.strip()[:120]
        for line in entry.splitlines()
        if (m := re.search(r"= (\w+\[[\d,]*\])\S* fusion\((%[^,)\s]+)\), kind=kLoop", line))
        and reduced.get(m[2]) == m[1]
    ]
    assert not scaled_copies, scaled_copies


def test_step_without_norms_updates_the_same_bits_and_reads_less(mesh):
    """`norms=False` (steps that neither log nor save): the same state, bit for bit, metrics
    without the norms, `finite` from the loss; `make_state_check` then finds a non-finite
    parameter, statistic or optimizer buffer. Compiled, it reads fewer bytes."""
    from lmsgd.step import make_state_check

    model = tiny_model()
    tx, _ = create_optimizer(
        default_optimizer_config(), global_batch_size=16, steps_per_epoch=10, num_epochs=2
    )
    steps = batches(3, seed=5)
    full, full_metrics = run_sharded(mesh, model, tx, steps)[:2]
    lean, lean_metrics = run_sharded(mesh, model, tx, steps, norms=False)[:2]
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(lean)):
        np.testing.assert_array_equal(a, b)
    assert {"grad_norm", "param_norm"} <= full_metrics[0].keys()
    assert not {"grad_norm", "param_norm"} & lean_metrics[0].keys()
    assert [m["loss"] for m in lean_metrics] == [m["loss"] for m in full_metrics]
    assert all(m["finite"] for m in lean_metrics)
    check = make_state_check(mesh)
    assert bool(check(lean))
    for where in ("params", "batch_stats", "opt_state"):
        tree = getattr(lean, where)
        leaves, treedef = jax.tree.flatten(tree)
        i = next(i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.floating))
        leaves[i] = leaves[i].at[(0,) * leaves[i].ndim].set(jnp.nan)
        assert not bool(check(lean.replace(**{where: treedef.unflatten(leaves)}))), where
    batch = batches(1, seed=6)[0]
    state = create_train_state(model, tx, jax.random.key(0), IMAGE, mesh)
    cost = lambda **kw: make_train_step(model, tx, mesh, **kw).lower(state, batch).compile()
    read = lambda c: (lambda a: a[0] if isinstance(a, list) else a)(c.cost_analysis())[
        "bytes accessed"
    ]
    assert read(cost(norms=False)) < read(cost(norms=True))
