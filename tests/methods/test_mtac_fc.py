"""MTAC-FC: update with the current weights, one cheap unregularised step, bounded distance to CA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
import reference_solvers as ref


def _J(seed, k=4, m=7):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m))
  J[1:] -= 0.8 * J[0]
  return J


_TX = cg.mtac_fc(0.5, num_tasks=4)


@jax.jit
def _trajectory(J):
  """600 updates on a fixed J: (directions d_t, weights λ_{t+1})."""
  def body(state, _):
    u, state = _TX.update({"w": J}, state)
    return state, (u["w"], state.next_weights)

  return jax.lax.scan(body, _TX.init(None), None, length=600)[1]


def test_update_uses_the_current_weights_and_one_trace_normalised_step():
  J = _J(0)
  tx = cg.mtac_fc(0.2)
  g = {"w": jnp.asarray(J, jnp.float32)}
  u, s = tx.update(g, tx.init(None))
  w0 = np.full(4, 0.25)
  np.testing.assert_allclose(np.asarray(u["w"]), J.T @ w0, atol=1e-5)   # λ_0, not λ_1
  G = J @ J.T
  w1 = _common.project_simplex(w0 - 0.2 * G @ w0 / np.trace(G))
  np.testing.assert_allclose(np.asarray(s.weights), w0, atol=1e-6)     # the update's own λ
  np.testing.assert_allclose(np.asarray(s.next_weights), w1, atol=1e-5)
  u, s = tx.update(g, s)
  np.testing.assert_allclose(np.asarray(u["w"]), J.T @ w1, atol=1e-5)
  np.testing.assert_allclose(np.asarray(s.weights), w1, atol=1e-5)
  # The factory's step (inner products with d, no Gram matrix) equals the weighting function's.
  w, _ = cg.mtac_fc_weighting(jnp.asarray(G, jnp.float32), jnp.asarray(w0, jnp.float32), lr=0.2)
  np.testing.assert_allclose(np.asarray(w), w1, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_distance_to_the_conflict_avoidant_direction_stays_bounded_and_shrinks(seed):
  """‖d_t‖ never increases, so ‖d_t − d*‖² ≤ ‖d_t‖² − ‖d*‖² ≤ ‖d_0‖² − ‖d*‖² (d* by cvxpy)."""
  J = _J(seed)
  d_star = ref.mgda_direction(J)
  ds, ws = _trajectory(jnp.asarray(J, jnp.float32))
  ds = np.asarray(ds, np.float64)
  norms2 = np.sum(ds ** 2, axis=1)
  assert np.all(np.diff(norms2) <= 1e-5 * norms2[0])
  dist2 = np.sum((ds - d_star) ** 2, axis=1)
  bound = norms2[0] - d_star @ d_star
  assert np.all(dist2 <= bound + 1e-5)
  assert dist2[-1] < 0.05 * dist2[0]                    # deterministic J: it converges
  w = np.asarray(ws)
  assert np.all(w >= 0) and np.allclose(w.sum(1), 1.0, atol=1e-5)


def test_scale_free_and_validated():
  J = _J(4)
  outs = []
  for scale in (1e-4, 1.0, 1e4):
    tx = cg.mtac_fc()
    _, s = tx.update({"w": jnp.asarray(scale * J, jnp.float32)}, tx.init(None))
    outs.append(np.asarray(s.next_weights))
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
  np.testing.assert_allclose(outs[2], outs[1], atol=1e-5)
  with pytest.raises(ValueError, match="lr"):
    cg.mtac_fc(-0.1)
  assert "mtac_fc" in cg.methods()
