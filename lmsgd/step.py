"""The sharded train and eval steps: the hot core of lmsgd.

One jit-compiled program per step runs forward, backward, the gradient all-reduce and the
optimizer update on every device of the mesh. Forward, backward and all-reduce are a
`jax.shard_map`, i.e. a per-device program: normalization statistics are those of one device
(or of a configured group), exactly as in the paper, instead of the global batch that plain
`jit` would silently pool over. The optimizer update then runs on the replicated mean gradient,
computed by every device.

Gradients: inside `shard_map` (check_vma=True) JAX would psum the gradient of replicated
parameters in float32 on its own. We take it with respect to a device-varying copy
(`jax.lax.pcast(..., to='varying')`), so the gradient is local and the only reduction is ours:
`allreduce_sum` (and its scale to the mean), in the configured dtype and topology. Tests check
the result is the global-batch mean.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lmsgd.data.metrics import masked_topk_correct
from lmsgd.models.normalization import BATCH_STATS, pool_statistics
from lmsgd.models.resnet import REMAT_SAVED
from lmsgd.parallel.allreduce import allreduce_sum
from lmsgd.parallel.mesh import batch_sharding, data_axes, replicated

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; replicated on every device.

    `batch_stats` holds, per normalization layer, the statistics of the last training step
    pooled exactly over all workers (docs/recipe.md s.3), and in the moving-average ablation the
    EMAs too.
    """

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any


GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def bind_model_to_mesh(model: nn.Module, mesh: Mesh) -> nn.Module:
    """The model with its normalization statistics spanning this mesh's data axes and, on a
    mesh of GPUs, the derivatives XLA:GPU compiles best (`ResNet.gpu_derivatives`)."""
    fields = {"norm": functools.partial(model.norm, axis_name=data_axes(mesh))}
    if getattr(model, "gpu_derivatives", False) is None:  # None: by the mesh's platform
        fields["gpu_derivatives"] = mesh.devices.flat[0].platform in GPU_PLATFORMS
    return model.clone(**fields)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
    mesh: Mesh,
) -> TrainState:
    """Initializes parameters and optimizer state, replicated over `mesh`."""
    init = functools.partial(init_train_state, model, tx, rng, image_shape)
    return jax.jit(init, out_shardings=replicated(mesh))()


