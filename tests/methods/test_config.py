"""config: equal cosines between the update and every task gradient, its length, contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
from conicgrad_jax.methods import config as config_m


def test_published_values():
  _common.check_published(cg.config, [0.1588, 2.0706, 2.0706])


def test_config_equalises_cosines():
  J = _common.random_J(3, k=3, m=6)
  c, _ = _common.x64(jax.jit(config_m.config_weighting), J @ J.T)
  d = J.T @ c
  cos = (J @ d) / np.linalg.norm(J, axis=1) / np.linalg.norm(d)
  np.testing.assert_allclose(cos, cos[0], rtol=1e-8)
  assert cos[0] > 0
  assert np.linalg.norm(d) == pytest.approx(np.sum(J @ d) / np.linalg.norm(d), rel=1e-8)


def _config_reference(J, preference):
  """d = (Σ_i ⟨g_i, x̂⟩) x̂ with x = U⁺w, U the unit rows of J (ConFIG's least-squares form)."""
  unit_rows = J / np.linalg.norm(J, axis=1, keepdims=True)
  x = np.linalg.lstsq(unit_rows, np.asarray(preference, np.float64), rcond=None)[0]
  x_hat = x / np.linalg.norm(x)
  return np.sum(J @ x_hat) * x_hat


def test_preference_sets_the_relative_cosines():
  """cg.config(preference=w) gives cos(d, g_i) ∝ w_i and the numpy least-squares update."""
  k, m = 3, 6
  preference = np.array([1.0, 2.0, 4.0])
  Js = np.stack([_common.random_J(seed, k=k, m=m) for seed in range(3)])
  tx = cg.config(preference=preference, num_tasks=k)
  ds = _common.updates_in_float64(tx, Js)
  for J, d in zip(Js, ds):
    expected = _config_reference(J, preference)
    scale = np.linalg.norm(expected)
    # Observed ≤ 2e-15 relative to ‖d‖ (float64); the cosine ratios agree to 4e-14.
    np.testing.assert_allclose(d / scale, expected / scale, atol=1e-9, rtol=0)
    cos = (J @ d) / np.linalg.norm(J, axis=1) / np.linalg.norm(d)
    np.testing.assert_allclose(cos / preference, cos[0] / preference[0], rtol=1e-8)
    uniform = _config_reference(J, np.ones(k))
    assert np.linalg.norm(expected - uniform) > 0.1 * scale


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.config)


def test_optax_contract():
  _common.check_optax_contract(cg.config)


def test_nearly_parallel_gradients_are_resolved_down_to_the_gram_matrix_rounding():
  """Two gradients at an angle θ differ in G by about θ²/2 (relative), so float32 G resolves
  them only for θ ≫ √eps ≈ 3e-4. ConFIG's exact update jumps by 25 % as θ → 0 here: in
  float32 the update is exact to 1e-4 at θ = 0.1 (observed 2.7e-6) and is the update of
  the exactly duplicated tasks at θ = 1e-4 (observed 4.7e-5); float64 resolves θ = 1e-4
  (observed 1.8e-8)."""
  def jacobian(theta):
    return np.array([[1.0, 0.0, 0.0, 0.0], [1.0, theta, 0.0, 0.0], [-0.5, 0.3, 1.0, 0.2]])

  def relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)

  tx = cg.config(num_tasks=3)
  float32 = jax.jit(lambda J: tx.update({"w": J}, tx.init(None))[0]["w"])
  duplicated = _common.updates_in_float64(tx, jacobian(0.0)[None])[0]
  exact_near = _config_reference(jacobian(1e-4), np.ones(3))
  assert relative(exact_near, duplicated) > 0.2
  assert relative(np.asarray(float32(jnp.asarray(jacobian(0.1), jnp.float32))),
                  _config_reference(jacobian(0.1), np.ones(3))) < 1e-4
  assert relative(np.asarray(float32(jnp.asarray(jacobian(1e-4), jnp.float32))),
                  duplicated) < 1e-3
  assert relative(_common.updates_in_float64(tx, jacobian(1e-4)[None])[0], exact_near) < 1e-6
