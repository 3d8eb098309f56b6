"""pinv_psd: the pseudo-inverse of a positive semi-definite matrix, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conicgrad_jax.solvers import pinv


@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_pinv_psd_is_scale_free(scale):
  """G⁺ of t·G is G⁺/t (numpy's eigenpairs), for a rank-deficient G at any scale t."""
  a = np.random.default_rng(40).standard_normal((4, 2))
  G = a @ a.T
  vals, vecs = np.linalg.eigh(G)
  expected = (vecs * np.where(vals > 1e-10 * vals.max(), 1.0 / vals, 0.0)) @ vecs.T
  with jax.enable_x64(True):
    got = np.asarray(pinv.pinv_psd(jnp.asarray(scale * G), 1e-10))
  np.testing.assert_allclose(got * scale, expected, rtol=1e-7,
                             atol=1e-9 * np.abs(expected).max())
