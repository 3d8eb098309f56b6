"""w > 0 with G w = w^(−1/α): the stationarity condition of Nash-MTL (α = 1) and FairGrad."""

from __future__ import annotations

import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax.solvers import barrier

RIDGE = 1e-6


def solve_power_condition(gram, alpha, *, tol=None, max_iter=100, previous=None):
  r"""w > 0 with (G w)_i = w_i^{−1/α}, the stationarity of a strictly convex function.

  F(w) = ½wᵀGw − Σ_i h(w_i), h = log for α = 1 and w^{1−1/α}/(1−1/α) otherwise,
  so that ∇F(w) = Gw − w^{−1/α} and h is concave. Newton's method with
  a positivity-keeping line search; G is normalised by its Frobenius norm nf
  (as the Nash-MTL code does) and, because a rank-deficient G has no finite
  solution, regularised by RIDGE·I. The solution for G is recovered by scaling:
  w = β · nf^{−α/(α+1)}.

  Args:
    gram: the K×K Gram matrix.
    alpha: the fairness exponent α > 0 (a Python float).
    tol: target gap (default 1e-12).
    max_iter: cap on Newton steps.
    previous: an optional :class:`~conicgrad_jax.solvers.barrier.PreviousSolution`
      holding an earlier w (for another G) to start Newton's method from; the
      answer is kept only when its Newton decrement² is below ``tol``, as the
      cold solve's, otherwise Newton restarts from the cold start
      (:func:`~conicgrad_jax.solvers.barrier.warm_started_minimize`).

  Returns:
    ``(w (K,), iterations)``.
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  k = gram.shape[0]
  nf = _numeric.frobenius_norm(gram)
  m = gram / nf + RIDGE * jnp.eye(k, dtype=dtype)
  if alpha == 1.0:
    h = lambda w: jnp.sum(jnp.log(w))
  else:
    power = 1.0 - 1.0 / alpha
    h = lambda w: jnp.sum(w ** power) / power
  # barrier_minimize minimises f − Σ log w at μ = 1: add Σ log w back.
  f = lambda w: 0.5 * _numeric.quad(m, w) - h(w) + jnp.sum(jnp.log(w))
  if previous is not None:   # w = β·nf^(−α/(α+1)): the previous w in this G's units
    previous = previous._replace(x=previous.x.astype(dtype) * nf ** (alpha / (alpha + 1.0)))
  res = barrier.warm_started_minimize(f, jnp.ones((k,), dtype), previous, simplex=False,
                                      tol=tol or 1e-12, max_iter=max_iter, centre_only=True)
  return res.x * nf ** (-alpha / (alpha + 1.0)), res.iterations


def clip_to_norm(gram, w, max_norm):
  """Scales w so that ‖Σ_i w_i g_i‖ = (wᵀGw)^½ ≤ ``max_norm`` (no-op when max_norm ≤ 0)."""
  if not max_norm or max_norm <= 0:
    return w
  norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram.astype(w.dtype), w), 0.0))
  return w * jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(w.dtype).tiny))
