"""Coordinate-wise trimmed mean of the task gradients, a robust aggregator."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation


class TrimmedMeanState(NamedTuple):
  """State of :func:`trimmed_mean`.

  Attributes:
    weights: per task, the share of the update it contributed: the fraction
      of coordinates where its value was kept, divided by K − 2t (sums to 1).
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  nonfinite_steps: jax.Array


def effective_trim(trim_number: int, num_tasks: int) -> int:
  """The trim used with K tasks: ``trim_number``, clipped so at least one row remains."""
  return min(trim_number, (num_tasks - 1) // 2)


def trimmed_mean_leaf(leaf: jax.Array, trim_number: int) -> tuple[jax.Array, jax.Array]:
  """The trimmed mean over the task axis of one stacked leaf, and each task's kept count.

  Returns ``(mean, kept)``: ``mean`` has the leaf's shape without the task
  axis; ``kept[k]`` counts the coordinates where task k's value is among the
  K − 2t middle ones (ties broken by task index, as a stable sort does).
  """
  k = leaf.shape[0]
  t = effective_trim(trim_number, k)
  x = leaf.astype(_numeric.solver_dtype(leaf.dtype))
  order = jnp.argsort(x, axis=0, stable=True)
  middle = jnp.take_along_axis(x, order[t:k - t], axis=0)
  rank = jnp.argsort(order, axis=0)                   # rank of each task's value
  inside = (rank >= t) & (rank < k - t)
  kept = linalg.per_task_sum(inside, jnp.int32)
  return jnp.mean(middle, axis=0), kept


def trimmed_mean(trim_number: int = 1, *, shared: validation.SharedSpec = None,
                 num_tasks: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  r"""Trimmed mean: per coordinate, drop the t largest and t smallest task values, average the rest.

  .. math::
    d_c = \frac{1}{K - 2t} \sum_{r = t+1}^{K - t} g_{(r), c},

  g_{(r),c} the r-th smallest of g_{1,c}, …, g_{K,c}. Coordinate-wise, so it
  needs the task gradients themselves (cost O(K log K · m), no Gram matrix).
  A Byzantine-robust aggregator from distributed learning, not a multi-task
  method: offered so users can compare against it.

  Args:
    trim_number: t ≥ 0, the number of largest and of smallest values dropped
      per coordinate (2t values in all). t = 0 is the mean.
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`TrimmedMeanState`. ``update`` needs no extra arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = trimmed_mean(1)
    >>> g = {"w": jnp.array([[1.0, -9.0], [2.0, 0.0], [100.0, 1.0], [3.0, 2.0]])}
    >>> u, _ = tx.update(g, tx.init(None))
    >>> [round(float(x), 2) for x in u["w"]]
    [2.5, 0.5]

  References:
    Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018; torchjd 0.18
    ``TrimmedMean``.

  Deviation: torchjd requires K ≥ 2t + 1 and has no default t; here t = 1
  by default and, with fewer rows, t is clipped to ⌊(K − 1)/2⌋ so at least one
  value per coordinate remains (with K ≤ 2 the trimmed mean is the mean).
  """
  trim_number = validation.check_non_negative_int("trim_number", trim_number)

  def init_state(k, dtype):
    return TrimmedMeanState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32))

  def aggregate(leaves, state, **_):
    k = state.weights.shape[0]
    t = effective_trim(trim_number, k)
    updates, kept, total = [], 0, 0
    for leaf in leaves:
      mean, leaf_kept = trimmed_mean_leaf(leaf, trim_number)
      updates.append(mean)
      kept = kept + leaf_kept
      total += mean.size
    weights = (kept / (max(total, 1) * (k - 2 * t))).astype(state.weights.dtype)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))
    return updates, state._replace(weights=weights), finite

  return aggregator.stacked_gradient_transformation(aggregate, init_state, shared=shared,
                                                    num_tasks=num_tasks, needs_jacobian=True)
