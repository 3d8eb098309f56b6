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
    out.append(gi + w * gj if rho < 0 else gi)
  np.testing.assert_allclose(np.asarray(u["w"]), out[0] + out[1], atol=1e-5)
  rho = g1 @ g2 / np.linalg.norm(g1) / np.linalg.norm(g2)
  np.testing.assert_allclose(np.asarray(state.targets), [[0, 0.5 * rho], [0.5 * rho, 0]], atol=1e-6)
  # At K = 2 the weights (1 + b, 1 + a) give the library's g_1' = g_1 + a g_2 and
  # g_2' = g_2 + b g_1: both were modified and now have cosine 0 (the target) with
  # the other task (observed |cos| ≤ 5e-8).
  w = np.asarray(state.weights, np.float64)
  assert w[0] > 1 and w[1] > 1
  for gi, gj, a in ((g1, g2, w[1] - 1), (g2, g1, w[0] - 1)):
    new = gi + a * gj
    assert abs(new @ gj) <= 1e-5 * np.linalg.norm(new) * np.linalg.norm(gj)


def _gradient_vaccine(J, targets, orders, beta, eps=1e-8):
  """LibMTL's GradVac (group_type 0) on the gradients, in float64: for each task i, from
  g_i' = g_i, for each other task j in ``orders[i]``: ρ = cos(g_i', g_j) (ε in the
  denominator); if ρ < ρ̂_ij, g_i' += ‖g_i'‖(ρ̂√(1−ρ²) − ρ√(1−ρ̂²))/(‖g_j‖√(1−ρ̂²) + ε) g_j;
  then ρ̂_ij ← (1 − β)ρ̂_ij + βρ. Returns the g_i' (K, m), the new targets and the number
  of modifications of each g_i'."""
  J = np.asarray(J, np.float64)
  targets = np.array(targets, np.float64)
  modified = J.copy()
  count = [0] * len(J)
  for i, order in enumerate(orders):
    for j in order:
      if j == i:
        continue
      gi, gj = modified[i], J[j]
      rho = gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj) + eps)
      target = targets[i, j]
      if rho < target:
        w = (np.linalg.norm(gi) * (target * np.sqrt(1 - rho ** 2) - rho * np.sqrt(1 - target ** 2))
             / (np.linalg.norm(gj) * np.sqrt(1 - target ** 2) + eps))
        modified[i] = gi + w * gj
        count[i] += 1
      targets[i, j] = (1 - beta) * target + beta * rho
  return modified, targets, count


def _drifting_conflicting_jacobians(seed, k, steps, m=8):
  """Per step, K gradients near the pairwise conflicting centred unit vectors e_i − 1/K
  (fresh noise and scales each step, so the cosines differ from their EMA targets)."""
  rng = np.random.default_rng(seed)
  base = np.eye(k, m) - np.pad(np.full((k, k), 1.0 / k), ((0, 0), (0, m - k)))
  return [(base + 0.3 * rng.standard_normal((k, m))) * rng.uniform(0.5, 2.0, (k, 1))
          for _ in range(steps)]


@pytest.mark.parametrize("k, seed", [(3, 0), (5, 7)])
def test_gradvac_matches_libmtl_over_steps_with_ema_targets(k, seed):
  """Four updates at K ≥ 3 and β = 0.2 equal LibMTL's sequential GradVac against the
  running g_i', in the orders drawn from the state's key (PRNGKey(seed)), with the EMA
  targets carried over."""
  beta = 0.2
  tx = cg.gradvac(beta=beta, num_tasks=k, seed=seed)
  step, state = jax.jit(tx.update), tx.init(None)
  key = jax.random.PRNGKey(seed)
  targets = np.zeros((k, k))
  order_matters = []
  for t, J in enumerate(_drifting_conflicting_jacobians(1, k, steps=4)):
    u, state = step({"w": jnp.asarray(J, jnp.float32)}, state)
    key, orders = _common.drawn_orders(key, k)
    modified, new_targets, count = _gradient_vaccine(J, targets, orders, beta)
    assert max(count) >= 2                       # sequential modifications happen
    if t > 0:
      assert np.abs(targets).max() > 0.05        # the targets steer this step (≥ 0.13)
    d = modified.sum(0)
    scale = np.abs(d).max()
    # Observed ≤ 3e-7·max|d| and targets within 6e-8 (float32).
    np.testing.assert_allclose(np.asarray(u["w"]), d, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(state.targets), new_targets, atol=1e-6)
    reversed_d = _gradient_vaccine(J, targets, [o[::-1] for o in orders], beta)[0].sum(0)
    order_matters.append(np.abs(reversed_d - d).max() > 1e-2 * scale)
    targets = new_targets
  assert any(order_matters)                      # reversed orders: ≥ 3e-2·max|d| observed


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


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
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
