"""COSMOS: weights = ∂S/∂L in closed form, the update is ∇_θ S(L(θ)), and torchjd's scalariser."""

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


def _closed_form(L, r, lam):
  nr, nl = np.linalg.norm(r), np.linalg.norm(L)
  return r - lam * (r / (nr * nl) - (r @ L) * L / (nr * nl ** 3))


def test_update_is_the_gradient_of_the_scalarised_loss():
  theta = jnp.asarray(RNG.standard_normal(5), jnp.float32)
  r = jnp.array([0.2, 0.5, 0.3])
  tx = cg.cosmos(2.0, preference=r)
  losses, vjp = jax.vjp(task_losses, theta)
  grads = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(3))
  u, state = jax.jit(tx.update)({"t": grads}, tx.init(None), losses=losses)
  expected = jax.grad(lambda t: cg.cosmos_loss(task_losses(t), r, 2.0))(theta)
  np.testing.assert_allclose(np.asarray(u["t"]), np.asarray(expected), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(state.weights),
                             _closed_form(np.asarray(losses, np.float64), np.asarray(r), 2.0),
                             rtol=1e-4)


def test_preference_given_to_update_overrides_and_lambda_zero_is_linear():
  g = {"w": jnp.eye(3)}
  losses = jnp.array([1.0, 2.0, 3.0])
  tx = cg.cosmos(0.0)
  _, s = tx.update(g, tx.init(None), losses=losses)
  np.testing.assert_allclose(np.asarray(s.weights), 1 / 3, rtol=1e-6)
  _, s = tx.update(g, tx.init(None), losses=losses, preference=jnp.array([0.0, 0.0, 1.0]))
  np.testing.assert_allclose(np.asarray(s.weights), [0.0, 0.0, 1.0], atol=1e-7)
  with pytest.raises(ValueError, match="preference"):
    tx.update(g, tx.init(None), losses=losses, preference=jnp.ones(2))
  with pytest.raises(ValueError, match="lamda"):
    cg.cosmos(-1.0)


def test_matches_torchjd():
  torch, torchjd = tjd.require()
  from torchjd.scalarization import COSMOS
  rng = np.random.default_rng(1)
  for _ in range(3):
    L = rng.uniform(0.1, 3.0, 4)
    r = rng.dirichlet(np.ones(4))
    Lt = torch.tensor(L, requires_grad=True)
    COSMOS(1.5, torch.tensor(r))(Lt).backward()
    tx = cg.cosmos(1.5, preference=r)
    _, s = tx.update({"w": jnp.eye(4)}, tx.init(None), losses=jnp.asarray(L, jnp.float32))
    assert tjd.cosine(s.weights, Lt.grad.numpy()) >= 0.999
    np.testing.assert_allclose(np.asarray(s.weights), Lt.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_a_fixed_preference_keeps_float64():
  """The preference given at construction is used in the losses' dtype, as one given
  at each update is: in float64 the two agree to rounding."""
  r = [0.1, 0.3, 0.6]
  with jax.enable_x64(True):
    grads = {"w": jnp.eye(3, dtype=jnp.float64)}
    losses = jnp.asarray([0.3, 1.1, 2.0], jnp.float64)
    fixed, per_step = cg.cosmos(1.0, preference=r), cg.cosmos(1.0)
    a = fixed.update(grads, fixed.init(None), losses=losses)[1].weights
    b = per_step.update(grads, per_step.init(None), losses=losses,
                        preference=jnp.asarray(r, jnp.float64))[1].weights
    assert a.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-14)


def test_a_preference_given_to_update_overrides_the_fixed_one_and_lamda_defaults_to_1():
  L = np.array([1.5, 0.4, 0.9])
  a, b = np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])
  tx = cg.cosmos(preference=a)
  _, s = tx.update({"w": jnp.eye(3)}, tx.init(None), losses=jnp.asarray(L, jnp.float32),
                   preference=jnp.asarray(b, jnp.float32))
  expected = _closed_form(L, b, 1.0)
  np.testing.assert_allclose(np.asarray(s.weights), expected, rtol=1e-5)
  assert np.max(np.abs(expected - _closed_form(L, a, 1.0))) > 0.1
  assert np.max(np.abs(expected - _closed_form(L, b, 0.5))) > 0.01
