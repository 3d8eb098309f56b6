"""MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the convex hull of the task gradients."""

from __future__ import annotations

import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax.solvers import barrier

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
_EPS = 1e-8


def gradient_normalizers(gram, losses, normalization):
  """Per-task normalisers n_i: 1, ‖g_i‖, l_i or l_i·‖g_i‖ (intel-isl ``gradient_normalizers``)."""
  dtype = gram.dtype
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  if normalization == "none":
    return jnp.ones_like(norms)
  if normalization == "l2":
    return norms + _EPS
  if losses is None:
    raise ValueError(f"MGDA normalization {normalization!r} needs `losses=`.")
  losses = jnp.asarray(losses, dtype)
  if normalization == "loss":
    return losses + _EPS
  return losses * norms + _EPS


def min_norm_weights(gram, *, tol=None, max_iter=100):
  """w* = argmin_{w∈Δ} wᵀGw by the barrier method plus an exact active-face solve."""
  gram_n, _ = _numeric.normalized_gram(gram)
  k = gram_n.shape[0]
  f = lambda w: 0.5 * _numeric.quad(gram_n, w)
  res = barrier.barrier_minimize(f, jnp.full((k,), 1.0 / k, gram_n.dtype), simplex=True,
                                 tol=tol, max_iter=max_iter)
  w = barrier.polish_quadratic(f, res.x, res.gap_bound, simplex=True)
  return w, res.iterations


def mgda_weighting(gram, losses=None, *, normalization="none", tol=None, max_iter=100):
  r"""MGDA weights: d = Σ_i w*_i g_i with w* = argmin_{w∈Δ} ‖Σ_i w_i g_i / n_i‖².

  The normalisers n_i (``normalization``: "none", "l2", "loss", "loss+") only
  shape the problem; as in the official intel-isl code the weights apply to
  the raw gradients (LibMTL instead applies them to the normalised ones).
  Weights sum to 1 (the Nash-MTL code base multiplies them by K).

  Returns:
    (weights (K,), iterations).
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}.")
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  n = gradient_normalizers(gram, losses, normalization)
  w, iterations = min_norm_weights(gram / jnp.outer(n, n), tol=tol, max_iter=max_iter)
  return w, iterations
