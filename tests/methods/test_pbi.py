"""PBI: weights = ∂S/∂L in closed form, the update is ∇_θ S(L(θ)), and torchjd's scalariser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
import torchjd_reference as tjd

RNG = np.random.default_rng(0)
A = jnp.asarray(RNG.standard_normal((3, 4, 5)), jnp.float32)
B = jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32)


def task_losses(theta):
  return 0.5 * jnp.sum((jnp.einsum("kij,j->ki", A, theta) - B) ** 2, axis=1)


def _closed_form(L, w, theta, z):
  wh = w / np.linalg.norm(w)
  f = L - z
  p = f - (f @ wh) * wh
  return wh + theta * p / np.sqrt(p @ p + 1e-12)


def test_update_is_the_gradient_and_weights_the_closed_form():
  theta = jnp.asarray(RNG.standard_normal(5), jnp.float32)
  w, z = jnp.array([0.2, 0.5, 0.3]), jnp.array([-0.1, 0.0, 0.1])
  tx = cg.pbi(3.0, preference=w, reference=z)
  losses, vjp = jax.vjp(task_losses, theta)
  grads = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(3))
  u, state = jax.jit(tx.update)({"t": grads}, tx.init(None), losses=losses)
  expected = jax.grad(lambda t: cg.pbi_loss(task_losses(t), w, 3.0, z))(theta)
  np.testing.assert_allclose(np.asarray(u["t"]), np.asarray(expected), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(state.weights),
      _closed_form(np.asarray(losses, np.float64), np.asarray(w), 3.0, np.asarray(z)), rtol=1e-4)


def test_theta_zero_is_the_projection_and_options_are_validated():
  tx = cg.pbi(0.0, preference=[3.0, 4.0])
  _, s = tx.update({"w": jnp.eye(2)}, tx.init(None), losses=jnp.array([5.0, 1.0]))
  np.testing.assert_allclose(np.asarray(s.weights), [0.6, 0.8], rtol=1e-6)
  with pytest.raises(ValueError, match="theta"):
    cg.pbi(-1.0)
  with pytest.raises(ValueError, match="reference"):
    cg.pbi(reference=[0.0, 0.0], num_tasks=3)
  with pytest.raises(ValueError, match="`reference` must be finite"):
    cg.pbi(reference=[float("nan"), 0.0])
  with pytest.raises(ValueError, match="`preference` must be finite, non-negative"):
    tx.update({"w": jnp.eye(2)}, tx.init(None), losses=jnp.array([5.0, 1.0]),
              preference=jnp.array([-1.0, 2.0]))


def test_matches_torchjd():
  torch, torchjd = tjd.require()
  from torchjd.scalarization import PBI
  rng = np.random.default_rng(1)
  for _ in range(3):
    L = rng.uniform(0.1, 3.0, 4)
    w = rng.dirichlet(np.ones(4))
    z = rng.uniform(-0.1, 0.05, 4)
    Lt = torch.tensor(L, requires_grad=True)
    PBI(5.0, torch.tensor(w), torch.tensor(z))(Lt).backward()
    tx = cg.pbi(5.0, preference=w, reference=z)
    _, s = tx.update({"w": jnp.eye(4)}, tx.init(None), losses=jnp.asarray(L, jnp.float32))
    assert tjd.cosine(s.weights, Lt.grad.numpy()) >= 0.999
    np.testing.assert_allclose(np.asarray(s.weights), Lt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_a_fixed_preference_and_reference_keep_float64():
  """Preference and reference given at construction are used in the losses' dtype: in
  float64 the update equals the exact gradient of pbi_loss to rounding."""
  r, z = [0.1, 0.3, 0.6], [0.05, 0.2, -0.1]
  with jax.enable_x64(True):
    grads = {"w": jnp.eye(3, dtype=jnp.float64)}
    losses = jnp.asarray([0.3, 1.1, 2.0], jnp.float64)
    tx = cg.pbi(5.0, preference=r, reference=z)
    weights = tx.update(grads, tx.init(None), losses=losses)[1].weights
    assert weights.dtype == jnp.float64
  # The closed form r̂ + θ p/(‖p‖² + 1e-12)^½ in float64, p the part of L − z orthogonal
  # to r̂ (a preference rounded to float32 moves the weights by 2e-8 to 3.5e-7).
  r_hat = np.asarray(r) / np.linalg.norm(r)
  f = np.asarray([0.3, 1.1, 2.0]) - np.asarray(z)
  orth = f - (f @ r_hat) * r_hat
  np.testing.assert_allclose(np.asarray(weights), r_hat + 5.0 * orth / np.sqrt(orth @ orth + 1e-12),
                             rtol=1e-12)


def test_a_preference_given_to_update_overrides_the_fixed_one_and_theta_defaults_to_5():
  """``update(preference=b)`` beats ``pbi(preference=a)``; θ = 5 by default (MOEA/D's and
  torchjd's), checked off the preference ray where θ matters."""
  L = np.array([1.5, 0.4, 0.9])
  a, b = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])
  tx = cg.pbi(preference=a)
  _, s = tx.update({"w": jnp.eye(3)}, tx.init(None), losses=jnp.asarray(L, jnp.float32),
                   preference=jnp.asarray(b, jnp.float32))
  expected = _closed_form(L, b, 5.0, np.zeros(3))
  np.testing.assert_allclose(np.asarray(s.weights), expected, rtol=1e-5)
  assert np.max(np.abs(expected - _closed_form(L, a, 5.0, np.zeros(3)))) > 0.1
  assert np.max(np.abs(expected - _closed_form(L, b, 1.0, np.zeros(3)))) > 0.1
