"""Scale-invariant linear scalarisation: descend Σ_k log L_k."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


class ScaleInvariantLSState(NamedTuple):
  """State of :func:`scale_invariant_ls`: the last weights 1/(L_k + ε), the non-finite count."""
  weights: jax.Array
  nonfinite_steps: jax.Array


def scale_invariant_ls_loss(losses: jax.Array, eps: float = 0.0) -> jax.Array:
  r"""Σ_k log(L_k + ε): back-propagate this once for the method's update."""
  validation.check_task_vectors("scale_invariant_ls_loss", "losses", losses)
  return jnp.sum(jnp.log(losses + eps))


def scale_invariant_ls_weighting(losses: jax.Array, *,
                                 eps: float = 0.0) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""w_k = 1/(L_k + ε), the gradient of Σ log(L_k + ε) in L; NaN where L_k + ε ≤ 0."""
  shifted = losses + eps
  return (jnp.where(shifted > 0, 1.0 / shifted, jnp.nan), aggregator.no_solver_info())


def scale_invariant_ls(*, eps: float = 0.0, shared: validation.SharedSpec = None,
                       num_tasks: Optional[int] = None,
                       precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Scale-invariant linear scalarisation: gradient descent on Σ_k log L_k.

  .. math::
    d = \nabla \sum_k \log L_k = \sum_k \frac{g_k}{L_k},

  so multiplying one loss by a constant leaves the update unchanged. Needs
  ``update(..., losses=...)`` with positive losses; a step with some
  L_k + ε ≤ 0 (log undefined) is skipped like a non-finite one (zero update,
  ``nonfinite_steps`` counts it). No Gram matrix is computed; for constant
  cost back-propagate :func:`scale_invariant_ls_loss` instead.

  Args:
    eps: ε ≥ 0 added to every loss (the references add none).
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init``.
    precision: matmul precision of the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a
    :class:`ScaleInvariantLSState`. ``update`` needs ``losses=``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = scale_invariant_ls()
    >>> g = {"w": jnp.array([[2.0, 0.0], [0.0, 30.0]])}
    >>> u, _ = tx.update(g, tx.init(None), losses=jnp.array([2.0, 10.0]))
    >>> [round(float(x), 3) for x in u["w"]]
    [1.0, 3.0]

  References:
    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (its
    code's ``scaleinvls`` baseline, also in the FAMO code base: Liu et al.,
    "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023).
  """
  validation.check_positive("eps", eps, allow_zero=True)

  def init_state(k, dtype):
    return ScaleInvariantLSState(aggregator.placeholder_weights(k, dtype),
                                 jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    weights, _ = scale_invariant_ls_weighting(losses, eps=eps)
    return state._replace(weights=weights.astype(state.weights.dtype))

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "scale_invariant_ls", shared=shared, num_tasks=num_tasks,
      precision=precision)
