"""MoDo: simplex weights tracked by one projected step on a double-sampled cross-Gramian per update."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _double_sampling


class MoDoState(NamedTuple):
  """State of :func:`modo`: the simplex weights λ (also the combination weights), the non-finite count."""
  weights: jax.Array
  nonfinite_steps: jax.Array


def modo_weighting(gram: jax.Array, weights: jax.Array, *, gamma: float = 0.1,
                   rho: float = 0.1) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""One MoDo step on the task weights: λ ← Π_Δ(λ − γ(Mλ + ρλ)).

  Args:
    gram: (K, K) matrix M; MoDo's is the cross-Gramian J₁J₂ᵀ of two
      independent batches (an unbiased estimate of the expected G).
    weights: the previous λ on the simplex.
    gamma: step size γ > 0.
    rho: ℓ2 regularisation ρ ≥ 0.

  Returns:
    ``(new λ, SolverInfo)``; λ on the probability simplex.
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  lam = weights.astype(dtype)
  grad = _numeric.matvec(gram.astype(dtype), lam) + rho * lam
  return _numeric.project_simplex(lam - gamma * grad), aggregator.no_solver_info()


def _check(gamma, rho):
  validation.check_positive("gamma", gamma)
  validation.check_positive("rho", rho, allow_zero=True)


def modo(gamma: float = 0.1, *, rho: float = 0.1, shared: validation.SharedSpec = None,
         num_tasks: Optional[int] = None,
         precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""MoDo (multi-objective gradient with double sampling).

  .. math::
    \lambda_{t+1} = \Pi_\Delta\big(\lambda_t - \gamma (J_{\xi_1} J_{\xi_2}^\top
    \lambda_t + \rho \lambda_t)\big), \qquad d_t = \sum_i \lambda_{t+1,i} g_i,

  λ₀ uniform, the update on the gradients passed to ``update`` (LibMTL's and
  the official code's third batch). Pass the two independent batches'
  stacked task gradients as ``update(..., weight_grads=(grads_1, grads_2))``
  (full pytrees like the task gradients, or their shared leaves in
  ``tree_leaves`` order); without them both default to the update's own
  gradients, i.e. M = G (single sampling: biased, as torchjd warns, but
  cheaper — then MoDo is a Gram method). Weights sum to 1.

  Args:
    gamma: step size γ of the weight update (torchjd's default 0.1; LibMTL's
      ``MoDo_gamma`` default is 1e-3). M is not normalised, so γ scales with
      1/‖G‖.
    rho: ℓ2 regularisation ρ ≥ 0 of the weight update (both references: 0.1).
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init``.
    precision: matmul precision of the (cross-)Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`MoDoState`.
    ``update`` takes the optional ``weight_grads=``.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = modo(0.5, rho=0.0)
    >>> g = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> _, state = tx.update(g, tx.init(None))
    >>> [round(float(x), 3) for x in state.weights]   # Π_Δ(½ − ½·(½, 2))
    [0.875, 0.125]

  References:
    Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
    Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS
    2023 / JMLR 2024; torchjd 0.18 ``MoDoWeighting``; LibMTL ``MoDo``.

  Deviation: LibMTL divides the heads' gradients by 3 (it back-propagates
  all three batches into them); here task-specific leaves get the sum of the
  gradients passed to ``update``, as for every method.
  """
  validation.check_precision(precision)
  _check(gamma, rho)

  def init_state(k, dtype):
    return MoDoState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32))

  def aggregate(leaves, state, weight_grads=None, **_):
    m, finite = _double_sampling.weight_matrix(leaves, weight_grads, shared, precision)
    lam, _ = modo_weighting(m, state.weights, gamma=gamma, rho=rho)
    updates = [linalg.combine_leaf(lam, l, _numeric.solver_dtype(l.dtype), precision)
               for l in leaves]
    return updates, state._replace(weights=lam), finite

  return aggregator.stacked_gradient_transformation(aggregate, init_state, shared=shared,
                                                    num_tasks=num_tasks)
