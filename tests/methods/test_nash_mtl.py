"""nash_mtl: the bargaining fixed point Gα = 1/α, weight reuse between recomputations, contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
from conicgrad_jax.methods import nash_mtl as nash_mtl_m
from conicgrad_jax.solvers import power_condition

SEEDS = range(4)


def test_published_values():
  _common.check_published(cg.nash_mtl, [0.0542, 0.7061, 0.7061])


def test_nash_fixed_point():
  Js = [_common.random_J(seed, k=4, m=9) for seed in SEEDS]
  Gs = np.stack([J @ J.T for J in Js])
  weigh = jax.jit(jax.vmap(lambda G: nash_mtl_m.nash_mtl_weighting(G, max_norm=0.0)))
  alphas, _ = _common.x64(weigh, Gs)
  for G, alpha in zip(Gs, alphas):
    # The documented regularisation: G + RIDGE·‖G‖_F·I (a rank-deficient G has no solution).
    G_reg = G + power_condition.RIDGE * np.linalg.norm(G) * np.eye(4)
    assert np.all(alpha > 0)
    np.testing.assert_allclose(G_reg @ alpha, 1.0 / alpha, rtol=1e-6)
    np.testing.assert_allclose(G @ alpha, 1.0 / alpha, rtol=1e-3)


@jax.jit
def _clipped_and_not(G):
  return (nash_mtl_m.nash_mtl_weighting(G, max_norm=0.1)[0],
          nash_mtl_m.nash_mtl_weighting(G, max_norm=10.0)[0])


def test_max_norm_clips_the_update():
  # At the fixed point ‖d‖² = αᵀGα = Σ_i α_i/α_i = K, whatever the gradients' scale.
  J = _common.random_J(0, k=3, m=5)
  G = J @ J.T
  clipped, free = _common.x64(_clipped_and_not, G)
  assert np.linalg.norm(J.T @ clipped) == pytest.approx(0.1, rel=1e-6)
  assert np.linalg.norm(J.T @ free) == pytest.approx(np.sqrt(3), rel=1e-3)   # √3 < 10: kept
  np.testing.assert_allclose(clipped / np.linalg.norm(clipped), free / np.linalg.norm(free),
                             rtol=1e-6)


def test_weights_are_reused_between_recomputations():
  tx = cg.nash_mtl(update_weights_every=2, max_norm=0.0)
  step = jax.jit(tx.update)
  gs = [{"w": jnp.asarray(_common.random_J(s, k=3, m=5), jnp.float32)} for s in range(3)]
  state = tx.init(None)
  weights, iterations = [], []
  for g in gs:
    _, state = step(g, state)
    weights.append(np.asarray(state.weights))
    iterations.append(int(state.info.iterations))
  np.testing.assert_array_equal(weights[1], weights[0])     # step 1 reuses step 0's weights
  assert not np.allclose(weights[2], weights[1])            # step 2 recomputes
  assert iterations[0] > 0 and iterations[1] == 0 and iterations[2] > 0
  assert int(state.step) == 3


@pytest.mark.parametrize("scale0, scale1", [(0.2, 3.0), (3.0, 0.2)])
def test_reused_weights_are_clipped_against_the_current_gradients(scale0, scale1):
  """The reference reuses α itself and clips the current step's update to ``max_norm``.

  (3.0, 0.2): step 0's update is clipped and step 1's is not, so reusing step 0's
  clipped weights instead of α would shrink step 1's update.
  """
  tx = cg.nash_mtl(update_weights_every=2, max_norm=1.0)
  step = jax.jit(tx.update)
  J0, J1 = (_common.random_J(s, k=3, m=5) for s in (0, 1))
  _, state = step({"w": jnp.asarray(scale0 * J0, jnp.float32)}, tx.init(None))
  alpha = np.asarray(state.previous.x, np.float64)           # α of step 0, before the clip
  u, state = step({"w": jnp.asarray(scale1 * J1, jnp.float32)}, state)
  d = (scale1 * J1).T @ alpha
  expected = d * min(1.0, 1.0 / np.linalg.norm(d))
  if scale0 > scale1:
    assert np.linalg.norm((scale0 * J0).T @ alpha) > 1.5 and np.linalg.norm(d) < 0.9
  assert int(state.info.iterations) == 0                    # reused, not recomputed
  np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-5, atol=1e-6)
  assert np.linalg.norm(np.asarray(u["w"])) <= 1.0 + 1e-5


def test_options_are_validated():
  with pytest.raises(ValueError, match="warm_start"):
    cg.nash_mtl(warm_start="yes")
  with pytest.raises(ValueError, match="update_weights_every"):
    cg.nash_mtl(update_weights_every=0)
  with pytest.raises(ValueError, match="max_norm"):
    cg.nash_mtl(max_norm=-1.0)


def test_state_keeps_float64_under_x64():
  _common.check_state_dtypes_follow_params(cg.nash_mtl)


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.nash_mtl)


def test_optax_contract():
  _common.check_optax_contract(cg.nash_mtl)


_warm_and_cold = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.nash_mtl, Js, warm_start=True))


def test_warm_start_agrees_with_cold_solve_in_fewer_newton_steps():
  cold = _common.check_warm_start(_warm_and_cold, rtol32=1e-4, rtol64=1e-8)
  # float32 cannot bring Newton's decrement² to 1e-12; it stops at its rounding floor
  # instead of running to max_iter = 100.
  assert np.all(cold[np.float32] < 30)
