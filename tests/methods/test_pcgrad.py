"""pcgrad: the two-task projection rule, the key in the state, contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg


def test_published_values():
  _common.check_published(cg.pcgrad, [0.5848, 3.8012, 3.8012])


def test_pcgrad_two_tasks_matches_the_projection_rule():
  J = np.array([[1.0, 0.0], [-1.0, 1.0]])
  tx = cg.pcgrad()
  u, _ = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  g1, g2 = J
  p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
  p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
  np.testing.assert_allclose(np.asarray(u["w"]), p1 + p2, atol=1e-6)
  assert p1 @ g2 >= -1e-12 and p2 @ g1 >= -1e-12       # no conflict remains


def test_pcgrad_keeps_its_key_in_the_state():
  g = {"w": jnp.asarray(_common.random_J(0), jnp.float32)}
  tx = cg.pcgrad(seed=3)
  step = jax.jit(tx.update)
  s0 = tx.init(None)
  _, s1 = step(g, s0)
  _, s2 = step(g, s1)
  assert not np.array_equal(np.asarray(s1.key), np.asarray(s2.key))
  _, s1b = step(g, s0)
  np.testing.assert_array_equal(np.asarray(s1.weights), np.asarray(s1b.weights))


def test_options_are_validated():
  with pytest.raises(ValueError, match="seed"):
    cg.pcgrad(seed=0.5)


def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.pcgrad)


def test_optax_contract():
  _common.check_optax_contract(cg.pcgrad)
