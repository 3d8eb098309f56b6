"""db_mtl: log-loss gradients, their EMA, equalised norms, against a NumPy transcription."""

import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg


def _numpy_db_mtl(Js, losses, beta=0.9, beta_sigma=0.0):
  g_hat = np.zeros_like(Js[0])
  for t, (J, l) in enumerate(zip(Js, losses), start=1):
    log_grad = J / (l[:, None] + 1e-8)
    g_hat = log_grad + beta / t ** beta_sigma * (g_hat - log_grad)
  n = np.linalg.norm(g_hat, axis=1)
  return (n.max() / (n + 1e-8)) @ g_hat


@pytest.mark.parametrize("beta_sigma", [0.0, 0.5])
def test_db_mtl_matches_the_numpy_reference(beta_sigma):
  rng = np.random.default_rng(7)
  Js = [rng.standard_normal((3, 2, 4)) for _ in range(3)]
  losses = [rng.uniform(0.5, 2.0, 3) for _ in range(3)]
  params = {"w": jnp.zeros((2, 4))}
  tx = cg.db_mtl(num_tasks=3, beta_sigma=beta_sigma)
  state = tx.init(params)
  for J, l in zip(Js, losses):
    u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, state, params,
                         losses=jnp.asarray(l, jnp.float32))
  expected = _numpy_db_mtl([J.reshape(3, -1) for J in Js], losses, beta_sigma=beta_sigma)
  np.testing.assert_allclose(np.asarray(u["w"]).ravel(), expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="num_tasks"):
    cg.db_mtl()


def test_options_are_validated():
  with pytest.raises(ValueError, match="beta"):
    cg.db_mtl(beta=1.5, num_tasks=2)
  with pytest.raises(ValueError, match="beta_sigma"):
    cg.db_mtl(beta_sigma=-1.0, num_tasks=2)


@pytest.mark.parametrize("losses", [[-0.5, 2.0], [np.inf, 1.0]])
def test_losses_outside_the_log_domain_skip_the_step(losses):
  params = {"w": jnp.zeros(2)}
  tx = cg.db_mtl(num_tasks=2)
  u, state = tx.update({"w": jnp.eye(2)}, tx.init(params), params, losses=jnp.array(losses))
  assert np.all(np.asarray(u["w"]) == 0.0) and int(state.nonfinite_steps) == 1
  assert int(state.step) == 0


def test_a_zero_loss_is_inside_the_log_domain():
  """log(l + 1e-8) is defined at l = 0: the step is taken (the reference's g/(l + 1e-8))."""
  params = {"w": jnp.zeros(2)}
  J = np.array([[1.0, 0.5], [0.2, 1.0]])
  tx = cg.db_mtl(num_tasks=2)
  u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(params), params,
                       losses=jnp.array([0.0, 1.0]))
  assert int(state.nonfinite_steps) == 0
  np.testing.assert_allclose(np.asarray(u["w"]), _numpy_db_mtl([J], [np.array([0.0, 1.0])]),
                             rtol=1e-4)
