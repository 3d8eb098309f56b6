"""Nash-MTL (Navon et al., ICML 2022) and FairGrad (Ban & Ji, ICML 2024): w > 0 with G w = w^(−1/α)."""

from __future__ import annotations

import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax.solvers import barrier

RIDGE = 1e-6


def _solve_power_condition(gram, alpha, *, tol, max_iter):
  r"""w > 0 with (G w)_i = w_i^{−1/α}, the stationarity of a strictly convex function.

  F(w) = ½wᵀGw − Σ_i h(w_i), h = log for α = 1 and w^{1−1/α}/(1−1/α) otherwise
  (derived in shared/reference/baseline-methods.md §2.14). Newton's method with
  a positivity-keeping line search; G is normalised by its Frobenius norm nf
  (as the Nash-MTL code does) and, because a rank-deficient G has no finite
  solution, regularised by RIDGE·I. The solution for G is recovered by scaling:
  w = β · nf^{−α/(α+1)}.
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  k = gram.shape[0]
  nf = jnp.sqrt(jnp.sum(gram * gram))
  nf = jnp.where(nf > jnp.finfo(dtype).tiny, nf, 1.0)
  m = gram / nf + RIDGE * jnp.eye(k, dtype=dtype)
  if alpha == 1.0:
    h = lambda w: jnp.sum(jnp.log(w))
  else:
    power = 1.0 - 1.0 / alpha
    h = lambda w: jnp.sum(w ** power) / power
  # barrier_minimize minimises f − Σ log w at μ = 1: add Σ log w back.
  f = lambda w: 0.5 * _numeric.quad(m, w) - h(w) + jnp.sum(jnp.log(w))
  res = barrier.barrier_minimize(f, jnp.ones((k,), dtype), simplex=False, tol=tol or 1e-12,
                                 max_iter=max_iter, centre_only=True)
  return res.x * nf ** (-alpha / (alpha + 1.0)), res.iterations


def nash_mtl_weighting(gram, *, max_norm=1.0, tol=None, max_iter=100):
  r"""Nash-MTL: α > 0 with Gα = 1/α (the Nash bargaining solution), d = Σ α_i g_i.

  Solved exactly by Newton's method on ½αᵀGα − Σ log α_i (the reference runs a
  CVXPY/ECOS concave-convex procedure of at most 20 rounds). If
  ``max_norm > 0`` and ‖d‖ > max_norm, α is scaled so that ‖d‖ = max_norm
  (torchjd's form of the reference's gradient clipping).
  Returns (weights, iterations).
  """
  w, iterations = _solve_power_condition(gram, 1.0, tol=tol, max_iter=max_iter)
  return _clip(gram, w, max_norm), iterations


def fairgrad_weighting(gram, alpha=1.0, *, max_norm=0.0, tol=None, max_iter=100):
  r"""FairGrad: w > 0 with G w = w^{−1/α} (α-fair utility maximisation), d = Σ w_i g_i.

  α = 1 is Nash-MTL's condition; every official run script uses α = 2.
  The reference solves it with scipy ``least_squares``; here Newton's method on
  the convex function whose stationarity it is. ``max_norm`` as in
  :func:`nash_mtl_weighting` (0: no clipping, as LibMTL).
  """
  w, iterations = _solve_power_condition(gram, float(alpha), tol=tol, max_iter=max_iter)
  return _clip(gram, w, max_norm), iterations


def _clip(gram, w, max_norm):
  if not max_norm or max_norm <= 0:
    return w
  norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram.astype(w.dtype), w), 0.0))
  return w * jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(w.dtype).tiny))
