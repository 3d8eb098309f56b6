"""PBI scalarisation: distance along the preference direction plus θ times the distance to it."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.methods.cosmos import _fixed_vector, _preference

_SQRT_EPS = 1e-12


class PBIState(NamedTuple):
  """State of :func:`pbi`: the last weights ∂S/∂L, the non-finite count."""
  weights: jax.Array
  nonfinite_steps: jax.Array


def pbi_loss(losses: jax.Array, preference: jax.Array, theta: float = 5.0,
             reference=None) -> jax.Array:
  r"""S(L) = d₁ + θ d₂ with d₁ = (L − z)ᵀŵ, d₂ = (‖L − z − d₁ŵ‖² + 1e-12)^½, ŵ = w/‖w‖."""
  validation.check_task_vectors("pbi_loss", "losses", losses, preference=preference,
                                reference=reference, scalar_ok=("reference",))
  f = losses if reference is None else losses - reference
  direction = preference / jnp.linalg.norm(preference)
  d1 = jnp.dot(f, direction)
  perpendicular = f - d1 * direction
  d2 = jnp.sqrt(jnp.dot(perpendicular, perpendicular) + _SQRT_EPS)
  return d1 + theta * d2


def pbi_weighting(losses: jax.Array, preference: jax.Array, *, theta: float = 5.0,
                  reference=None) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""w = ∇_L S(L): the weights whose combination Σ w_k g_k is ∇_θ S(L(θ))."""
  return (jax.grad(pbi_loss)(losses, preference, theta, reference),
          aggregator.no_solver_info())


def pbi(theta: float = 5.0, *, preference=None, reference=None,
        shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
        precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""PBI (penalty-based boundary intersection): progress along the preference ray, penalised off it.

  .. math::
    d_1 = (L - z)^\top \hat w, \quad d_2 = \lVert L - z - d_1 \hat w \rVert, \quad
    S = d_1 + \theta d_2, \qquad d = \sum_k \frac{\partial S}{\partial L_k} g_k,

  ŵ = w/‖w‖ the preference direction, z the reference (ideal) point. The
  weights ∂S/∂L = ŵ + θ (I − ŵŵᵀ)(L − z)/d₂ are computed by JAX; they may be
  negative (they pull L back toward the ray). Needs ``update(...,
  losses=...)``; ``update(..., preference=w)`` overrides the fixed preference
  for that step.

  Args:
    theta: θ ≥ 0, the penalty on the distance to the ray (MOEA/D: 5; 0 is
      the projection on the preference direction).
    preference: the preference w (K,), ≥ 0; uniform by default.
    reference: the reference point z (K,), a lower bound on the losses;
      the origin by default (non-negative losses).
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init``.
    precision: matmul precision of the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`PBIState`.
    ``update`` needs ``losses=`` and takes an optional ``preference=``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = pbi(5.0)
    >>> g = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> _, state = tx.update(g, tx.init(None), losses=jnp.array([1.0, 1.0]))  # on the ray
    >>> [round(float(x), 3) for x in state.weights]                            # ŵ
    [0.707, 0.707]

  References:
    Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on
    Decomposition", IEEE TEVC 2007; torchjd 0.18
    ``torchjd.scalarization.PBI`` (same ε = 1e-12 under the square root).

  Deviation: the reference is a scalariser the user back-propagates; here it
  is also an update rule on stacked task gradients (identical direction on
  the shared leaves). Back-propagate :func:`pbi_loss` for constant cost.
  """
  validation.check_positive("theta", theta, allow_zero=True)
  validation.check_preference(preference)
  if reference is not None:
    validation.check_finite("reference", reference)
  fixed = _fixed_vector(preference)
  ref = _fixed_vector(reference)
  for name, v in (("preference", fixed), ("reference", ref)):
    if v is not None and num_tasks is not None and v.shape != (num_tasks,):
      raise ValueError(f"`{name}` has shape {v.shape} but `num_tasks` is {num_tasks}.")

  def init_state(k, dtype):
    return PBIState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32))

  def weigh(gram, state, losses=None, preference=None, **_):
    del gram
    k = state.weights.shape[0]
    losses = aggregator.require_losses(losses, k, "pbi")
    w = _preference(preference, fixed, k, losses.dtype).astype(losses.dtype)
    if ref is not None and ref.shape != (k,):
      raise ValueError(f"`reference` has shape {ref.shape}; expected ({k},).")
    z = None if ref is None else ref.astype(losses.dtype)
    weights, _ = pbi_weighting(losses, w, theta=theta, reference=z)
    return state._replace(weights=weights.astype(state.weights.dtype))

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision,
      needs_gram=False)
