"""Accumulating stacked task gradients over micro-batches, aggregating once.

``optax.MultiSteps`` averages ordinary gradients; it cannot hold a task axis
in front of every leaf. :func:`accumulate_task_grads` keeps a running mean of
the stacked task gradients (and of the losses, for loss-based methods) and
calls the wrapped multi-task transformation once every ``every`` calls.

Why this equals the large-batch result: a task's loss over the large batch is
the mean of its losses over ``every`` equal-size micro-batches, and the
gradient is linear, so the mean of the micro-batch task gradients *is* the
large batch's task-gradient matrix J. Every method here is a function of J
(through G = JJᵀ or directly), so aggregating the accumulated J gives exactly
the update of one large batch — unlike aggregating each micro-batch and
averaging the updates, which differs for any non-linear method.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import validation


class AccumulationState(NamedTuple):
  """State of :func:`accumulate_task_grads`."""
  mean_task_grads: Any      # running mean of the stacked task gradients
  mean_losses: jax.Array    # running mean of the losses (zeros if none were given)
  count: jax.Array          # micro-batches accumulated so far in this round
  inner_state: optax.OptState


def accumulate_task_grads(inner: optax.GradientTransformation, every: int, *,
                          num_tasks: int) -> optax.GradientTransformationExtraArgs:
  """Wraps a multi-task transformation to aggregate once per ``every`` micro-batches.

  The first ``every − 1`` calls of a round return zero updates and leave the
  inner state untouched; the ``every``-th call feeds the mean task gradients
  (and mean ``losses=``, if given) to ``inner`` and returns its update. Put it
  first in the chain (before the optimiser), as ``conicgrad`` itself. Its
  state holds one copy of the stacked gradients, built at ``init(params)``.

  Args:
    inner: a transformation of this library (e.g. ``conicgrad(0.5, num_tasks=K)``).
    every: micro-batches per update.
    num_tasks: K (the accumulator is shaped (K, *param.shape) per leaf).

  Example:
    >>> import jax.numpy as jnp
    >>> from conicgrad_jax import conicgrad
    >>> tx = accumulate_task_grads(conicgrad(0.5, num_tasks=2), every=2, num_tasks=2)
    >>> params = {"w": jnp.zeros(3)}
    >>> state = tx.init(params)
    >>> g = {"w": jnp.array([[1.0, 0, 0], [0, 1.0, 0]])}
    >>> u, state = tx.update(g, state, params)   # accumulated, zero update
    >>> float(jnp.abs(u["w"]).sum())
    0.0
  """
  validation.check_positive_int("every", every)
  validation.check_positive_int("num_tasks", num_tasks)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if params is None:
      raise ValueError("accumulate_task_grads builds its accumulator from the parameters: "
                       "call init(params).")
    zeros = jax.tree_util.tree_map(
        lambda p: jnp.zeros((num_tasks,) + jnp.shape(p), jnp.result_type(p)), params)
    return AccumulationState(zeros, jnp.zeros((num_tasks,), jnp.float32),
                             jnp.zeros((), jnp.int32), inner.init(params))

  def update_fn(task_grads, state, params=None, **extra_args):
    count = state.count + 1
    mean_grads = jax.tree_util.tree_map(
        lambda acc, g: acc + (g.astype(acc.dtype) - acc) / count.astype(acc.dtype),
        state.mean_task_grads, task_grads)
    losses = extra_args.pop("losses", None)
    mean_losses = state.mean_losses
    if losses is not None:
      mean_losses = mean_losses + (jnp.asarray(losses, jnp.float32) - mean_losses) / count
      extra_args["losses"] = mean_losses
    updates, new_inner = inner.update(mean_grads, state.inner_state, params, **extra_args)
    ready = count >= every
    select = lambda new, old: jax.tree_util.tree_map(
        lambda n, o: jnp.where(ready, n, o), new, old)
    updates = jax.tree_util.tree_map(lambda u: jnp.where(ready, u, jnp.zeros_like(u)), updates)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, mean_grads)
    new_state = AccumulationState(
        mean_task_grads=select(zeros, mean_grads),
        mean_losses=jnp.where(ready, jnp.zeros_like(mean_losses), mean_losses),
        count=jnp.where(ready, 0, count),
        inner_state=select(new_inner, state.inner_state))
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