def init_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: tuple[int, int, int],
) -> TrainState:
    """The initial state, unplaced: under `jax.eval_shape` it gives the state's shapes on any
    mesh (the planner's, whose devices may be remote)."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get(BATCH_STATS, {}),
        opt_state=tx.init(params),
    )


def pool_micro_batch_stats(stacked: Any) -> Any:
    """Exact statistics of the union of K equal micro-batches of one device.

    `stacked` holds each layer's `mean`/`var` with a leading axis K (from `jax.lax.scan`);
    moving averages, if any, are averaged like the devices' (`pool_batch_stats`).
    """
    flat = flax.traverse_util.flatten_dict(stacked)
    out = {}
    for key, value in flat.items():
        if key[-1] == "mean":
            var_key = (*key[:-1], "var")
            out[key], out[var_key] = pool_statistics(value, flat[var_key])
        elif key[-1] != "var":
            out[key] = jnp.mean(value, axis=0)
    return flax.traverse_util.unflatten_dict(out)


def pool_batch_stats(batch_stats: Any, axes: tuple[str, ...]) -> Any:
    """Exact statistics of the union of all devices' examples (inside `shard_map`).

    mean = mean of means; var = mean of (var + (mean_i - mean)^2). Moving averages, if any,
    are averaged (as Flax's ImageNet example does). All of one kind travel in one buffer.
    """
    if not batch_stats:
        return batch_stats
    flat = flax.traverse_util.flatten_dict(batch_stats)
    pick = lambda name: {k: v for k, v in flat.items() if k[-1] == name}
    means, unravel_means = ravel_pytree(pick("mean"))
    variances, unravel_vars = ravel_pytree(pick("var"))
    pooled_mean, pooled_var = pool_statistics(
        means, variances, mean=lambda x: jax.lax.pmean(x, axes)
    )
    out = {**unravel_means(pooled_mean), **unravel_vars(pooled_var)}
    emas = {k: v for k, v in flat.items() if k[-1].startswith("ema_")}
    if emas:
        out.update(jax.lax.pmean(emas, axes))
    return flax.traverse_util.unflatten_dict(out)


def after(x: jax.Array, tree: Any) -> jax.Array:
    """``x`` unchanged, but computed only once every leaf of ``tree`` is.

    Adds ``0 * (one element of each leaf)``, which XLA cannot fold for floats (``0 * nan`` is
    nan), so an unrolled micro-batch starts only after the previous one's gradients exist and
    its activations can reuse that one's buffers: without it XLA:CPU interleaves the micro-
    batches and peak memory grows with K (XLA:CPU drops ``lax.optimization_barrier``). A
    non-finite gradient makes ``x`` nan, which the step's ``finite`` flag reports anyway.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return x
    token = sum(jnp.ravel(leaf)[0].astype(jnp.float32) for leaf in leaves)
    return x + (token * 0.0).astype(x.dtype)


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every element of every leaf of ``tree``, a float32 scalar (the value of
    ``optax.tree.norm``, in fewer kernels).

    XLA:CPU compiles each reduction of a small vector into three kernels (square,
    reduce-window, reduce), so per-leaf norms of ResNet-50's 107 vectors (biases,
    normalization scales and offsets) and 106 statistics cost ~700 of its train step's ~3,000
    kernels. The 1-D leaves (0.2% of its parameters) are concatenated and reduced once.
    """
    leaves = jax.tree.leaves(tree)
    vectors = [jnp.ravel(x).astype(jnp.float32) for x in leaves if jnp.ndim(x) <= 1]
    squares = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves if jnp.ndim(x) > 1]
    if vectors:
        squares.append(jnp.sum(jnp.square(jnp.concatenate(vectors))))
    return jnp.sqrt(sum(squares, jnp.zeros((), jnp.float32)))


def training_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example cross-entropy against smoothed one-hot labels, float32 `[B]`."""
    if not label_smoothing:
        return cross_entropy(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy in float32, `[B]`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Top-1 accuracy of a full (unpadded) batch, float32 scalar."""
    ones = jnp.ones(labels.shape, jnp.float32)
    return masked_topk_correct(logits, labels, ones, ks=(1,))["top1"] / labels.shape[0]


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    schedules: Mapping[str, optax.Schedule] | None = None,
    allreduce_algorithm: str = "flat",
    allreduce_dtype: str = "float32",
    allreduce_fuse: bool = False,
    allreduce_predivide_exponent: float = 0.5,
    allreduce_flatten: bool = False,
    accumulation_steps: int = 1,
    label_smoothing: float = 0.0,
    unroll: bool | int = False,
    norms: bool = True,
    remat: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds the jitted, sharded train step `(state, batch) -> (state, metrics)`.

    Args:
      model: a `ResNet` (any module with a `norm` factory and `train=`); its normalization span
        is bound to the mesh's data axes here.
      tx: the optimizer (its update is applied to the all-reduced mean gradient).
      mesh: from `create_mesh`; parameters and optimizer state are replicated over it.
      schedules: logged per step, evaluated at the step *before* the update (as the optimizer).
      allreduce_*: see `lmsgd.parallel.allreduce_mean`; `allreduce_flatten`: see
        `allreduce_sum` (off: on one node it saves XLA:GPU copies and memory, but across
        nodes XLA:GPU then combines the all-reduces worse, docs/performance.md).
      accumulation_steps: K. Each device splits its examples into K micro-batches and runs
        them one after another (`jax.lax.scan`: activations of one micro-batch live at a
        time), summing gradients locally; then one all-reduce and one optimizer update.
        Normalization statistics are per micro-batch, and the statistics kept for evaluation
        are the exact pool over all micro-batches of all devices: N devices x K micro-batches
        train exactly like N*K devices with one micro-batch each.
      label_smoothing: training loss against (1 - a) one-hot + a / classes (0 = none).
      unroll: unroll the micro-batch loop (`lax.scan(unroll=...)`). False keeps it a loop: the
        choice for GPU/TPU. XLA:CPU canonicalizes only top-level convolutions for its fast
        (Eigen) path, so a loop body's backward convolutions run ~20x slower (measured,
        docs/performance.md); CPU runs unroll. Each unrolled micro-batch's input is made to
        depend on the previous one's gradients (`after`), so that XLA still runs them one
        after another and memory stays flat in K.
    Returns:
      A function of the replicated `TrainState` and a global batch `{'image': [B, H, W, C],
      'label': [B]}` sharded over the data axes (B = global batch; B / devices must divide by
      K). The state is donated. Metrics are replicated scalars: loss and accuracy
      (global-batch means), grad_norm (of the mean gradient, before weight decay),
      param_norm (after the update), `finite` (bool: loss, gradient and the updated
      parameters and statistics all finite) and each schedule's value.
      remat: recompute in the backward pass what the forward pass computed, except the
        values the model names in `lmsgd.models.resnet.REMAT_SAVED` (convolution and block
        outputs, normalization statistics): each block's normalize + ReLU is computed twice
        instead of kept (`jax.checkpoint`). Less memory, more memory traffic; the same
        gradients up to float rounding.
      norms: False leaves out grad_norm and param_norm, and `finite` is the loss's alone: a
        step that reads no buffer beyond what the update needs (the driver takes this one on
        steps that neither log nor save, and checks the state with `make_state_check`
        before saving it). Its state is the same, bit for bit.

    An optimizer state without `rmsprop_warmup`'s second buffer (after the hand-over,
    `lmsgd.optim.without_rms_buffer`) compiles a second program that neither reads nor
    carries it.
    """
    axes = data_axes(mesh)
    model = bind_model_to_mesh(model, mesh)
    schedules = dict(schedules or {})
    k = int(accumulation_steps)
    if k < 1:
        raise ValueError(f"accumulation_steps={k} must be >= 1")

    def micro_step(params, batch_stats, images, labels):
        """Loss, accuracy, local gradient and statistics of one (micro-)batch."""

        def forward(p):
            return model.apply(
                {"params": p, BATCH_STATS: batch_stats}, images, train=True, mutable=[BATCH_STATS]
            )

        if remat:
            forward = jax.checkpoint(
                forward, policy=jax.checkpoint_policies.save_only_these_names(*REMAT_SAVED)
            )

        def loss_fn(p):
            logits, updates = forward(p)
            return jnp.mean(training_loss(logits, labels, label_smoothing)), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, accuracy(logits, labels), grads, updates.get(BATCH_STATS, {})

    def gradients(params, batch_stats, batch: Batch):
        """Per device: the all-reduced mean gradient and its norm, the global-batch loss and
        accuracy and the exactly pooled statistics, all invariant over the mesh."""
        local_params = jax.lax.pcast(params, axes, to="varying")
        if k == 1:
            loss, acc, grads, stats = micro_step(
                local_params, batch_stats, batch["image"], batch["label"]
            )
        else:
            split = lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:])

            def body(carry, micro):
                images, labels = micro
                if unroll:
                    images = after(images, carry[2])
                loss, acc, grads, stats = micro_step(local_params, batch_stats, images, labels)
                total = jax.tree.map(jnp.add, carry, (loss, acc, grads))
                return total, stats

            zero = jax.lax.pcast(
                (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params)),
                axes,
                to="varying",
            )
            (loss, acc, grads), stats = jax.lax.scan(
                body, zero, (split(batch["image"]), split(batch["label"])), unroll=unroll
            )
            loss, acc, grads = jax.tree.map(lambda x: x / k, (loss, acc, grads))
            stats = pool_micro_batch_stats(stats)
        sums, scale = allreduce_sum(
            grads,
            data_axes=axes,
            algorithm=allreduce_algorithm,
            dtype=allreduce_dtype,
            fuse=allreduce_fuse,
            predivide_exponent=allreduce_predivide_exponent,
            flatten=allreduce_flatten,
        )
        # The norm is taken of the sums and the mean is scaled where the optimizer reads it:
        # a norm of the scaled mean would make XLA:CPU write the mean out first (it fuses no
        # elementwise producer into a reduction): a pass and a kernel per tensor more. The
        # float32 sums' squares overflow N times sooner than the mean's (mean |g| ~ 1.8e16 at
        # N = 1,024): still only steps the driver refuses anyway, as `finite` then says.
        grad_norm = global_norm(sums) * scale if norms else None
        grads = jax.tree.map(lambda x: x * scale, sums)
        loss, acc = jax.lax.pmean((loss, acc), axes)
        return grads, grad_norm, loss, acc, pool_batch_stats(stats, axes)

    sharded_gradients = jax.shard_map(
        gradients, mesh=mesh, in_specs=(P(), P(), P(axes)), out_specs=P()
    )

    def step(state: TrainState, batch: Batch):
        grads, grad_norm, loss, acc, batch_stats = sharded_gradients(
            state.params, state.batch_stats, batch
        )
        # The update runs on the replicated gradient outside the shard_map: every device still
        # computes it (no collective is added; tests check the compiled ones), but the
        # per-device program's boundary then carries no optimizer state, which XLA compiles
        # faster (ResNet-50: ~0.7 s of ~10.6, docs/performance.md).
        updates_tx, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates_tx)
        metrics = {"loss": loss, "accuracy": acc}
        metrics.update({name: fn(state.step) for name, fn in schedules.items()})
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        if not norms:
            metrics["finite"] = jnp.isfinite(loss)
            return new_state, metrics
        metrics["grad_norm"] = grad_norm
        metrics["param_norm"] = global_norm(params)
        # One flag for the host: the loss, the gradient and the *updated* state are finite.
        # A blown-up step can keep a finite loss while its gradient, its parameters or its
        # normalization statistics (checkpointed for evaluation) are already inf. Norms, not
        # `all_finite`: a norm is finite iff every element is (or it overflows, i.e. some
        # |x| > ~1e19: a blown-up state, also refused), and XLA:CPU compiles 161 boolean
        # reductions per tree ~3x slower than the norms' sums (ResNet-50: ~6 s per step).
        metrics["finite"] = (
            jnp.isfinite(loss)
            & jnp.isfinite(metrics["grad_norm"])
            & jnp.isfinite(metrics["param_norm"])
            & jnp.isfinite(global_norm(batch_stats))
        )
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
        # The stored statistics are unused in training (BN uses the batch's); dropped from the
        # program, their donated buffers went to other outputs of the same shape, and XLA
        # then copied the 1-D optimizer state in and out (ResNet-50: 427 copies; now 3).
        keep_unused=True,
    )


