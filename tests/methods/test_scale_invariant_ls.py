"""Scale-invariant LS: the update is ∇ Σ log L_k, unchanged when one loss is rescaled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg

RNG = np.random.default_rng(0)
A = jnp.asarray(RNG.standard_normal((3, 4, 5)), jnp.float32)
B = jnp.asarray(RNG.standard_normal((3, 4)), jnp.float32)
TX = cg.scale_invariant_ls()
STEP = jax.jit(TX.update)


def task_losses(theta, scale):
  return scale * 0.5 * jnp.sum((jnp.einsum("kij,j->ki", A, theta) - B) ** 2, axis=1)


def _update(theta, scale):
  losses, vjp = jax.vjp(lambda t: task_losses(t, scale), theta)
  grads = jax.vmap(lambda e: vjp(e)[0])(jnp.eye(3))
  return STEP({"t": grads}, TX.init(None), losses=losses)


def test_update_is_the_gradient_of_the_sum_of_log_losses_and_scale_free():
  theta = jnp.asarray(RNG.standard_normal(5), jnp.float32)
  u, state = _update(theta, jnp.ones(3))
  expected = jax.grad(lambda t: cg.scale_invariant_ls_loss(task_losses(t, 1.0)))(theta)
  np.testing.assert_allclose(np.asarray(u["t"]), np.asarray(expected), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(state.weights),
                             1 / np.asarray(task_losses(theta, 1.0)), rtol=1e-5)
  u_scaled, _ = _update(theta, jnp.array([1.0, 1e3, 1e-2]))
  np.testing.assert_allclose(np.asarray(u_scaled["t"]), np.asarray(u["t"]), rtol=1e-3, atol=1e-5)


def test_non_positive_loss_skips_the_step():
  u, state = STEP({"t": jnp.ones((3, 5))}, TX.init(None), losses=jnp.array([1.0, 0.0, 2.0]))
  assert np.all(np.asarray(u["t"]) == 0) and int(state.nonfinite_steps) == 1
  tx = cg.scale_invariant_ls(eps=1.0)
  _, state = tx.update({"t": jnp.ones((3, 5))}, tx.init(None), losses=jnp.array([1.0, 0.0, 3.0]))
  np.testing.assert_allclose(np.asarray(state.weights), [0.5, 1.0, 0.25])
  with pytest.raises(ValueError, match="eps"):
    cg.scale_invariant_ls(eps=-1.0)
