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

Two entry points, as optax has for its own optimizers
------------------------------------------------------
:func:`scale_by_rmsprop_warmup` gives the direction ``-Delta_t`` from ``alpha_sgd`` and
``alpha_rmsprop`` directly, with no learning rate (like ``optax.scale_by_rms``); follow it with
``optax.scale_by_learning_rate``. :func:`rmsprop_warmup` is the alias: it ties
``alpha_rmsprop`` to eta and eta_rmsprop as above, multiplies by eta and takes the eta = 0
limit below. Both are the same fused pass with the same state, :class:`RMSpropWarmupState`,
and every numeric hyperparameter may be a traced array, so ``optax.inject_hyperparams`` and the
other optax wrappers work (docs/optimizer.md; tests/test_optim_contract.py).

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
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = float | jax.Array | optax.Schedule


class RMSpropWarmupState(NamedTuple):
    """State of :func:`rmsprop_warmup` and :func:`scale_by_rmsprop_warmup`: a step counter
    and two parameter-sized buffers.

    Attributes:
      count: int32 scalar, number of updates applied so far (the step the schedules see next).
      m: running mean of squared gradients (``m_t``), per parameter, float32 or wider; or
        None once the hand-over is complete (:func:`without_rms_buffer`): the update is then
        momentum SGD and neither reads nor writes a second buffer.
      delta: the velocity ``Delta_t`` of the paper, in SGD units, pointing downhill
        (:func:`rmsprop_warmup`'s update is ``eta * delta``; the direction
        :func:`scale_by_rmsprop_warmup` returns is ``-delta``).
    """

    count: jax.Array
    m: optax.Updates
    delta: optax.Updates


def _evaluate(value: Any, count: jax.Array) -> Any:
    """A scalar hyper-parameter at ``count``: calls it if it is a schedule. Python numbers stay
    Python numbers, so that ``1 - decay`` and friends are formed in double precision as
    before; arrays (e.g. from ``optax.inject_hyperparams``) stay arrays, possibly traced."""
    if callable(value):
        return jnp.asarray(value(count))
    return value if isinstance(value, numbers.Real) else jnp.asarray(value)


def _state_dtype(param_dtype: Any) -> jnp.dtype:
    # float32 for float32/bfloat16/float16 params (docs/recipe.md section 4: state in fp32),
    # but no narrowing of float64 params (lets the float64 reference test check the math).
    return jnp.promote_types(param_dtype, jnp.float32)


def _no_decay(weight_decay: Any) -> bool:
    """Weight decay known, when building, to be off: None or a Python/numpy zero. An array
    (``inject_hyperparams`` makes every number one) may hold any value when traced."""
    return weight_decay is None or (isinstance(weight_decay, numbers.Real) and weight_decay == 0)


