"""COSMOS scalarisation: a linear scalarisation minus a cosine reward toward the preference ray."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

_NORM_EPS = 1e-8


class CosmosState(NamedTuple):
  """State of :func:`cosmos`: the last weights ∂S/∂L, the non-finite count."""
  weights: jax.Array
  nonfinite_steps: jax.Array


def cosmos_loss(losses: jax.Array, preference: jax.Array, lamda: float = 1.0) -> jax.Array:
  r"""S(L) = rᵀL − λ rᵀL/(‖r‖‖L‖) (each norm floored at 1e-8): back-propagate it for the update."""
  validation.check_task_vectors("cosmos_loss", "losses", losses, preference=preference)
  dot = jnp.dot(preference, losses)
  norms = (jnp.maximum(jnp.linalg.norm(preference), _NORM_EPS)
           * jnp.maximum(jnp.linalg.norm(losses), _NORM_EPS))
  return dot - lamda * dot / norms


def cosmos_weighting(losses: jax.Array, preference: jax.Array, *,
                     lamda: float = 1.0) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""w = ∇_L S(L): the weights whose combination Σ w_k g_k is ∇_θ S(L(θ))."""
  return jax.grad(cosmos_loss)(losses, preference, lamda), aggregator.no_solver_info()


def _fixed_vector(value):
  """An option vector as given: a JAX array keeps its dtype (a traced one stays traced),
  anything else becomes float64 numpy, cast to the losses' dtype at each update."""
  if value is None or isinstance(value, jax.Array):
    return value
  return np.asarray(value, np.float64)


def _preference(preference, default, k, dtype):
  if preference is None:
    if default is None:
      return jnp.full((k,), 1.0 / k, dtype)
    preference = default
  else:
    validation.check_preference(preference)    # a concrete one; a traced one as it is
  preference = jnp.asarray(preference, dtype)
  if preference.shape != (k,):
    raise ValueError(f"`preference` has shape {preference.shape}; expected ({k},).")
  return preference


def cosmos(lamda: float = 1.0, *, preference=None, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""COSMOS: descend a linear scalarisation penalised by its angle to the preference ray.

  .. math::
    S(L) = r^\top L - \lambda \frac{r^\top L}{\lVert r\rVert \lVert L\rVert},
    \qquad d = \nabla_\theta S = \sum_k \frac{\partial S}{\partial L_k} g_k,

  r the preference, L the task losses. The cosine term rewards loss vectors
  aligned with r, which spreads the solutions found for different r along
  the Pareto front. The weights ∂S/∂L are computed in closed form by JAX and
  may be negative for large λ. Needs ``update(..., losses=...)``; a
  preference passed as ``update(..., preference=r)`` overrides the fixed one
  for that step (COSMOS re-draws r ~ Dirichlet each step and also feeds it to
  the model — that conditioning is the user's model code).

  Args:
    lamda: λ ≥ 0, the cosine penalty (0: linear scalarisation with r; the
      paper uses 0.01 to 8 by data set; 1 is our default).
    preference: the preference r (K,), ≥ 0; uniform 1/K by default.
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init``.
    precision: matmul precision of the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`CosmosState`.
    ``update`` needs ``losses=`` and takes an optional ``preference=``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = cosmos(0.0, preference=jnp.array([0.25, 0.75]))
    >>> g = {"w": jnp.array([[4.0, 0.0], [0.0, 4.0]])}
    >>> u, _ = tx.update(g, tx.init(None), losses=jnp.array([1.0, 2.0]))
    >>> [round(float(x), 3) for x in u["w"]]
    [1.0, 3.0]

  References:
    Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
    Multi-Objective Learning", ICDM 2021; torchjd 0.18
    ``torchjd.scalarization.COSMOS`` (same objective and norm floor).

  Deviation: the reference is a scalariser the user back-propagates; here it
  is also an update rule on stacked task gradients (identical direction on
  the shared leaves, by the chain rule). Back-propagate :func:`cosmos_loss`
  for constant cost.
  """
  validation.check_positive("lamda", lamda, allow_zero=True)
  validation.check_preference(preference)
  fixed = _fixed_vector(preference)
  if fixed is not None and num_tasks is not None and fixed.shape != (num_tasks,):
    raise ValueError(f"`preference` has shape {fixed.shape} but `num_tasks` is {num_tasks}.")

  def init_state(k, dtype):
    return CosmosState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32))

  def weigh(gram, state, losses=None, preference=None, **_):
    del gram
    k = state.weights.shape[0]
    losses = aggregator.require_losses(losses, k, "cosmos")
    r = _preference(preference, fixed, k, losses.dtype).astype(losses.dtype)
    weights, _ = cosmos_weighting(losses, r, lamda=lamda)
    return state._replace(weights=weights.astype(state.weights.dtype))

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision,
      needs_gram=False)
