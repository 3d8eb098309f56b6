"""upgrad: every task's directional derivative along the update is ≥ 0 (up to reg_eps), contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
import reference_solvers as ref
from conicgrad_jax.methods import upgrad as upgrad_m

SEEDS = range(4)
REG_EPS = ref.DUAL_CONE_REG_EPS


def _upgrad_reference(G, preference, **regularisation):
  """Σ_i v*(p_i e_i) with p normalised to sum 1, each QP solved by enumeration."""
  p = np.asarray(preference, np.float64) / np.sum(preference)
  p_hat = ref.dual_cone_regularized_gram(G, **regularisation)
  return sum(ref.dual_cone_qp_by_enumeration(p_hat, p_i * e_i) for p_i, e_i in zip(p, np.eye(len(p))))


def test_published_values():
  _common.check_published(cg.upgrad, [0.2929, 1.9004, 1.9004])


def test_update_lies_in_the_dual_cone():
  Js = [_common.random_J(seed) for seed in SEEDS]
  Gs = np.stack([J @ J.T for J in Js])
  ws, _ = _common.x64(jax.jit(jax.vmap(upgrad_m.upgrad_weighting)), Gs)
  for J, G, w in zip(Js, Gs, ws):
    d = J.T @ w
    # In the dual cone up to the regularisation: KKT of min vᵀ(Ĝ + εI)v gives
    # (G v)_i ≥ −ε·trace(G)·v_i (torchjd's reg_eps, ε = 1e-4).
    assert np.all(J @ d >= -REG_EPS * np.trace(G) * np.abs(w) - 1e-9)


@pytest.mark.parametrize("k, preference", [
    (3, None), (5, [4.0, 1.0, 0.5, 2.0, 3.0]),
    pytest.param(8, [1.0, 6.0, 2.0, 0.5, 3.0, 1.0, 4.0, 2.0], marks=pytest.mark.slow)])
def test_each_projection_satisfies_the_kkt_conditions_of_its_qp(k, preference):
  """Every row v_i = v*(p_i e_i) solves min vᵀP̂v s.t. v ≥ p_i e_i; w matches a numpy solve.

  P̂ = G/trace(G) + reg_eps·I is built here in numpy. Feasibility, P̂v ≥ 0 and
  complementarity are the KKT conditions of this convex QP, so they prove that
  each row is its minimiser (with any positive multiple of the right v, or a
  zero update, complementarity or feasibility fails). The weights are compared
  with Σ_i v*(p_i e_i), each QP solved exactly by enumerating its faces in numpy.
  """
  Js = [_common.random_J(seed, k=k, m=k + 3) for seed in SEEDS]
  Gs = np.stack([J @ J.T for J in Js])
  p = np.full(k, 1.0 / k) if preference is None else np.divide(preference, np.sum(preference))
  vs, _ = _common.x64(jax.jit(jax.vmap(lambda G: upgrad_m.upgrad_projections(G, preference))), Gs)
  ws, _ = _common.x64(jax.jit(jax.vmap(lambda G: upgrad_m.upgrad_weighting(G, preference))), Gs)
  for G, v, w in zip(Gs, vs, ws):
    p_hat = ref.dual_cone_regularized_gram(G)
    lower = np.diag(p)
    grad = v @ p_hat                       # row i: P̂ v_i
    assert np.all(v >= lower - 1e-12)
    assert np.all(grad >= -1e-10)
    assert np.all(np.abs(grad * (v - lower)) <= 1e-9)
    assert np.all(np.diag(grad) > 0)     # each gradient's own coefficient is active
    # Observed ≤ 6e-15 relative to max|w| (float64, the exact face solve); 1e-6 leaves
    # room for an answer certified by the barrier's relative gap alone.
    expected = _upgrad_reference(G, p)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(w / scale, expected / scale, atol=1e-6, rtol=0)
    if preference is not None:             # the preference moves w by ≥ 0.026·max|w|
      assert np.max(np.abs(expected - _upgrad_reference(G, np.ones(k)))) > 1e-2 * scale


def test_preference_weights_each_projection_through_the_optax_factory():
  """cg.upgrad(preference=p) updates by Jᵀ Σ_i v*(p_i e_i) (numpy reference), not the mean's."""
  k, m = 4, 7
  preference = np.array([4.0, 1.0, 2.0, 3.0])
  Js = np.stack([_common.random_J(seed, k=k, m=m) for seed in SEEDS])
  tx = cg.upgrad(preference=preference, num_tasks=k)
  ds = _common.updates_in_float64(tx, Js)
  for J, d in zip(Js, ds):
    expected = J.T @ _upgrad_reference(J @ J.T, preference)
    uniform = J.T @ _upgrad_reference(J @ J.T, np.ones(k))
    scale = np.linalg.norm(expected)
    # Observed ≤ 2e-15 relative to ‖d‖ (float64); the mean's update is ≥ 0.13·‖d‖ away.
    np.testing.assert_allclose(d / scale, expected / scale, atol=1e-6, rtol=0)
    assert np.linalg.norm(expected - uniform) > 0.05 * scale


