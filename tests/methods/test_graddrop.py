"""graddrop: agreeing coordinates kept, one sign elsewhere, the leak."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax import aggregator
from conicgrad_jax.methods import graddrop as graddrop_m


def test_graddrop_keeps_agreeing_coordinates_and_one_sign_elsewhere():
  J = np.array([[1.0, 2.0, -1.0, 0.5], [3.0, -2.0, -4.0, -0.5]])
  tx = cg.graddrop(seed=0)
  u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  u = np.asarray(u["w"])
  assert u[0] == pytest.approx(4.0) and u[2] == pytest.approx(-5.0)  # signs agree: kept
  for j in (1, 3):                                                    # mixed: one sign survives
    assert u[j] == pytest.approx(J[J[:, j] > 0, j].sum()) or u[j] == pytest.approx(J[J[:, j] < 0, j].sum())
  assert np.all((np.asarray(state.weights) > 0) & (np.asarray(state.weights) <= 1))


def test_sign_survives_with_the_purity_probability_and_leak_keeps_a_fraction():
  """P(positive sign kept) = P = ½(1 + Σg/Σ|g|), over many keys at once (vmap)."""
  g = jnp.array([[3.0], [-1.0]])                    # P = ½(1 + 2/4) = 0.75
  state0 = aggregator.keyed_state(0)(2)
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  run = jax.vmap(lambda key, leak: graddrop_m.graddrop_aggregation(
      [g], state0._replace(key=key), leak=leak)[0][0][0], in_axes=(0, None))
  u = np.asarray(run(keys, 0.0))
  assert set(np.round(u, 5)) <= {3.0, -1.0}
  assert np.mean(u == 3.0) == pytest.approx(0.75, abs=0.03)
  u_leak = np.asarray(run(keys, 0.5))              # ℓ + (1 − ℓ)M: the dropped one keeps half
  assert set(np.round(u_leak, 5)) <= {3.0 - 0.5, -1.0 + 1.5}


def _kept_masks(J, u):
  """Which task gradients an update with leak 0 kept, coordinate by coordinate (J generic)."""
  pos = np.where(J > 0, J, 0.0).sum(0)
  neg = np.where(J < 0, J, 0.0).sum(0)
  keep_pos = np.isclose(u, pos, rtol=1e-5, atol=1e-6)
  keep_neg = np.isclose(u, neg, rtol=1e-5, atol=1e-6)
  assert np.all(keep_pos | keep_neg)   # every coordinate kept one sign (or all, if they agree)
  return np.where(keep_pos, J > 0, False) | np.where(keep_neg, J < 0, False)


def test_masks_are_redrawn_every_step_and_per_leaf_and_weights_are_the_kept_fractions():
  rng = np.random.default_rng(0)
  J = rng.standard_normal((3, 200))
  grads = {"a": jnp.asarray(J, jnp.float32), "b": jnp.asarray(J, jnp.float32)}
  tx = cg.graddrop(seed=5)
  state = tx.init(None)
  masks, keys = [], [np.asarray(state.key)]
  for _ in range(2):
    u, state = tx.update(grads, state)
    m_a, m_b = (_kept_masks(J, np.asarray(u[name], np.float64)) for name in ("a", "b"))
    # The weights log the fraction of coordinates each task kept, over both leaves.
    np.testing.assert_allclose(np.asarray(state.weights),
                               (m_a.sum(1) + m_b.sum(1)) / (2 * J.shape[1]), rtol=1e-6)
    assert np.mean(m_a != m_b) > 0.1          # each leaf draws its own U
    masks.append(m_a)
    keys.append(np.asarray(state.key))
  assert np.mean(masks[0] != masks[1]) > 0.1  # a fresh draw at every step
  assert not np.array_equal(keys[0], keys[1]) and not np.array_equal(keys[1], keys[2])
  other = cg.graddrop(seed=6)
  u_other, _ = other.update(grads, other.init(None))
  assert np.mean(_kept_masks(J, np.asarray(u_other["a"], np.float64)) != masks[0]) > 0.1
