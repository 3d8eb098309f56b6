"""CAGrad (Liu et al., NeurIPS 2021): the worst-task improvement within a ball around g0."""

from __future__ import annotations

import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax.solvers import barrier

RESCALES = (0, 1, 2)


def cagrad_weighting(gram, c=0.5, *, rescale=1, tol=None, max_iter=100):
  r"""CAGrad weights: d = g0 + (φ/‖g_w*‖) g_w*, φ = c‖g0‖, g0 the mean gradient.

  w* = argmin_{w∈Δ} wᵀG b + φ (wᵀGw)^½ with b = 1/K (the dual of
  max_d min_i ⟨g_i, d⟩ − ½‖d − g0‖²... restricted to ‖d − g0‖ ≤ c‖g0‖).
  ``rescale``: 0 → d, 1 → d/(1 + c²) (official default), 2 → d/(1 + c).
  torchjd's CAGrad is ``rescale=0``. The inner problem is solved by a barrier
  method (the reference uses scipy SLSQP); 1e-8 regularises the square root
  as in the reference.

  Returns:
    (weights (K,), iterations).
  """
  if rescale not in RESCALES:
    raise ValueError(f"`rescale` must be one of {RESCALES}, got {rescale!r}.")
  gram_n, sigma = _numeric.normalized_gram(gram)
  k = gram_n.shape[0]
  dtype = gram_n.dtype
  b = jnp.full((k,), 1.0 / k, dtype)
  g0_norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram_n, b), 0.0) + 1e-8)
  phi = c * g0_norm + 1e-8
  gb = _numeric.matvec(gram_n, b)
  f = lambda w: jnp.dot(w, gb) + phi * jnp.sqrt(jnp.maximum(_numeric.quad(gram_n, w), 0.0) + 1e-8)
  res = barrier.barrier_minimize(f, jnp.full((k,), 1.0 / k, dtype), simplex=True,
                                 tol=tol, max_iter=max_iter)
  w = res.x
  gw_norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram_n, w), 0.0))
  weights = b + (phi / (gw_norm + 1e-8)) * w
  divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
  return weights / divisor, res.iterations