def test_reg_eps_and_norm_eps_reach_the_projections():
  """cg.upgrad(reg_eps=0.1) solves with P̂ = G/trace(G) + 0.1·I; with norm_eps above
  trace(G), G/trace(G) counts as 0, every projection is its lower bound and the update is
  the mean gradient (numpy references; each option moves the update by ≥ 5 %)."""
  k, m = 4, 7
  Js = np.stack([_common.random_J(seed, k=k, m=m) for seed in SEEDS])
  ds = _common.updates_in_float64(cg.upgrad(reg_eps=0.1, num_tasks=k), Js)
  for J, d in zip(Js, ds):
    expected = J.T @ _upgrad_reference(J @ J.T, np.ones(k), reg_eps=0.1)
    scale = np.linalg.norm(expected)
    np.testing.assert_allclose(d / scale, expected / scale, atol=1e-6, rtol=0)
    assert np.linalg.norm(expected - J.T @ _upgrad_reference(J @ J.T, np.ones(k))) > 0.05 * scale
  small = 0.1 * Js / np.sqrt(np.trace(Js[0] @ Js[0].T))      # trace(G) = 0.01 for the first
  ds = _common.updates_in_float64(cg.upgrad(norm_eps=0.05, num_tasks=k), small[:1])
  expected = small[0].T @ _upgrad_reference(small[0] @ small[0].T, np.ones(k), norm_eps=0.05)
  np.testing.assert_allclose(expected, small[0].mean(0), rtol=1e-9)
  scale = np.linalg.norm(expected)
  np.testing.assert_allclose(ds[0] / scale, expected / scale, atol=1e-6, rtol=0)
  projected = small[0].T @ _upgrad_reference(small[0] @ small[0].T, np.ones(k))
  assert np.linalg.norm(projected - expected) > 0.05 * scale


def test_options_are_validated():
  with pytest.raises(ValueError, match="warm_start"):
    cg.upgrad(warm_start="yes")
  with pytest.raises(ValueError, match="preference"):
    cg.upgrad(preference=[1.0, -1.0])
  with pytest.raises(ValueError, match="reg_eps"):
    cg.upgrad(reg_eps=-1.0)


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.upgrad)


def test_optax_contract():
  _common.check_optax_contract(cg.upgrad)


_warm_and_cold = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.upgrad, Js))


def test_warm_start_agrees_with_cold_solve_in_fewer_newton_steps():
  # float32: a gap within tol = 1e-6 on a QP whose curvature is only 2·reg_eps leaves v
  # uncertain to ~1e-3 whichever start (the cold float32 solve is that far from float64 too).
  _common.check_warm_start(_warm_and_cold, rtol32=5e-3, rtol64=1e-8)


def test_warm_start_from_unrelated_problems_gives_the_cold_weights():
  """K = 7, float32, every step's gradients unrelated to the last, where the QPs' optimal
  values are small (about reg_eps/K²): the warm-started weights are the cold solve's."""
  rng = np.random.default_rng(3)
  jacobians = jnp.asarray(rng.standard_normal((1, 8, 7, 9)), jnp.float32)
  (w_warm, w_cold), _ = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.upgrad, Js))(jacobians)
  scale = np.max(np.abs(np.asarray(w_cold)), axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(w_warm) / scale, np.asarray(w_cold) / scale, atol=1e-5)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@pytest.mark.parametrize("k", [3, pytest.param(8, marks=pytest.mark.slow)])
def test_float32_tiny_gradients_give_the_mean_gradient(name, k):
  """trace(G) < norm_eps: P̂ = reg_eps·I and every projection is its lower bound, so the
  update is the mean gradient (as torchjd). The barrier's absolute gap is several percent
  of so small an objective (its answer was up to 2.3× the mean); the active-set steps give
  it to rounding (observed ≤ 7e-8 of its largest entry)."""
  J = 1e-3 * np.random.default_rng(k).normal(size=(k, 10))
  tx = cg.methods()[name].factory(num_tasks=k)
  u, _ = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  mean = J.mean(0)
  assert np.abs(np.asarray(u["w"]) - mean).max() <= 1e-5 * np.abs(mean).max()


def test_float32_more_tasks_than_dimensions_match_the_exact_projections():
  """K = 8 > m = 2: P̂ is rank 2 plus reg_eps·I; the float32 update is within 1e-2 of
  the enumerated projections' (observed ≤ 3e-3; it was up to 9 % off before the
  active-set steps)."""
  rng = np.random.default_rng(3)
  tx = cg.upgrad(num_tasks=8)
  step = jax.jit(tx.update)
  for _ in range(20):
    J = rng.normal(size=(8, 2))
    d = J.T @ _upgrad_reference(J @ J.T, np.ones(8))
    u, _ = step({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
    assert np.linalg.norm(np.asarray(u["w"], np.float64) - d) <= 1e-2 * np.linalg.norm(d)
