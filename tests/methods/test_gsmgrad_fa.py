"""gsmgrad_fa: the loss-difference weight step and its scalarisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg


def test_gsmgrad_fa_uses_the_loss_decrease_as_the_weight_gradient():
  """The first update is uniform; the second steps w against δ/‖δ‖ (δ = l_prev − l) on the simplex."""
  tx = cg.gsmgrad_fa(lr=0.2, rho=0.1)
  g = {"w": jnp.eye(3)}
  u, s = tx.update(g, tx.init(None), losses=jnp.array([3.0, 2.0, 1.0]))
  np.testing.assert_allclose(np.asarray(s.weights), 1 / 3, atol=1e-7)   # first step: uniform
  u, s = tx.update(g, s, losses=jnp.array([1.0, 1.9, 1.0]))
  delta = np.array([2.0, 0.1, 0.0])
  w = np.full(3, 1 / 3)
  expected = _common.project_simplex(
      w - 0.2 * (delta / np.linalg.norm(delta) + 0.1 * w))
  np.testing.assert_allclose(np.asarray(s.weights), expected, atol=1e-6)
  w_new = np.asarray(s.weights)
  assert w_new[0] < 1 / 3 < w_new[1]         # the task that improved most loses weight
  np.testing.assert_allclose(np.asarray(u["w"]), expected, atol=1e-6)


def test_after_an_sgd_step_the_weight_step_follows_the_gradient_gram_product():
  """The paper's first-order estimate: after x ← x − α Σ_i w_i g_i the loss decrease is
  (l_prev − l)/α ≈ G w, so the weight step from the losses alone matches GSMGrad's
  step Π_Δ(w − β(Gw/‖Gw‖ + ρw)) computed from the true Gram matrix."""
  rng = np.random.default_rng(0)
  A = rng.standard_normal((3, 5))
  losses = lambda x: 0.5 * jnp.sum((x[None, :] - jnp.asarray(A, jnp.float32)) ** 2, axis=1)
  tx = cg.gsmgrad_fa(lr=0.2, rho=0.1)
  x = jnp.zeros(5)
  J = jax.jacrev(losses)(x)
  update, state = tx.update({"x": J}, tx.init(None), losses=losses(x))
  alpha = 1e-3
  x = x - alpha * update["x"]                 # the first update: the uniform combination
  _, state = tx.update({"x": jax.jacrev(losses)(x)}, state, losses=losses(x))
  w = np.full(3, 1 / 3)
  gw = np.asarray(J, np.float64) @ np.asarray(J, np.float64).T @ w
  expected = _common.project_simplex(w - 0.2 * (gw / np.linalg.norm(gw) + 0.1 * w))
  np.testing.assert_allclose(np.asarray(state.weights), expected, atol=5e-4)
  assert not np.allclose(expected, w, atol=1e-2)   # the step is not a no-op


def test_gsmgrad_fa_loss_is_the_weighted_sum():
  w = jnp.array([0.25, 0.75])
  l = jnp.array([2.0, 4.0])
  assert float(cg.gsmgrad_fa_loss(l, w)) == pytest.approx(3.5)
  np.testing.assert_allclose(np.asarray(jax.grad(cg.gsmgrad_fa_loss)(l, w)), [0.25, 0.75])


def test_gsmgrad_fa_options_are_validated():
  with pytest.raises(ValueError, match="rho"):
    cg.gsmgrad_fa(rho=-1.0)
  with pytest.raises(ValueError, match="lr"):
    cg.gsmgrad_fa(lr=0.0)
