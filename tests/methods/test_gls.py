"""gls: the closed-form weights L/(K l_i) and its scalarisation."""

import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods import gls as gls_m
from loss_runs import run_losses


def test_gls_weights_closed_form():
  l = np.array([0.5, 2.0])
  state = run_losses(cg.gls(num_tasks=2), [l])
  L = np.exp(np.mean(np.log(l)))
  np.testing.assert_allclose(np.asarray(state.weights), L / (2 * l), rtol=1e-6)


def test_gls_weighting_is_the_gradient_of_gls_loss_and_scale_free():
  l = jnp.array([0.5, 2.0, 3.0])
  w, _ = gls_m.gls_weighting(l)
  # ∂(Π l)^{1/K}/∂l_i = L/(K l_i), by hand; and L = gls_loss(l), the geometric mean.
  geometric_mean = 3.0 ** (1 / 3)
  assert float(cg.gls_loss(l)) == pytest.approx(geometric_mean, rel=1e-6)
  np.testing.assert_allclose(np.asarray(w), geometric_mean / (3 * np.asarray(l)), rtol=1e-6)
  # Rescaling task 0's loss (and so its gradient) by c leaves the update's direction
  # unchanged: every w_i g_i is multiplied by the same c^{1/K}.
  c = jnp.array([10.0, 1.0, 1.0])
  w_scaled, _ = gls_m.gls_weighting(l * c)
  np.testing.assert_allclose(np.asarray(w_scaled * c), 10.0 ** (1 / 3) * np.asarray(w),
                             rtol=1e-5)