def make_state_check(mesh: Mesh) -> Callable[[TrainState], jax.Array]:
    """Builds the jitted `state -> bool`: parameters, statistics and optimizer state all
    finite (their norms, as the train step's `finite` flag). The driver runs it before saving
    a state whose step computed no norms (`make_train_step(norms=False)`)."""

    def check(state: TrainState) -> jax.Array:
        floats = [x for x in jax.tree.leaves(state.opt_state)
                  if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]  # fmt: skip
        return (
            jnp.isfinite(global_norm(state.params))
            & jnp.isfinite(global_norm(state.batch_stats))
            & jnp.isfinite(global_norm(floats))
        )

    return jax.jit(check, out_shardings=replicated(mesh))


def make_eval_step(model: nn.Module, mesh: Mesh) -> Callable[[TrainState, Batch], Metrics]:
    """Builds the jitted, sharded eval step `(state, batch) -> sums`.

    The batch carries `mask` `[B]` (1.0 for real examples, 0.0 for padding), so a padded last
    batch is counted exactly. Returns replicated sums over the global batch: `count`,
    `loss_sum`, `top1_correct`, `top5_correct` (top-5 is top-min(5, classes)).
    Normalization uses the statistics in `state.batch_stats` (evaluation mode).
    """
    axes = data_axes(mesh)
    model = bind_model_to_mesh(model, mesh)

    def per_device(state: TrainState, batch: Batch) -> Metrics:
        logits = model.apply(
            {"params": state.params, BATCH_STATS: state.batch_stats}, batch["image"], train=False
        )
        mask = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        counts = masked_topk_correct(logits, labels, mask)  # top-5 is top-min(5, classes)
        sums = {
            "count": counts["count"],
            "loss_sum": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1_correct": counts["top1"],
            "top5_correct": counts["top5"],
        }
        return jax.lax.psum(sums, axes)

    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axes)), out_specs=P())
    return jax.jit(
        step, in_shardings=(replicated(mesh), batch_sharding(mesh)), out_shardings=replicated(mesh)
    )


def make_population_stats_step(model: nn.Module, mesh: Mesh) -> Callable[[TrainState, Batch], Any]:
    """Builds `(state, batch) -> batch_stats`: training-mode statistics of one global batch
    with the current weights, pooled over all devices (no parameter update).

    Averaging its outputs over K batches with `pool_statistics` gives "precise BN" population
    statistics (docs/recipe.md s.3, K > 1).
    """
    axes = data_axes(mesh)
    model = bind_model_to_mesh(model, mesh)

    def per_device(state: TrainState, batch: Batch):
        _, updates = model.apply(
            {"params": state.params, BATCH_STATS: state.batch_stats},
            batch["image"],
            train=True,
            mutable=[BATCH_STATS],
        )
        return pool_batch_stats(updates[BATCH_STATS], axes)

    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(axes)), out_specs=P())
    return jax.jit(
        step, in_shardings=(replicated(mesh), batch_sharding(mesh)), out_shardings=replicated(mesh)
    )
