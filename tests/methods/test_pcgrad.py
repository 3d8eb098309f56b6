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
  """At K = 2 the update is g_1' + g_2', each projected off the other task's gradient."""
  J = np.array([[1.0, 0.0], [-1.0, 1.0]])
  tx = cg.pcgrad()
  u, state = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  g1, g2 = J
  p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
  p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
  np.testing.assert_allclose(np.asarray(u["w"]), p1 + p2, atol=1e-6)
  # The library's own g_i': its weights (1 + b, 1 + a) give g_1' = g_1 + a g_2 and
  # g_2' = g_2 + b g_1, both projected and no longer conflicting (observed 0);
  # the update then conflicts with neither task.
  w = np.asarray(state.weights, np.float64)
  assert w[0] > 1 and w[1] > 1
  np.testing.assert_allclose([(g1 + (w[1] - 1) * g2) @ g2, (g2 + (w[0] - 1) * g1) @ g1], 0.0,
                             atol=1e-6)
  d = np.asarray(u["w"], np.float64)
  assert d @ g1 > 0.1 and d @ g2 > 0.1


def _surgery(J, orders, include_self=False):
  """Yu et al.'s surgery on the gradients themselves, in float64: for each task i, from
  g_i' = g_i, for each other task j in ``orders[i]``, if ⟨g_i', g_j⟩ < 0 then
  g_i' ← g_i' − ⟨g_i', g_j⟩/‖g_j‖² g_j. Returns the g_i' (K, m), the last task each was
  projected against (None if none) and the number of projections of each."""
  J = np.asarray(J, np.float64)
  projected, last, count = [], [], []
  for i, order in enumerate(orders):
    g, last_j, n = J[i].copy(), None, 0
    for j in order:
      if j == i and not include_self:
        continue
      dot = g @ J[j]
      if dot < 0:
        g = g - dot / (J[j] @ J[j]) * J[j]
        last_j, n = j, n + 1
    projected.append(g)
    last.append(last_j)
    count.append(n)
  return np.array(projected), last, count


def _pairwise_conflicting_J(seed, k, m=8):
  """K task gradients that all conflict pairwise (the centred unit vectors e_i − 1/K,
  perturbed and rescaled): each task is projected against several others in turn."""
  rng = np.random.default_rng(seed)
  J = np.eye(k, m) - np.pad(np.full((k, k), 1.0 / k), ((0, 0), (0, m - k)))
  J += 0.15 * rng.standard_normal((k, m))
  return J * rng.uniform(0.5, 2.0, (k, 1))


@pytest.mark.parametrize("k", [3, pytest.param(4, marks=pytest.mark.slow), 5])
def test_pcgrad_matches_sequential_surgery_in_the_orders_drawn_from_its_key(k):
  """Three updates at K ≥ 3 equal Σ_i g_i' of the sequential surgery against the running
  g_i', in the orders drawn from the state's key; another order gives another update."""
  tx = cg.pcgrad(seed=k, num_tasks=k)
  step, state = jax.jit(tx.update), tx.init(None)
  key = jax.random.PRNGKey(k)
  for t in range(3):
    J = _pairwise_conflicting_J(10 * k + t, k)
    u, state = step({"w": jnp.asarray(J, jnp.float32)}, state)
    key, orders = _common.drawn_orders(key, k)
    projected, _, count = _surgery(J, orders)
    assert max(count) >= 2                     # sequential projections happen
    d = projected.sum(0)
    scale = np.abs(d).max()
    # Observed ≤ 3e-7·max|d| in float32.
    np.testing.assert_allclose(np.asarray(u["w"]), d, atol=1e-5 * scale)
    # The order matters here (reversed: ≥ 0.15·max|d| observed; identity: ≥ 0.04·max|d|).
    for other in ([o[::-1] for o in orders], [list(range(k))] * k):
      assert np.abs(_surgery(J, other)[0].sum(0) - d).max() > 1e-2 * scale


def test_pcgrad_weighting_combines_the_surgery_coefficients_in_the_keys_orders():
  """pcgrad_weighting(G, key) gives weights w with Jᵀw = Σ_i g_i' of the surgery in the
  orders drawn from ``key`` (unique weights: J has full row rank)."""
  from conicgrad_jax.methods.pcgrad import pcgrad_weighting
  k = 4
  J = _pairwise_conflicting_J(7, k)
  key = jax.random.PRNGKey(11)
  w, _ = pcgrad_weighting(jnp.asarray(J @ J.T, jnp.float32), key)
  _, orders = _common.drawn_orders(key, k, split_first=False)
  d = _surgery(J, orders)[0].sum(0)
  # Observed ≤ 3e-7·max|d|.
  np.testing.assert_allclose(np.asarray(w, np.float64) @ J, d, atol=1e-5 * np.abs(d).max())


def test_including_the_task_itself_follows_the_reference_code():
  """include_self=True is the reference code's surgery (j = i included) in the key's orders.
  Among 40 conflicting instances with K = 5 < m = 10 some differ from the default's by
  over 1 % of max|d| (observed 6.6 %: a partly projected g_i' turned against g_i)."""
  k, m = 5, 10
  tx = cg.pcgrad(seed=5, include_self=True, num_tasks=k)
  default = cg.pcgrad(seed=5, num_tasks=k)
  step, step_default = jax.jit(tx.update), jax.jit(default.update)
  state, state_default = tx.init(None), default.init(None)
  key, largest = jax.random.PRNGKey(5), 0.0
  for t in range(40):
    J = np.random.default_rng(t).standard_normal((k, m))
    J[1:] -= 0.8 * J[0]
    u, state = step({"w": jnp.asarray(J, jnp.float32)}, state)
    u_default, state_default = step_default({"w": jnp.asarray(J, jnp.float32)}, state_default)
    key, orders = _common.drawn_orders(key, k)
    d = _surgery(J, orders, include_self=True)[0].sum(0)
    d_skip = _surgery(J, orders)[0].sum(0)
    scale = np.abs(d).max()
    np.testing.assert_allclose(np.asarray(u["w"]), d, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(u_default["w"]), d_skip, atol=1e-5 * scale)
    largest = max(largest, np.abs(d - d_skip).max() / scale)
  assert largest > 0.01


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
  with pytest.raises(ValueError, match="include_self"):
    cg.pcgrad(include_self="yes")


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.pcgrad)


def test_optax_contract():
  _common.check_optax_contract(cg.pcgrad)
