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


def test_each_update_draws_its_weights_from_the_key_it_splits_off():
  """Step t uses softmax(z), z ~ N(0, I) from the second half of split(key_t); seeds differ."""
  J = _random_J(1)
  g = {"w": jnp.asarray(J, jnp.float32)}
  tx = cg.rlw(seed=3)
  state = tx.init(None)
  drawn = []
  for _ in range(3):
    key, sub = jax.random.split(state.key)
    expected = np.asarray(rlw_m.rlw_weighting(sub, 4)[0])
    u, state = tx.update(g, state)
    np.testing.assert_allclose(np.asarray(state.weights), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u["w"]), expected @ J, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.key), np.asarray(key))
    drawn.append(expected)
  assert np.abs(drawn[0] - drawn[1]).max() > 1e-3 and np.abs(drawn[1] - drawn[2]).max() > 1e-3
  other = cg.rlw(seed=4)
  _, s_other = other.update(g, other.init(None))
  assert np.abs(np.asarray(s_other.weights) - drawn[0]).max() > 1e-3