def scale_by_rmsprop_warmup(
    alpha_sgd: ScalarOrSchedule,
    alpha_rmsprop: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    decay: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    delta_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule | None = None,
    weight_decay_mask: Any = None,
    saturate: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """The direction of RMSprop warm-up, without a learning rate, as ``optax.scale_by_rms``.

    Per tensor, in the paper's own terms (docs/recipe.md section 1)::

        m_t     = decay * m_{t-1} + (1 - decay) * g_t^2
        Delta_t = momentum * Delta_{t-1} - (alpha_sgd + alpha_rmsprop / (sqrt(m_t) + eps)) * g_t

    and the returned direction is ``-Delta_t`` (it points along the gradient, as optax's
    ``scale_by_*`` directions do): follow it with ``optax.scale_by_learning_rate(eta)``. The
    paper ties the two weights to the learning rates, ``alpha_rmsprop = (1 - alpha_sgd) *
    eta_rmsprop / eta``; :func:`rmsprop_warmup` does that for you (and handles eta = 0), so use
    this building block where you want a chain of your own. Same fused single pass per tensor
    as :func:`rmsprop_warmup`, and the same state.

    Args:
      alpha_sgd: weight of the gradient (the SGD part); float, array or schedule of the step.
      alpha_rmsprop: weight of ``g / (sqrt(m) + eps)`` (the RMSprop part); float, array or
        schedule.
      momentum: mu1, decay of the velocity ``Delta``.
      decay: mu2, decay of the squared-gradient average ``m``.
      eps: added to ``sqrt(m)`` (outside the square root).
      delta_dtype: dtype of the ``Delta`` buffer (e.g. ``jnp.bfloat16`` or ``'bfloat16'``);
        default float32 (float64 for float64 parameters). ``m`` and all arithmetic stay in
        float32 or wider.
      weight_decay: L2 weight decay added to the gradient (``g + wd * theta``) inside the same
        loops; None or 0: none. Needs ``params`` in ``update``.
      weight_decay_mask: which parameters decay: a tree of bools like the parameters, or a
        function of them returning one (e.g. ``lmsgd.optim.multi_dim_mask``); None: all.
      saturate: keep the state finite for gradients above ~1e19 (see the module docstring).

    Every numeric argument may be a traced array: ``optax.inject_hyperparams`` works as for
    optax's own transformations (pass ``static_args='weight_decay_mask'`` for a callable mask).

    Example (the paper's weights at eta = 0.1, eta_rmsprop = 3e-4, alpha_sgd = 0.5):

    >>> import jax.numpy as jnp
    >>> import optax
    >>> from lmsgd.optim import scale_by_rmsprop_warmup
    >>> tx = optax.chain(
    ...     scale_by_rmsprop_warmup(alpha_sgd=0.5, alpha_rmsprop=(1 - 0.5) * 3e-4 / 0.1),
    ...     optax.scale_by_learning_rate(0.1),
    ... )
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.full(3, 0.5)}, tx.init(params))
    >>> print(updates["w"].round(6))
    [-0.0265 -0.0265 -0.0265]
    """
    return _rmsprop_warmup_transformation(
        lambda count: (-1.0, _evaluate(alpha_sgd, count), 0.0, _evaluate(alpha_rmsprop, count)),
        momentum=momentum, decay=decay, eps=eps, delta_dtype=delta_dtype,
        limit_at_zero=False, weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
        saturate=saturate, name="scale_by_rmsprop_warmup",
    )  # fmt: skip


def rmsprop_warmup(
    learning_rate: ScalarOrSchedule,
    alpha_sgd: ScalarOrSchedule,
    rmsprop_learning_rate: ScalarOrSchedule = 3e-4,
    momentum: ScalarOrSchedule = 0.9,
    decay: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    delta_dtype: Any | None = None,
    learning_rate_can_be_zero: bool = True,
    weight_decay: ScalarOrSchedule | None = None,
    weight_decay_mask: Any = None,
    saturate: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """RMSprop warm-up of Akiba et al. (2017), docs/recipe.md section 1, as an optax alias.

    For eta > 0 this is ``optax.chain(scale_by_rmsprop_warmup(alpha_sgd, (1 - alpha_sgd) *
    rmsprop_learning_rate / learning_rate, ...), optax.scale_by_learning_rate(learning_rate))``
    in one fused pass per tensor with one state (:class:`RMSpropWarmupState`, the layout of
    lmsgd's checkpoints); at eta = 0 it takes the eta -> 0+ limit (module docstring).

    All schedules are functions of the optimizer step (number of updates applied so far,
    starting at 0 for the first update), not of the epoch. Every numeric argument may also be
    an array, traced or not: ``optax.inject_hyperparams(rmsprop_warmup)`` keeps them in its
    state, where they can change between steps without recompiling.

    Args:
      learning_rate: eta, the SGD learning rate (global, i.e. for the all-reduced gradient);
        float, array or schedule. Must be >= 0; 0 is handled (see the module docstring).
      alpha_sgd: the hand-over factor in [0, 1] (0: pure RMSprop, 1: momentum SGD); a
        schedule such as :func:`lmsgd.optim.alpha_sgd_schedule`, or a constant.
      rmsprop_learning_rate: eta_rmsprop, step size of the RMSprop part; float or schedule.
      momentum: mu1, decay of the velocity ``Delta``.
      decay: mu2, decay of the squared-gradient average ``m``.
      eps: added to ``sqrt(m)`` (outside the square root).
      delta_dtype: optional dtype of the ``Delta`` buffer (e.g. ``jnp.bfloat16`` or
        ``'bfloat16'``, to halve its memory); default float32 (float64 for float64
        parameters). ``m`` and all arithmetic stay in float32 or wider.
      learning_rate_can_be_zero: True (default) computes the eta = 0 step as the eta -> 0+
        limit (module docstring), which costs the step loop a second read of g and m_t (44
        instead of 36 bytes per parameter on XLA:CPU). Pass False when eta > 0 at every step
        (:func:`lmsgd.optim.create_optimizer` checks the schedule and does): results are the
        same for eta > 0, and a zero eta then gives a zero step instead of the limit.
      weight_decay: L2 weight decay, added to the gradient (``g + wd * theta``) before both
        equations, as ``optax.add_decayed_weights`` before this transformation would (the same
        bits), but inside this update's own loops: one pass over memory fewer (12 bytes per
        parameter, and one compiled kernel per tensor). None or 0 (a Python or numpy number):
        none. Otherwise it needs ``params`` in ``update``.
      weight_decay_mask: which parameters decay: a tree of bools like the parameters, or a
        function of the parameters returning one (e.g. ``lmsgd.optim.multi_dim_mask``);
        None decays all. With ``inject_hyperparams``, name a callable mask in ``static_args``.
      saturate: keep ``m`` and ``Delta`` finite for gradients above ~1e19 (module docstring).
        False drops those two operations, for callers that refuse non-finite gradient norms
        anyway (lmsgd's train step).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose updates are ``eta_t * Delta_t`` (add
      them with ``optax.apply_updates``), cast to the gradient dtype. Its state is
      :class:`RMSpropWarmupState`.

    Example: one step at eta = 0.1, alpha_sgd = 0.5, from a gradient of 0.5 (``m_1 = 0.01 *
    0.25``, so the RMSprop direction is 10 and ``Delta_1 = -0.5 * 0.5 - 0.5 * 3e-4 / 0.1 *
    10``):

    >>> import jax.numpy as jnp
    >>> from lmsgd.optim import rmsprop_warmup
    >>> tx = rmsprop_warmup(learning_rate=0.1, alpha_sgd=0.5)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.full(3, 0.5)}, tx.init(params))
    >>> print(updates["w"].round(6), state.delta["w"].round(6), int(state.count))
    [-0.0265 -0.0265 -0.0265] [-0.265 -0.265 -0.265] 1

    With optax's wrappers, e.g. a learning rate set by hand between steps:

    >>> import optax
    >>> tx = optax.inject_hyperparams(rmsprop_warmup)(learning_rate=0.1, alpha_sgd=0.5)
    >>> state = tx.init(params)
    >>> state = optax.tree_utils.tree_set(state, learning_rate=0.2)
    >>> updates, state = tx.update({"w": jnp.full(3, 0.5)}, state)
    >>> print(updates["w"].round(6))  # 0.2 * (-0.25 - 0.5 * 3e-4 / 0.2 * 10)
    [-0.0515 -0.0515 -0.0515]
    """

    def weights(count):
        eta = _evaluate(learning_rate, count)
        alpha = _evaluate(alpha_sgd, count)
        return eta, alpha, (1.0 - alpha) * _evaluate(rmsprop_learning_rate, count), None

    return _rmsprop_warmup_transformation(
        weights, momentum=momentum, decay=decay, eps=eps, delta_dtype=delta_dtype,
        limit_at_zero=learning_rate_can_be_zero, weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask, saturate=saturate, name="rmsprop_warmup",
    )  # fmt: skip


def _rmsprop_warmup_transformation(
    weights: Callable[[jax.Array], tuple[Any, Any, Any, Any]],
    *,
    momentum: Any,
    decay: Any,
    eps: Any,
    delta_dtype: Any,
    limit_at_zero: bool,
    weight_decay: Any,
    weight_decay_mask: Any,
    saturate: bool,
    name: str,
) -> optax.GradientTransformationExtraArgs:
    """The one fused transformation behind both functions above.

    ``weights(count)`` gives ``(e, a, c, c_over_e)``: the step is ``e * Delta_t`` with
    ``Delta_t = mu1 Delta_{t-1} - a g - c_over_e r`` (``r = g / (sqrt(m_t) + eps)``), and ``c``
    is the RMSprop step ``-c r`` of the eta = 0 limit. ``c_over_e`` None: ``c / e`` (0 at e = 0).
    """
    decays_anything = not _no_decay(weight_decay)

    def init_fn(params: optax.Params) -> RMSpropWarmupState:
        m = jax.tree.map(lambda p: jnp.zeros(p.shape, _state_dtype(p.dtype)), params)
        delta = jax.tree.map(
            lambda p: jnp.zeros(
                p.shape, _state_dtype(p.dtype) if delta_dtype is None else delta_dtype
            ),
            params,
        )
        return RMSpropWarmupState(count=jnp.zeros([], jnp.int32), m=m, delta=delta)

    def update_fn(
        updates: optax.Updates,
        state: RMSpropWarmupState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, RMSpropWarmupState]:
        del extra_args
        decays = _decay_flags(decays_anything, weight_decay_mask, params, updates, name)
        if params is None:
            params = decays  # unused: no tensor decays
        # Schedules see the step before it is incremented: the first update uses step 0.
        count = state.count
        e_raw, a_raw, c_raw, c_over_e_raw = weights(count)
        mu1, mu2, eps_ = (_evaluate(x, count) for x in (momentum, decay, eps))
        wd = _evaluate(weight_decay, count) if decays_anything else 0.0

        @functools.cache
        def scalars(cd):
            """Every scalar the loops need, in the state's dtype; traced once per dtype, not
            once per tensor (161 times for ResNet-50). Python numbers are combined in double
            precision first (``1 - decay``), as constants."""
            as_cd = lambda x: jnp.asarray(x).astype(cd)
            e, a, c = as_cd(e_raw), as_cd(a_raw), as_cd(c_raw)
            positive = e > 0
            if c_over_e_raw is None:
                # 1 / eta where eta > 0, else 0 (drops the unrepresentable velocity at 0).
                inv_e = jnp.where(positive, 1.0 / jnp.where(positive, e, 1.0), 0.0)
                c_over_e = c * inv_e
            else:
                c_over_e = as_cd(c_over_e_raw)
            # |g| / sqrt(m_t) <= 1 / sqrt(1 - mu2): the clip bound of `saturate`.
            return dict(
                e=e, a=a, c=c, c_over_e=c_over_e, positive=positive, mu1=as_cd(mu1),
                mu2=as_cd(mu2), one_minus_mu2=as_cd(1.0 - mu2), eps=as_cd(eps_),
                bound=as_cd((1.0 - mu2) ** -0.5), wd=as_cd(wd), minus_wd=as_cd(-wd),
            )  # fmt: skip

        def leaf_update(g, m, d, p, decays_leaf):
            cd = m.dtype  # float64 schedules (x64 mode) must not promote float32 state
            return _leaf_update(
                g, m, d, p, scalars(cd), decays=decays_leaf, limit_at_zero=limit_at_zero,
                saturate=saturate,
            )  # fmt: skip

        if state.m is None:  # after the hand-over (alpha_sgd = 1): no RMSprop part, no m
            pairs = jax.tree.map(
                lambda g, d, p, decays_leaf: _sgd_leaf_update(
                    g, d, p, scalars(_state_dtype(jnp.promote_types(g.dtype, d.dtype))),
                    decays=decays_leaf, limit_at_zero=limit_at_zero,
                ),
                updates, state.delta, params, decays,
            )  # fmt: skip
            treedef = jax.tree.structure(updates)
            steps, delta = (treedef.unflatten([t[i] for t in treedef.flatten_up_to(pairs)])
                            for i in range(2))  # fmt: skip
            steps = optax.tree_utils.tree_cast_like(steps, updates)
            return steps, RMSpropWarmupState(count=optax.safe_increment(count), m=None,
                                             delta=delta)  # fmt: skip
        triples = jax.tree.map(leaf_update, updates, state.m, state.delta, params, decays)
        steps, m, delta = _unzip3(triples, updates)
        steps = optax.tree_utils.tree_cast_like(steps, updates)
        return steps, RMSpropWarmupState(count=optax.safe_increment(count), m=m, delta=delta)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@functools.partial(jax.jit, static_argnames=("decays", "limit_at_zero", "saturate"))
def _leaf_update(g, m, d, p, s, *, decays, limit_at_zero, saturate):
    """One tensor's update: ``(step, m_t, Delta_t)``; ``s`` holds the scalars. A jit of its
    own, so a model's tensors of one shape share one lowered function (ResNet-50: 161 tensors,
    33 shapes), which XLA inlines: the same program, lowered and compiled faster. The scalars
    are arguments, not static: traced hyperparameters (``inject_hyperparams``) need that, and
    constant ones are folded by XLA once inlined."""
    cd = m.dtype
    g32, d32 = g.astype(cd), d.astype(cd)
    # Weight decay (L2 on the gradient) is added in each of the two loops that read the
    # gradient, written as g + wd p and g - (-wd) p (the same bits): as one expression XLA
    # would keep it as a buffer of its own, a fourth loop (12 bytes per parameter).
    g_m = g32 + s["wd"] * p.astype(cd) if decays else g32
    g_d = g32 - s["minus_wd"] * p.astype(cd) if decays else g32
    # Saturate g^2 (inf above ~1.8e19 in float32) at half the dtype's maximum so that m, a
    # convex combination, stays finite. NaN still propagates.
    square = jnp.square(g_m)
    if saturate:
        square = jnp.minimum(square, jnp.finfo(cd).max / 2)
    m = s["mu2"] * m + s["one_minus_mu2"] * square
    # Exactly, m_t >= (1 - mu2) g_t^2, so |g| / sqrt(m) <= 1 / sqrt(1 - mu2). Clipping to that
    # bound changes nothing in range and restores it where g^2 saturated above.
    rms_direction = g_d / (jnp.sqrt(m) + s["eps"])
    if saturate:
        rms_direction = jax.lax.clamp(-s["bound"], rms_direction, s["bound"])
    delta = s["mu1"] * d32 - s["a"] * g_d - s["c_over_e"] * rms_direction
    if not limit_at_zero:
        # The step reads Delta_t alone: three loops, 36 bytes per parameter.
        return s["e"] * delta, m, delta.astype(d.dtype)
    # eta = 0: the step is the eta -> 0+ limit -eta_rms (1 - alpha) r. It takes its own sqrt:
    # sharing the one in Delta_t would make XLA keep sqrt(m_t) (or r) as a parameter-sized
    # buffer, as it never duplicates an expensive op into two loops. m >= 0, so maximum(m, 0)
    # is m (NaN included); it only keeps XLA's CSE from merging the two sqrt ops into one.
    limit_direction = g_d / (jnp.sqrt(jnp.maximum(m, 0.0)) + s["eps"])
    if saturate:
        limit_direction = jax.lax.clamp(-s["bound"], limit_direction, s["bound"])
    limit = -s["c"] * limit_direction
    return jnp.where(s["positive"], s["e"] * delta, limit), m, delta.astype(d.dtype)


@functools.partial(jax.jit, static_argnames=("decays", "limit_at_zero"))
def _sgd_leaf_update(g, d, p, s, *, decays, limit_at_zero):
    """One tensor's update after the hand-over, ``(step, Delta_t)``: :func:`_leaf_update`
    with its RMSprop term dropped. At alpha_sgd = 1 that term is ``0 * r`` (``c_over_e`` and
    ``c`` are ``(1 - alpha_sgd) * ...``), so the result is the same up to the sign of an
    exact zero, without reading or writing m (16 bytes per parameter fewer, 12 with the
    parameter update applied)."""
    cd = s["e"].dtype
    d32 = d.astype(cd)
    g_d = g.astype(cd) - s["minus_wd"] * p.astype(cd) if decays else g.astype(cd)
    delta = s["mu1"] * d32 - s["a"] * g_d
    step = s["e"] * delta
    if limit_at_zero:
        step = jnp.where(s["positive"], step, jnp.zeros_like(step))
    return step, delta.astype(d.dtype)


def _is_rmsprop_warmup_state(x: Any) -> bool:
    return isinstance(x, RMSpropWarmupState)


def without_rms_buffer(opt_state: Any) -> Any:
    """``opt_state`` with every :class:`RMSpropWarmupState`'s ``m`` dropped (None): the state
    of the update after the hand-over to momentum SGD (alpha_sgd = 1 at every later step),
    which no longer reads m. The update with this state is the update with m up to the sign
    of exact zeros (tests/test_optim_rmsprop_warmup.py). Other states pass unchanged."""
    return jax.tree.map(
        lambda x: x._replace(m=None) if _is_rmsprop_warmup_state(x) else x,
        opt_state,
        is_leaf=_is_rmsprop_warmup_state,
    )


def with_rms_buffer(opt_state: Any, fill: Callable[[Any], Any]) -> Any:
    """The inverse layout of :func:`without_rms_buffer`: ``m = fill(delta)`` (``delta``: the
    state's tree of velocities) where m was dropped, e.g. zeros of m's shapes and dtypes, so
    that a checkpoint keeps one layout on both sides of the hand-over."""
    return jax.tree.map(
        lambda x: x._replace(m=fill(x.delta)) if _is_rmsprop_warmup_state(x) and x.m is None else x,
        opt_state,
        is_leaf=_is_rmsprop_warmup_state,
    )


def has_rms_buffer(opt_state: Any) -> bool:
    """Whether any :class:`RMSpropWarmupState` in ``opt_state`` still holds its m."""
    states = jax.tree.leaves(opt_state, is_leaf=_is_rmsprop_warmup_state)
    return any(_is_rmsprop_warmup_state(x) and x.m is not None for x in states)


def _decay_flags(decays_anything: bool, mask: Any, params: Any, like: Any, name: str) -> Any:
    """Per-tensor "this tensor decays" flags (a tree like ``like`` of Python bools)."""
    if not decays_anything:
        return jax.tree.map(lambda _: False, like)
    if params is None:
        raise ValueError(
            f"{name} with weight_decay needs `params` in update() (weight_decay=None or 0 "
            "needs none)"
        )
    if callable(mask):
        mask = mask(params)
    if mask is None:
        return jax.tree.map(lambda _: True, like)
    if jax.tree.structure(mask) != jax.tree.structure(like):
        raise ValueError(
            f"{name}(weight_decay_mask=...) must give one bool per parameter tensor, "
            f"shaped like the parameters; got {jax.tree.structure(mask)} for parameters "
            f"{jax.tree.structure(like)}"
        )

    def flag(on: Any) -> bool:
        # Which tensors decay is compiled into their loops, so it must be known when
        # tracing: a Python or numpy bool (as `multi_dim_mask` gives), not a traced array.
        try:
            return bool(on)
        except (jax.errors.ConcretizationTypeError, TypeError, ValueError) as e:
            raise ValueError(
                f"{name}(weight_decay_mask=...) must give one bool per parameter tensor, "
                "known when tracing (Python or numpy bools, e.g. from "
                f"lmsgd.optim.multi_dim_mask, which decides by ndim); got {on!r}"
            ) from e

    return jax.tree.map(flag, mask)


def _unzip3(tree_of_triples: Any, like: Any) -> tuple[Any, Any, Any]:
    """A tree whose leaves are 3-tuples (shaped like ``like``) -> three trees."""
    treedef = jax.tree.structure(like)
    leaves = treedef.flatten_up_to(tree_of_triples)
    return tuple(treedef.unflatten([t[i] for t in leaves]) for i in range(3))
