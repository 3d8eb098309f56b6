"""Linear scalarisation: fixed weights on the task gradients (mean, sum, or a preference)."""

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


def linear_scalarization(
    reduction: str = "mean",
    *,
    weights: Optional[jax.Array] = None,
    shared: validation.SharedSpec = None,
    num_tasks: Optional[int] = None,
    precision=_numeric.HIGHEST,
) -> optax.GradientTransformationExtraArgs:
  r"""Linear scalarisation (equal weighting): update = Σ_k w_k g_k with fixed w.

  ``reduction="mean"`` uses w_k = 1/K (gradient descent on the mean loss,
  torchjd's ``Mean``), ``"sum"`` uses w_k = 1 (LibMTL's ``EW``, the Nash-MTL
  code base's ``LinearScalarization``). Explicit ``weights`` override both.
  No Gram matrix is computed: the cost is one contraction over the task axis.

  Args:
    reduction: ``"mean"`` or ``"sum"``.
    weights: optional fixed (K,) weights (a preference).
    shared: which leaves are shared (see :func:`conicgrad`); task-specific
      leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shape at ``init``.
    precision: matmul precision of the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`ScalarizationState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = linear_scalarization("mean")
    >>> u, _ = tx.update({"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}, tx.init(None))
    >>> u["w"].tolist()
    [0.5, 0.5]
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
  if weights is not None:
    w = np.asarray(weights, np.float32)
    if w.ndim != 1 or not np.all(np.isfinite(w)):
      raise ValueError(f"`weights` must be a finite 1-D vector, got {weights!r}.")
    if num_tasks is not None and w.shape != (num_tasks,):
      raise ValueError(f"`weights` has shape {w.shape} but `num_tasks` is {num_tasks}.")
    num_tasks = w.shape[0]

  def fixed(k):
    if weights is not None:
      return jnp.asarray(weights, jnp.float32)
    return jnp.full((k,), 1.0 / k if reduction == "mean" else 1.0, jnp.float32)

  def init_state(k, dtype=jnp.float32):
    return ScalarizationState(
        weights=fixed(k) if k is not None else jnp.zeros((0,), jnp.float32),
        nonfinite_steps=jnp.zeros((), jnp.int32))


  def weigh(gram, state, **extra_args):
    del gram, extra_args
    return state

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision, needs_gram=False)
