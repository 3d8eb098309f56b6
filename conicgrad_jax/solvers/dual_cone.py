"""Projections onto the dual cone {x : Jx ≥ 0} of the task gradients (UPGrad, DualProj; torchjd)."""

from __future__ import annotations

import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax.solvers import barrier

NORM_EPS = 1e-4
REG_EPS = 1e-4


def regularized_gram(gram, norm_eps=NORM_EPS, reg_eps=REG_EPS):
  """M̂ = G/trace(G) + reg_eps·I (zero matrix part when trace < norm_eps), as torchjd."""
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  trace = jnp.trace(gram)
  normalized = jnp.where(trace >= norm_eps, gram / jnp.where(trace >= norm_eps, trace, 1.0), 0.0)
  return normalized + reg_eps * jnp.eye(gram.shape[0], dtype=dtype)


def dual_cone_projection_weights(p_hat, u, *, tol=None, max_iter=100, previous=None):
  """v* = argmin_v vᵀP̂v s.t. v ≥ u: Jᵀv* projects Jᵀu onto {x : Jx ≥ 0}.

  Solved as a non-negative QP in z = v − u by the barrier method and an
  exact active-set solve (torchjd uses quadprog). With ``previous`` (a
  :class:`~conicgrad_jax.solvers.barrier.PreviousSolution` holding an
  earlier v*) the solve starts from it and keeps the answer only when its
  duality gap, relative to the objective, certifies it to ``tol``
  (:func:`~conicgrad_jax.solvers.barrier.warm_started_minimize`).

  Returns:
    ``(v (K,), iterations)``.
  """
  k = p_hat.shape[0]
  f = lambda z: _numeric.quad(p_hat, z + u)
  if previous is not None:
    previous = previous._replace(x=previous.x.astype(p_hat.dtype) - u)
  res = barrier.warm_started_minimize(
      f, jnp.ones((k,), p_hat.dtype), previous, simplex=False,
      gap=lambda z: barrier.orthant_qp_gap(f, z) / f(z), tol=tol, max_iter=max_iter,
      quadratic=True)
  return res.x + u, res.iterations
