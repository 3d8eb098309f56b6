"""The pseudo-inverse of a symmetric positive semi-definite matrix (IMTL-G, ConFIG)."""

from __future__ import annotations

import jax.numpy as jnp


def pinv_psd(gram, rtol):
  """G⁺ from the eigendecomposition of G, eigenvalues ≤ rtol·max|λ| treated as zero."""
  vals, vecs = jnp.linalg.eigh(gram)
  cutoff = rtol * jnp.max(jnp.abs(vals))
  inv = jnp.where(vals > cutoff, 1.0 / jnp.where(vals > cutoff, vals, 1.0), 0.0)
  return (vecs * inv[None, :]) @ vecs.T
