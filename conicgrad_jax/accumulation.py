"""Accumulating stacked task gradients over micro-batches, aggregating once.

``optax.MultiSteps`` averages ordinary gradients; it cannot hold a task axis
in front of every leaf. :func:`accumulate_task_grads` keeps a running mean of
the task gradients (and of the losses, for loss-based methods) and calls the
wrapped multi-task transformation once every ``every`` calls.

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

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


class AccumulationState(NamedTuple):
  """State of :func:`accumulate_task_grads`.

  Attributes:
    mean_task_grads: running mean of the task gradients of this round, one
      buffer of shape (K, *param.shape) per leaf, in at least float32. A leaf that arrives already
      summed over tasks (shape ``param.shape``, as ``value_and_task_grads(shared=...)``
      returns the task-specific leaves) is accumulated in row 0 of its buffer.
    mean_losses: running mean of the losses (zeros if none were given).
    count: micro-batches accumulated so far in this round.
    inner_state: the wrapped transformation's state.
  """
  mean_task_grads: Any
  mean_losses: jax.Array
  count: jax.Array
  inner_state: optax.OptState


def accumulate_task_grads(inner: optax.GradientTransformation, every: int, *,
                          num_tasks: int) -> optax.GradientTransformationExtraArgs:
  """Wraps a multi-task transformation to aggregate once per ``every`` micro-batches.

  The first ``every − 1`` calls of a round return zero updates and leave the
  inner state untouched; the ``every``-th call feeds the mean task gradients
  (and the mean ``losses=``, if given) to ``inner`` and returns its update.
  ``inner`` runs only on that call (``lax.cond``), so its cost is paid once per
  round. Each leaf is passed on in the form it arrives in: stacked
  (K, *param.shape), or — for task-specific leaves — already summed over the
  tasks (param.shape), as :func:`~conicgrad_jax.value_and_task_grads` returns
  them with ``shared=``; a summed leaf is averaged as it is, never broadcast
  over the task axis.

  Wrap the whole chain, so the optimiser also steps once per round:
  ``accumulate_task_grads(optax.chain(conicgrad(0.5, num_tasks=K),
  optax.adam(1e-3)), every=N, num_tasks=K)``. (Placed before an optimiser
  instead, the optimiser receives the zero updates of the other calls and,
  with momentum, still moves on them.)

  A non-finite micro-batch makes its round's mean non-finite, so the round's
  update is skipped by ``inner``'s non-finite rule (zero update, state kept,
  ``nonfinite_steps`` + 1), as the large batch holding that micro-batch would
  be; the next round starts afresh. To drop only the bad micro-batch and keep
  the round, wrap this transformation in
  :func:`~conicgrad_jax.skip_nonfinite`.

  Args:
    inner: a transformation of this library built with ``num_tasks=K`` (so its
      state has fixed shapes), or a chain that starts with one (e.g.
      ``optax.chain(conicgrad(0.5, num_tasks=K), optax.adam(1e-3))``).
    every: micro-batches per update.
    num_tasks: K (each accumulator leaf has shape (K, *param.shape)).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(task_grads, state,
    params, **extra)`` needs ``params`` and forwards ``losses=`` (averaged)
    and the other extra arguments to ``inner``.

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
  validation.check_transformation("inner", inner)
  validation.check_positive_int("every", every)
  validation.check_static_positive_int("num_tasks", num_tasks)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if params is None:
      raise ValueError("accumulate_task_grads builds its accumulator from the parameters: "
                       "call init(params).")
    # The running mean is kept in at least float32 (bfloat16/float16 parameters would
    # round micro-batch contributions away); the mean goes to the method in the
    # gradients' own dtype.
    zeros = jax.tree_util.tree_map(
        lambda p: _numeric.task_stacked_zeros(num_tasks, p,
                                              _numeric.solver_dtype(jnp.result_type(p))), params)
    return AccumulationState(zeros, jnp.zeros((num_tasks,), aggregator.state_dtype(params)),
                             jnp.zeros((), jnp.int32), inner.init(params))

  def update_fn(task_grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError("accumulate_task_grads needs the parameters: call "
                       "update(task_grads, state, params).")
    acc_leaves, acc_def = jax.tree_util.tree_flatten(state.mean_task_grads)
    g_leaves, g_def = jax.tree_util.tree_flatten(task_grads)
    if g_def != acc_def:
      validation.check_same_structure(task_grads, params, "task_grads", "params")
    count = state.count + 1
    first = count == 1

    def running_mean(acc, g):
      g = g.astype(acc.dtype)
      return jnp.where(first, g, acc + (g - acc) / count.astype(acc.dtype))

    new_acc, summed = [], []
    for path_acc, g in zip(jax.tree_util.tree_flatten_with_path(state.mean_task_grads)[0],
                           g_leaves):
      path, acc = path_acc
      if g.ndim == acc.ndim:                         # stacked: (K, *shape)
        if g.shape != acc.shape:
          raise ValueError(
              f"Task-gradient leaf {validation.path_str(path)} has shape {g.shape}; "
              f"expected {acc.shape} (stacked) or {acc.shape[1:]} (summed over tasks).")
        new_acc.append(running_mean(acc, g))
        summed.append(False)
      elif g.ndim == acc.ndim - 1 and g.shape == acc.shape[1:]:  # summed over tasks
        new_acc.append(acc.at[0].set(running_mean(acc[0], g)))
        summed.append(True)
      else:
        raise ValueError(
            f"Task-gradient leaf {validation.path_str(path)} has shape {g.shape}; "
            f"expected {acc.shape} (stacked) or {acc.shape[1:]} (summed over tasks).")
    mean_grads = jax.tree_util.tree_unflatten(
        acc_def, [(a[0] if s else a).astype(g.dtype) for a, s, g in zip(new_acc, summed, g_leaves)])

    losses = extra_args.pop("losses", None)
    mean_losses = state.mean_losses
    if losses is not None:
      losses = jnp.asarray(losses).astype(mean_losses.dtype)
      if losses.shape != mean_losses.shape:
        raise ValueError(f"accumulate_task_grads: `losses` has shape {losses.shape}; "
                         f"expected ({num_tasks},).")
      mean_losses = jnp.where(first, losses,
                              mean_losses + (losses - mean_losses) / count.astype(losses.dtype))
      extra_args["losses"] = mean_losses

    def run_inner(inner_state):
      return inner.update(mean_grads, inner_state, params, **extra_args)

    out_shape = jax.eval_shape(run_inner, state.inner_state)
    in_def = jax.tree_util.tree_structure(state.inner_state)
    out_def = jax.tree_util.tree_structure(out_shape[1])
    same = out_def == in_def and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree_util.tree_leaves(state.inner_state),
                        jax.tree_util.tree_leaves(out_shape[1])))
    if not same:
      raise ValueError(
          "accumulate_task_grads: the inner transformation's state changes shape at its "
          "first update; build it with `num_tasks` (e.g. conicgrad(0.5, num_tasks=K)).")

    def skip(inner_state):
      zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape[0])
      return zeros, inner_state

    ready = count >= every
    updates, new_inner = jax.lax.cond(ready, run_inner, skip, state.inner_state)
    new_state = AccumulationState(
        mean_task_grads=jax.tree_util.tree_unflatten(acc_def, new_acc),
        mean_losses=mean_losses,
        count=jnp.where(ready, 0, count),
        inner_state=new_inner)
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
