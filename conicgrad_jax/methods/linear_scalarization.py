r"""Linear scalarisation: fixed weights on the task gradients (mean, sum, or a preference)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

REDUCTIONS = ("mean", "sum")


class ScalarizationState(NamedTuple):
  """State of :func:`linear_scalarization`: the weights used, and the non-finite count."""
  weights: jax.Array
  nonfinite_steps: jax.Array


def linear_scalarization_weighting(num_tasks: int, reduction: str = "mean", weights=None,
                                   dtype=jnp.float32) -> tuple[jax.Array, aggregator.SolverInfo]:
  """The fixed weights: ``weights`` if given, else 1/K (``"mean"``) or 1 (``"sum"``).

  Returns:
    ``(weights, aggregator.no_solver_info())``.
  """
  if weights is not None:
    w = jnp.asarray(weights, dtype)
  else:
    w = jnp.full((num_tasks,), 1.0 / num_tasks if reduction == "mean" else 1.0, dtype)
  return w, aggregator.no_solver_info()


def linear_scalarization(
    reduction: str = "mean",
    *,
    weights: Optional[jax.Array] = None,
    shared: validation.SharedSpec = None,
    num_tasks: Optional[int] = None,
    precision=_numeric.HIGHEST,
) -> optax.GradientTransformationExtraArgs:
  r"""Linear scalarisation (equal weighting): gradient descent on a fixed weighted sum of losses.

  .. math::

     d = \sum_k w_k g_k, \qquad w_k = 1/K \ (\text{mean}),\ 1\ (\text{sum})
     \text{ or given}.

  ``reduction="mean"`` is gradient descent on the mean loss (torchjd's
  ``Mean``), ``"sum"`` LibMTL's ``EW`` and the Nash-MTL code base's
  ``LinearScalarization``. No Gram matrix is computed: the cost is one
  contraction over the task axis (with one backward pass of Σ_k w_k L_k the
  stacked gradients are not needed at all).

  Args:
    reduction: ``"mean"`` (w_k = 1/K) or ``"sum"`` (w_k = 1).
    weights: optional fixed (K,) weights (a preference); they override
      ``reduction`` and fix K.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`ScalarizationState`. ``update(task_grads, state, params=None)``
    needs no extra arguments and ignores any.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.linear_scalarization("mean")
    >>> u, _ = tx.update({"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}, tx.init(None))
    >>> u["w"].tolist()
    [0.5, 0.5]

  References:
    The equal-weighting baseline of every multi-task benchmark, e.g. Xin et
    al., "Do Current Multi-Task Optimization Methods in Deep Learning Even
    Help?", NeurIPS 2022.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
  if weights is not None:
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)):
      raise ValueError(f"`weights` must be a finite 1-D vector, got {weights!r}.")
    if num_tasks is not None and w.shape != (num_tasks,):
      raise ValueError(f"`weights` has shape {w.shape} but `num_tasks` is {num_tasks}.")
    num_tasks = w.shape[0]

  def init_state(k, dtype=jnp.float32):
    if k is None:
      return ScalarizationState(jnp.zeros((0,), dtype), jnp.zeros((), jnp.int32))
    w, _ = linear_scalarization_weighting(k, reduction, weights, dtype)
    return ScalarizationState(w, jnp.zeros((), jnp.int32))

  def weigh(gram, state, **_):
    del gram
    return state

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision, needs_gram=False)
