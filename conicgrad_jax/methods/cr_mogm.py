"""CR-MOGM: an exponential moving average of any Gram method's weights."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _gradient_buffers as buf


class CRMOGMState(NamedTuple):
  """State of :func:`cr_mogm`.

  Attributes:
    weights: the smoothed weights λ_t used for the last update.
    inner: the wrapped method's state (its ``weights`` are the raw λ̂_t).
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients (those the
      wrapped method skipped, and those whose recombination with λ_t
      overflowed the gradients' dtype).
  """
  weights: jax.Array
  inner: Any
  step: jax.Array
  nonfinite_steps: jax.Array


def cr_mogm_weighting(previous: jax.Array, raw: jax.Array, *,
                      alpha: float = 0.9) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""``(λ_t, SolverInfo)`` with λ_t = α λ_{t−1} + (1 − α) λ̂_t."""
  return alpha * previous + (1.0 - alpha) * raw, aggregator.no_solver_info()


def cr_mogm(inner: Optional[optax.GradientTransformation] = None, *, alpha: float = 0.9,
            initial_weights=None, shared: validation.SharedSpec = None,
            num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""CR-MOGM: smooth the weights of a Gram method by an exponential moving average.

  .. math::
    \lambda_t = \alpha \lambda_{t-1} + (1 - \alpha) \hat\lambda_t,
    \qquad d_t = \sum_k \lambda_{t,k} g_k,

  λ̂_t the weights the wrapped method computes at step t (from its own state,
  which it keeps updating), λ₀ = ``initial_weights`` or, by default, λ̂₁ (so
  the first update is the wrapped method's). The smoothing makes the
  stochastic weights' bias vanish as α → 1, the paper's convergence fix.

  Args:
    inner: the wrapped Gram method, an optax transformation of this library
      whose state has ``weights`` (the combination weights) and
      ``nonfinite_steps``, e.g. ``upgrad()``; ``mgda(shared=shared,
      num_tasks=num_tasks, precision=precision)`` when ``None``. Not a
      Jacobian method (GradDrop, MoCo, ...): their weights do not give their update.
    alpha: α ∈ [0, 1], the EMA coefficient of the previous weights (0: the
      wrapped method unchanged; 1: weights frozen at λ₀). torchjd's default
      0.9; the paper's Corollary 1 raises α toward 1 as the learning rate
      decays (use ``optax.inject_hyperparams`` or rebuild to schedule it).
    initial_weights: optional λ₀ (K,).
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      the shared leaves are recombined with λ_t, the others keep the wrapped
      method's update (the sum of their task gradients). By default the
      ``shared`` that ``inner`` was built with; one that differs from it is
      an error.
    num_tasks: K, for the default inner method's state shapes.
    precision: matmul precision of the combination (and of the default MGDA).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`CRMOGMState`.
    ``update`` forwards its extra arguments (e.g. ``losses=``) to the
    wrapped method.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> tx = cr_mogm(alpha=0.5, num_tasks=2)
    >>> step = jax.jit(tx.update)
    >>> state = tx.init(None)
    >>> _, state = step({"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}, state)
    >>> _, state = step({"w": jnp.array([[1.0, 0.0], [0.0, 3.0]])}, state)
    >>> [round(float(x), 3) for x in state.weights]   # ½(½, ½) + ½(0.9, 0.1)
    [0.7, 0.3]

  References:
    Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic
    Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022;
    torchjd 0.18 ``CRMOGMWeighting`` (same recursion and λ₀ rule).

  Deviation: the wrapped method still computes its own combination, which
  is discarded; under ``jax.jit`` XLA removes that dead computation.
  """
  validation.check_precision(precision)
  validation.check_unit_interval("alpha", alpha, closed_right=True)
  if inner is None:
    from conicgrad_jax.methods.mgda import mgda
    inner = mgda(shared=shared, num_tasks=num_tasks, precision=precision)
  aggregator.check_method(inner, "inner", jacobian_allowed=False)
  shared = aggregator.shared_option(inner, shared)
  if initial_weights is not None:
    w0 = np.asarray(initial_weights, np.float64)
    if w0.ndim != 1 or not np.all(np.isfinite(w0)):
      raise ValueError(f"`initial_weights` must be a finite 1-D vector, got {initial_weights!r}.")
    if num_tasks is not None and w0.shape != (num_tasks,):
      raise ValueError(f"`initial_weights` has shape {w0.shape} but `num_tasks` is {num_tasks}.")

  def init_fn(params):
    inner_state = inner.init(params)
    aggregator.check_method_state(inner_state, "inner")
    return CRMOGMState(jnp.zeros_like(inner_state.weights) + inner_state.weights, inner_state,
                       jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def update_fn(task_grads, state, params=None, **extra_args):
    aggregator.check_state_type(state, CRMOGMState)
    aggregator.check_shared_agrees(inner, "inner", shared, "cr_mogm", task_grads)
    inner_updates, inner_state = inner.update(task_grads, state.inner, params, **extra_args)
    raw = inner_state.weights
    k = raw.shape[0]
    dtype = raw.dtype
    if initial_weights is not None:
      if np.shape(initial_weights) != (k,):
        raise ValueError(f"`initial_weights` has shape {np.shape(initial_weights)} but the "
                         f"task gradients have K = {k}.")
      first_prev = jnp.asarray(initial_weights, dtype)
    else:
      first_prev = raw
    if state.weights.shape[0] == k:
      prev = jnp.where(state.step == 0, first_prev, state.weights.astype(dtype))
      kept = state.weights.astype(dtype)
    else:                                   # K learnt at this first update
      prev = first_prev
      kept = raw
    skipped = inner_state.nonfinite_steps > state.inner.nonfinite_steps
    weights = jnp.where(skipped, kept, cr_mogm_weighting(prev, raw, alpha=alpha)[0])

    flags = validation.resolve_shared(shared, task_grads)
    leaves, treedef = jax.tree_util.tree_flatten(task_grads)
    inner_leaves = jax.tree_util.tree_leaves(inner_updates)
    updates = []
    for leaf, f, u in zip(leaves, flags, inner_leaves):
      if f:
        v = linalg.combine_leaf(weights, leaf, _numeric.solver_dtype(leaf.dtype), precision)
        u = jnp.where(skipped, jnp.zeros_like(u), v.astype(u.dtype))
      updates.append(u)
    # Finite gradients whose recombination overflows (e.g. float16): the step is
    # skipped as a whole, the state kept, and counted.
    overflow = ~skipped & ~buf.all_finite(updates)
    updates = [jnp.where(overflow, jnp.zeros_like(u), u) for u in updates]
    new_state = CRMOGMState(weights, inner_state,
                            state.step + jnp.where(skipped, 0, 1).astype(jnp.int32),
                            state.nonfinite_steps)
    # (At the update that learns K nothing of that size was kept: the new values stay.)
    new_state = jax.tree_util.tree_map(
        lambda new, old: (jnp.where(overflow, old.astype(new.dtype), new)
                          if old.shape == new.shape else new), new_state, state)
    new_state = new_state._replace(
        nonfinite_steps=state.nonfinite_steps + (skipped | overflow).astype(jnp.int32))
    return jax.tree_util.tree_unflatten(treedef, updates), new_state

  aggregator.record_shared(update_fn, shared)
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
