"""rlw: random convex weights from the key in the state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods import rlw as rlw_m


def _random_J(seed, k=4, m=7):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m))
  J[1:] -= 0.8 * J[0]
  return J


def test_rlw_keeps_its_key_in_the_state():
  g = {"w": jnp.asarray(_random_J(0), jnp.float32)}
  tx = cg.rlw(seed=3)
  s0 = tx.init(None)
  _, s1 = tx.update(g, s0)
  _, s2 = tx.update(g, s1)
  assert not np.array_equal(np.asarray(s1.key), np.asarray(s2.key))
  _, s1b = tx.update(g, s0)
  np.testing.assert_array_equal(np.asarray(s1.weights), np.asarray(s1b.weights))
  tx = cg.rlw(seed=1)
  _, s = tx.update(g, tx.init(None))
  assert np.all(np.asarray(s.weights) > 0) and float(jnp.sum(s.weights)) == pytest.approx(1.0)


def test_rlw_weights_are_a_softmax_of_a_standard_normal_draw():
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  w = np.asarray(jax.vmap(lambda k: rlw_m.rlw_weighting(k, 3)[0])(keys))
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
  z = np.log(w) - np.log(w).mean(1, keepdims=True)   # z up to its mean
  # centred N(0, I_3) draws: var(z_i − mean z) = 1 − 1/3.
  np.testing.assert_allclose(z.var(0), 2 / 3, rtol=0.08)
