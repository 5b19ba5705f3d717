"""RMSprop warm-up: RMSprop that hands over smoothly to momentum SGD (docs/recipe.md section 1).

Per parameter tensor, with gradient ``g_t`` (already all-reduced; L2 weight decay ``wd * theta``
added, here or before)::

    m_t     = mu2 * m_{t-1} + (1 - mu2) * g_t^2
    Delta_t = mu1 * Delta_{t-1} - (alpha_sgd + alpha_rmsprop / (sqrt(m_t) + eps)) * g_t
    theta_t = theta_{t-1} + eta * Delta_t
    alpha_rmsprop = (1 - alpha_sgd) * eta_rmsprop / eta

``Delta`` is a velocity in "SGD units": the learning rate ``eta`` multiplies it from outside,
so at ``alpha_sgd = 1`` this is momentum SGD with eta outside the buffer, the form Goyal et al.
(2017, "momentum correction") recommend. When eta changes, the whole velocity, its RMSprop
part included, is scaled by the new eta.

Numerics when eta is 0 or tiny
------------------------------
``alpha_rmsprop`` divides by eta, so the RMSprop part of ``Delta`` grows like ``1 / eta``. For
eta > 0 the returned update is formed as ``eta * Delta_t`` from the new Delta, i.e. as
``eta * (x / eta)`` for the RMSprop part: that costs at most a few float32 ulps against
``-(1 - alpha_sgd) * eta_rmsprop * g / (sqrt(m_t) + eps)`` written out, and lets the update read
only the new Delta (one loop over memory fewer; see "Memory traffic" below). At exactly
eta = 0 the update is the eta -> 0+ limit, computed without 1 / eta::

    eta * Delta_t -> -(1 - alpha_sgd) * eta_rmsprop * g_t / (sqrt(m_t) + eps)

so the RMSprop step stays "independent of eta" as docs/recipe.md says. At eta = 0 the RMSprop part
of the velocity has no finite value in units of eta, so we store
``Delta_t = mu1 * Delta_{t-1} - alpha_sgd * g_t``: that step's RMSprop move is applied to the
parameters but not carried as momentum into later steps. For tiny positive eta the state stays
finite as long as ``eta_rmsprop / eta`` does (``|g| / sqrt(m) <= 1 / sqrt(1 - mu2)`` bounds the
rest): with eta_rmsprop = 3e-4 in float32, |Delta| <= 0.03 / eta, finite for every eta above
the smallest normal float32 (~1.2e-38).
Note that a tiny eta followed by a large one amplifies the stored RMSprop velocity by their
ratio; that is a property of the paper's formulation (relevant only for warm-ups from ~0).

Memory traffic
--------------
Per float32 parameter an update must read g, m, Delta and write m, Delta and the step: 24
bytes. XLA:CPU fuses elementwise code into loops with one output each (it has no multi-output
fusion), so three outputs need three loops per tensor, and the fewest bytes they can move is
12 (m_t: reads g, m) + 16 (Delta_t: reads g, m_t, Delta) + 8 (the step: reads Delta_t) = 36,
1.5x the floor; that is what this update compiles to (``python -m lmsgd.bench optimizer``
prints it), as does the same update built from stock optax parts. Two choices get it there:

* the step reads only the new Delta (``eta * Delta_t``), so nothing expensive (``sqrt(m)``,
  the RMSprop direction) is shared between two loops: XLA never duplicates an expensive op
  into two loops, so sharing one makes it a parameter-sized buffer and a fourth loop (a
  select ``jnp.where(eta > 0, eta * Delta_t, limit)`` on the shared direction cost 52 bytes);
* the exact eta = 0 limit needs g and m_t in the step loop again (44 bytes), so it is
  compiled in only where the learning rate can be 0 (``learning_rate_can_be_zero``; the
  optimizer factory checks the schedule). A scalar ``lax.cond`` on eta = 0 instead compiles
  to 36 bytes for the update alone, but its outputs cannot fuse with ``apply_updates`` nor
  reuse donated buffers: 64 bytes and three parameter-sized temporaries in a train step.

With the update applied in the same program (``optax.apply_updates``, what the train step
does) the three loops are m_t (12), Delta_t (16) and the parameters (reads p, Delta_t; 12): 40
bytes against a floor of 28, as for the stock optax chain. With ``weight_decay`` the m_t and
Delta_t loops also read the parameter: 16 + 20 + 12 = 48 bytes, where
``optax.add_decayed_weights`` before the update costs a pass of its own (12 + 40 = 52).

On GPU and TPU, XLA fuses sibling loops into multi-output fusions, so the 24-byte floor
itself is reachable there.

Very large gradients: in float32 ``g^2`` overflows above ~1.8e19. With ``saturate=True`` (the
default) we saturate ``g^2`` at half the dtype's maximum (so ``m`` stays finite) and clip
``g / (sqrt(m) + eps)`` to its exact bound ``1 / sqrt(1 - mu2)`` (``m_t >= (1 - mu2) g_t^2``);
neither changes results for representable ``g^2``, and the SGD term is exact. NaN gradients
still propagate. ``saturate=False`` drops those two operations (~2% of the update's time, and
compile time) and behaves like optax's ``scale_by_rms`` there: ``m`` becomes inf for that
element and its RMSprop term 0 from then on. lmsgd's train step uses it: its ``finite`` flag
comes from the gradient's norm, which overflows for any such gradient, so the driver never
continues from that state.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | jax.Array | optax.Schedule


class RMSpropWarmupState(NamedTuple):
    """State of :func:`rmsprop_warmup`: a step counter and two parameter-sized buffers.

    Attributes:
      count: int32 scalar, number of updates applied so far (the step the schedules see next).
      m: running mean of squared gradients (``m_t``), per parameter, float32 or wider.
      delta: the velocity ``Delta_t`` in SGD units (the update is ``eta * delta``).
    """

    count: jax.Array
    m: optax.Updates
    delta: optax.Updates


def _evaluate(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """A scalar hyper-parameter at ``count``: calls it if it is a schedule."""
    return jnp.asarray(value(count) if callable(value) else value)


def _state_dtype(param_dtype: Any) -> jnp.dtype:
    # float32 for float32/bfloat16/float16 params (docs/recipe.md section 4: state in fp32), but no
    # narrowing of float64 params (lets the float64 reference test check the math exactly).
    return jnp.promote_types(param_dtype, jnp.float32)


def rmsprop_warmup(
    learning_rate: ScalarOrSchedule,
    alpha_sgd: ScalarOrSchedule,
    rmsprop_learning_rate: ScalarOrSchedule = 3e-4,
    momentum: float = 0.9,
    decay: float = 0.99,
    eps: float = 1e-8,
    delta_dtype: Any | None = None,
    learning_rate_can_be_zero: bool = True,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = None,
    saturate: bool = True,
) -> optax.GradientTransformation:
    """RMSprop warm-up of Akiba et al. (2017), docs/recipe.md section 1, as an optax transformation.

    All schedules are functions of the optimizer step (number of updates applied so far,
    starting at 0 for the first update), not of the epoch.

    Args:
      learning_rate: eta, the SGD learning rate (global, i.e. for the all-reduced gradient);
        float or schedule. Must be >= 0; 0 is handled (see the module docstring).
      alpha_sgd: the hand-over factor in [0, 1] (0: pure RMSprop, 1: momentum SGD); a
        schedule such as :func:`lmsgd.optim.alpha_sgd_schedule`, or a constant.
      rmsprop_learning_rate: eta_rmsprop, step size of the RMSprop part; float or schedule.
      momentum: mu1, decay of the velocity ``Delta``.
      decay: mu2, decay of the squared-gradient average ``m``.
      eps: added to ``sqrt(m)`` (outside the square root).
      delta_dtype: optional dtype of the ``Delta`` buffer (e.g. ``jnp.bfloat16`` to halve its
        memory); default float32 (float64 for float64 parameters). ``m`` and all arithmetic
        stay in float32 or wider.
      learning_rate_can_be_zero: True (default) computes the eta = 0 step as the eta -> 0+
        limit (module docstring), which costs the step loop a second read of g and m_t (44
        instead of 36 bytes per parameter on XLA:CPU). Pass False when eta > 0 at every step
        (:func:`lmsgd.optim.create_optimizer` checks the schedule and does): results are the
        same for eta > 0, and a zero eta then gives a zero step instead of the limit.
      weight_decay: L2 weight decay, added to the gradient (``g + wd * theta``) before both
        equations, as ``optax.add_decayed_weights`` before this transformation would (the same
        bits), but inside this update's own loops: one pass over memory fewer (12 bytes per
        parameter, and one compiled kernel per tensor). Needs ``params`` in ``update``.
      weight_decay_mask: which parameters decay: a tree of bools like the parameters, or a
        function of the parameters returning one (e.g. ``lmsgd.optim.multi_dim_mask``);
        None decays all.
      saturate: keep ``m`` and ``Delta`` finite for gradients above ~1e19 (module docstring).
        False drops those two operations, for callers that refuse non-finite gradient norms
        anyway (lmsgd's train step).

    Returns:
      An ``optax.GradientTransformation`` whose updates are ``eta_t * Delta_t`` (add them with
      ``optax.apply_updates``), cast to the gradient dtype. Its state is
      :class:`RMSpropWarmupState`.
    """

    def init_fn(params: optax.Params) -> RMSpropWarmupState:
        m = jax.tree.map(lambda p: jnp.zeros(p.shape, _state_dtype(p.dtype)), params)
        delta = jax.tree.map(
            lambda p: jnp.zeros(p.shape, delta_dtype or _state_dtype(p.dtype)), params
        )
        return RMSpropWarmupState(count=jnp.zeros([], jnp.int32), m=m, delta=delta)

    def update_fn(
        updates: optax.Updates, state: RMSpropWarmupState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, RMSpropWarmupState]:
        decays = _weight_decays(weight_decay, weight_decay_mask, params, updates)
        if params is None:
            params = decays  # unused: every decay is 0
        # Schedules see the step before it is incremented: the first update uses step 0.
        eta = _evaluate(learning_rate, state.count)
        alpha = _evaluate(alpha_sgd, state.count)
        eta_rms = _evaluate(rmsprop_learning_rate, state.count)

        @functools.cache
        def scalars(cd):
            """eta, alpha_sgd, alpha_rmsprop * eta and 1 / eta (0 at eta = 0) in the state's
            dtype; traced once per dtype, not once per tensor (161 times for ResNet-50)."""
            e, a = eta.astype(cd), alpha.astype(cd)
            c = ((1.0 - alpha) * eta_rms).astype(cd)
            positive = e > 0
            # 1 / eta where eta > 0, else 0 (drops the unrepresentable RMSprop velocity at 0).
            inv_e = jnp.where(positive, 1.0 / jnp.where(positive, e, 1.0), 0.0)
            return e, a, c, c * inv_e, positive

        def leaf_update(g, m, d, p, wd):
            cd = m.dtype  # float64 schedules (x64 mode) must not promote float32 state
            return _leaf_update(
                g, m, d, p, *scalars(cd), wd=wd, decay=decay, momentum=momentum, eps=eps,
                limit_at_zero=learning_rate_can_be_zero, saturate=saturate,
            )  # fmt: skip

        triples = jax.tree.map(leaf_update, updates, state.m, state.delta, params, decays)
        steps, m, delta = _unzip3(triples, updates)
        steps = optax.tree_utils.tree_cast_like(steps, updates)
        count = optax.safe_increment(state.count)
        return steps, RMSpropWarmupState(count=count, m=m, delta=delta)

    return optax.GradientTransformation(init_fn, update_fn)


@functools.partial(
    jax.jit, static_argnames=("wd", "decay", "momentum", "eps", "limit_at_zero", "saturate")
)
def _leaf_update(g, m, d, p, e, a, c, c_over_e, positive, *, wd, decay, momentum, eps,
                 limit_at_zero, saturate):  # fmt: skip
    """One tensor's update: ``(step, m_t, Delta_t)``. A jit of its own, so a model's tensors
    of one shape share one lowered function (ResNet-50: 161 tensors, 33 shapes), which XLA
    inlines: the same program, lowered and compiled faster."""
    cd = m.dtype
    bound = 1.0 / math.sqrt(1.0 - decay)
    g32, d32 = g.astype(cd), d.astype(cd)
    # Weight decay (L2 on the gradient) is added in each of the two loops that read the
    # gradient, written as g + wd p and g - (-wd) p (the same bits): as one expression XLA
    # would keep it as a buffer of its own, a fourth loop (12 bytes per parameter).
    g_m = g32 + wd * p.astype(cd) if wd else g32
    g_d = g32 - (-wd) * p.astype(cd) if wd else g32
    # Saturate g^2 (inf above ~1.8e19 in float32) at half the dtype's maximum so that m, a
    # convex combination, stays finite. NaN still propagates.
    square = jnp.square(g_m)
    if saturate:
        square = jnp.minimum(square, jnp.finfo(cd).max / 2)
    m = decay * m + (1.0 - decay) * square
    # Exactly, m_t >= (1 - mu2) g_t^2, so |g| / sqrt(m) <= 1 / sqrt(1 - mu2). Clipping to that
    # bound changes nothing in range and restores it where g^2 saturated above.
    rms_direction = g_d / (jnp.sqrt(m) + eps)
    if saturate:
        rms_direction = jax.lax.clamp(-bound, rms_direction, bound)
    delta = momentum * d32 - a * g_d - c_over_e * rms_direction
    if not limit_at_zero:
        # The step reads Delta_t alone: three loops, 36 bytes per parameter.
        return e * delta, m, delta.astype(d.dtype)
    # eta = 0: the step is the eta -> 0+ limit -eta_rms (1 - alpha) r. It takes its own sqrt:
    # sharing the one in Delta_t would make XLA keep sqrt(m_t) (or r) as a parameter-sized
    # buffer, as it never duplicates an expensive op into two loops. m >= 0, so maximum(m, 0)
    # is m (NaN included); it only keeps XLA's CSE from merging the two sqrt ops into one.
    limit_direction = g_d / (jnp.sqrt(jnp.maximum(m, 0.0)) + eps)
    if saturate:
        limit_direction = jax.lax.clamp(-bound, limit_direction, bound)
    limit = -c * limit_direction
    return jnp.where(positive, e * delta, limit), m, delta.astype(d.dtype)


def _weight_decays(
    weight_decay: float, mask: Any, params: optax.Params | None, like: optax.Updates
) -> Any:
    """Per-tensor weight decay factors (a tree like ``like`` of Python floats)."""
    if not weight_decay:
        return jax.tree.map(lambda _: 0.0, like)
    if params is None:
        raise ValueError("rmsprop_warmup with weight_decay needs `params` in update()")
    if callable(mask):
        mask = mask(params)
    if mask is None:
        return jax.tree.map(lambda _: float(weight_decay), like)
    if jax.tree.structure(mask) != jax.tree.structure(like):
        raise ValueError(
            "rmsprop_warmup(weight_decay_mask=...) must give one bool per parameter tensor, "
            f"shaped like the parameters; got {jax.tree.structure(mask)} for parameters "
            f"{jax.tree.structure(like)}"
        )

    def factor(on: Any) -> float:
        # The decay of each tensor is compiled into its loops, so it must be known when
        # tracing: a Python or numpy bool (as `multi_dim_mask` gives), not a traced array.
        try:
            return float(weight_decay) if bool(on) else 0.0
        except (jax.errors.ConcretizationTypeError, TypeError, ValueError) as e:
            raise ValueError(
                "rmsprop_warmup(weight_decay_mask=...) must give one bool per parameter "
                "tensor, known when tracing (Python or numpy bools, e.g. from "
                f"lmsgd.optim.multi_dim_mask, which decides by ndim); got {on!r}"
            ) from e

    return jax.tree.map(factor, mask)


def _unzip3(tree_of_triples: Any, like: Any) -> tuple[Any, Any, Any]:
    """A tree whose leaves are 3-tuples (shaped like ``like``) -> three trees."""
    treedef = jax.tree.structure(like)
    leaves = treedef.flatten_up_to(tree_of_triples)
    return tuple(treedef.unflatten([t[i] for t in leaves]) for i in range(3))
