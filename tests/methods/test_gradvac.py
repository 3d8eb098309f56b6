"""gradvac: LibMTL's two-task formula, the EMA targets, float64 state, contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg


def test_gradvac_two_tasks_matches_reference_formula_and_hits_the_target():
  J = np.array([[1.0, 0.2, 0.0], [-0.8, 1.0, 0.3]])
  tx = cg.gradvac(beta=0.5)
  u, state = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  g1, g2 = J
  out = []
  for gi, gj in ((g1, g2), (g2, g1)):           # LibMTL's loop, K = 2, targets start at 0
    rho = gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj) + 1e-8)
    w = np.linalg.norm(gi) * (0.0 - rho * 1.0) / (np.linalg.norm(gj) * 1.0 + 1e-8)
    new = gi + w * gj if rho < 0 else gi
    out.append(new)
    assert abs(new @ gj) <= 1e-6 * np.linalg.norm(new) * np.linalg.norm(gj)  # cosine → target 0
  np.testing.assert_allclose(np.asarray(u["w"]), out[0] + out[1], atol=1e-5)
  rho = g1 @ g2 / np.linalg.norm(g1) / np.linalg.norm(g2)
  np.testing.assert_allclose(np.asarray(state.targets), [[0, 0.5 * rho], [0.5 * rho, 0]], atol=1e-6)


def test_state_keeps_float64_under_x64():
  state = _common.check_state_dtypes_follow_params(cg.gradvac)
  assert state.targets.dtype == jnp.float64
  g1, g2 = _common.J_PUBLISHED
  rho = g1 @ g2 / np.linalg.norm(g1) / np.linalg.norm(g2)
  np.testing.assert_allclose(np.asarray(state.targets)[0, 1], 0.5 * rho, rtol=1e-8)


def test_options_are_validated():
  with pytest.raises(ValueError, match="beta"):
    cg.gradvac(beta=1.5)
  with pytest.raises(ValueError, match="eps"):
    cg.gradvac(eps=-1.0)


def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.gradvac)


def test_optax_contract():
  _common.check_optax_contract(cg.gradvac)


@pytest.mark.parametrize("turn", [0.1, 0.005])
def test_a_target_driven_to_one_by_parallel_gradients_keeps_the_step_bounded(turn):
  """Parallel gradients drive ρ̂ to 1 in float32; the next step, at cosine 0.995 (a
  turn of 0.1), would divide by ε alone (an update 1e8 times the gradients in the
  reference). A cosine above the step's aim 1 − √eps (a turn of 0.005) takes no step,
  rather than one away from g_j."""
  rng = np.random.default_rng(3)
  g = rng.standard_normal(50)
  h = rng.standard_normal(50)
  h -= (h @ g) / (g @ g) * g
  h *= turn * np.linalg.norm(g) / np.linalg.norm(h)
  tx = cg.gradvac(num_tasks=2)
  step, state = jax.jit(tx.update), tx.init(None)
  parallel = {"w": jnp.asarray(np.stack([g, 2.0 * g]), jnp.float32)}
  for _ in range(40):
    _, state = step(parallel, state)
  assert float(state.targets[0, 1]) > 1.0 - 1e-6
  turned = np.stack([g, 2.0 * (g + h)])
  u, state = step({"w": jnp.asarray(turned, jnp.float32)}, state)
  ratio = float(jnp.linalg.norm(u["w"])) / np.linalg.norm(turned.sum(0))
  assert np.isfinite(ratio) and int(state.nonfinite_steps) == 0
  if turn > 0.01:
    assert 1.0 < ratio < 10.0
  else:
    np.testing.assert_allclose(np.asarray(state.weights), [1.0, 1.0], rtol=1e-6)


def test_a_zero_task_gradient_with_eps_zero_is_left_alone():
  """Its cosine is 0/0 without ε: it counts as 0, and adding a multiple of a zero
  gradient changes nothing, so the update is the one with ε > 0."""
  g = {"w": jnp.asarray([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]], jnp.float32)}
  updates = []
  for eps in (1e-8, 0.0):
    tx = cg.gradvac(eps=eps, num_tasks=3)
    step, state = jax.jit(tx.update), tx.init(None)
    for _ in range(3):
      u, state = step(g, state)
    assert int(state.nonfinite_steps) == 0
    updates.append(np.asarray(u["w"]))
  np.testing.assert_allclose(updates[1], updates[0], rtol=1e-5, atol=1e-6)
