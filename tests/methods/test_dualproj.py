"""dualproj: the mean gradient projected onto the dual cone (cvxpy reference, complementarity), contract."""

import cvxpy as cp
import jax
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
import reference_solvers as ref
from conicgrad_jax.methods import dualproj as dualproj_m

SEEDS = range(4)
REG_EPS = ref.DUAL_CONE_REG_EPS


def test_published_values():
  _common.check_published(cg.dualproj, [0.5563, 1.1109, 1.1109])


def test_dual_cone_projection():
  """The weights solve min vᵀP̂v s.t. v ≥ 1/K, with P̂ = G/trace(G) + reg_eps·I built in numpy."""
  Js = [_common.random_J(seed) for seed in SEEDS]
  Gs = np.stack([J @ J.T for J in Js])
  ws, _ = _common.x64(jax.jit(jax.vmap(dualproj_m.dualproj_weighting)), Gs)
  for J, G, w in zip(Js, Gs, ws):
    p_hat = ref.dual_cone_regularized_gram(G)
    d = J.T @ w
    # In the dual cone up to the regularisation: KKT of min vᵀ(Ĝ + εI)v gives
    # (G v)_i ≥ −ε·trace(G)·v_i (torchjd's reg_eps, ε = 1e-4).
    assert np.all(J @ d >= -REG_EPS * np.trace(G) * np.abs(w) - 1e-9)
    # min vᵀP̂v s.t. v ≥ u: the KKT conditions (feasibility, P̂v ≥ 0, complementarity)
    # prove optimality; cvxpy's objective is a check from outside (older Clarabel
    # releases stop short of the optimum by ~1e-4 in v, so its v is not compared).
    u = np.full(4, 0.25)
    grad = p_hat @ w
    assert np.all(w >= u - 1e-12)
    assert np.all(grad >= -1e-10)
    assert np.all(np.abs(grad * (w - u)) <= 1e-8)
    v = cp.Variable(4)
    ref.solve_tight(cp.Problem(cp.Minimize(cp.quad_form(v, cp.psd_wrap(p_hat))), [v >= u]))
    assert w @ p_hat @ w <= v.value @ p_hat @ v.value * (1 + 1e-9) + 1e-12
    # v itself against the exact face solve in numpy (observed ≤ 6e-16 relative).
    expected = ref.dual_cone_qp_by_enumeration(p_hat, u)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(w / scale, expected / scale, atol=1e-6, rtol=0)


def test_reg_eps_and_norm_eps_reach_the_projection():
  """cg.dualproj(reg_eps=0.1) projects with P̂ = G/trace(G) + 0.1·I; with norm_eps above
  trace(G) the projection is its lower bound, the mean gradient (numpy references; each
  option moves the update by ≥ 5 %)."""
  k, m = 4, 7
  u = np.full(k, 1.0 / k)
  Js = np.stack([_common.random_J(seed, k=k, m=m) for seed in SEEDS])
  ds = _common.updates_in_float64(cg.dualproj(reg_eps=0.1, num_tasks=k), Js)
  for J, d in zip(Js, ds):
    G = J @ J.T
    expected = J.T @ ref.dual_cone_qp_by_enumeration(ref.dual_cone_regularized_gram(G, 0.1), u)
    default = J.T @ ref.dual_cone_qp_by_enumeration(ref.dual_cone_regularized_gram(G), u)
    scale = np.linalg.norm(expected)
    np.testing.assert_allclose(d / scale, expected / scale, atol=1e-6, rtol=0)
    assert np.linalg.norm(expected - default) > 0.05 * scale
  small = 0.1 * Js[0] / np.sqrt(np.trace(Js[0] @ Js[0].T))    # trace(G) = 0.01
  d = _common.updates_in_float64(cg.dualproj(norm_eps=0.05, num_tasks=k), small[None])[0]
  scale = np.linalg.norm(small.mean(0))
  np.testing.assert_allclose(d / scale, small.mean(0) / scale, atol=1e-6, rtol=0)
  projected = small.T @ ref.dual_cone_qp_by_enumeration(
      ref.dual_cone_regularized_gram(small @ small.T), u)
  assert np.linalg.norm(projected - small.mean(0)) > 0.05 * scale


def test_preference_is_the_lower_bound_of_the_projection():
  """cg.dualproj(preference=p) updates by Jᵀv*(p/Σp) (numpy reference), not the mean's."""
  k, m = 4, 7
  preference = np.array([4.0, 1.0, 2.0, 3.0])
  p = preference / preference.sum()
  Js = np.stack([_common.random_J(seed, k=k, m=m) for seed in SEEDS])
  tx = cg.dualproj(preference=preference, num_tasks=k)   # its weighting is dualproj_weighting

  @jax.jit
  @jax.vmap
  def run(J):
    # The state follows the parameters' dtype: float64 ones keep the solve in float64.
    updates, state = tx.update({"w": J}, tx.init({"w": J[0]}))
    return updates["w"], state.weights

  ds, ws = _common.x64(run, Js)
  for J, d, w in zip(Js, ds, ws):
    p_hat = ref.dual_cone_regularized_gram(J @ J.T)
    expected = ref.dual_cone_qp_by_enumeration(p_hat, p)
    uniform = ref.dual_cone_qp_by_enumeration(p_hat, np.full(k, 1.0 / k))
    scale = np.max(np.abs(expected))
    # Observed ≤ 2e-15 relative (float64); the mean's weights are ≥ 0.24·max|w| away.
    np.testing.assert_allclose(w / scale, expected / scale, atol=1e-6, rtol=0)
    np.testing.assert_allclose(d, J.T @ w, rtol=1e-12, atol=1e-12 * np.linalg.norm(d))
    assert np.max(np.abs(expected - uniform)) > 0.05 * scale


def test_options_are_validated():
  with pytest.raises(ValueError, match="warm_start"):
    cg.dualproj(warm_start="yes")
  with pytest.raises(ValueError, match="preference"):
    cg.dualproj(preference=[[1.0]])
  with pytest.raises(ValueError, match="norm_eps"):
    cg.dualproj(norm_eps=-1.0)


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.dualproj)


def test_optax_contract():
  _common.check_optax_contract(cg.dualproj)


_warm_and_cold = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.dualproj, Js))


def test_warm_start_agrees_with_cold_solve_in_fewer_newton_steps():
  # float32: a gap within tol = 1e-6 on a QP whose curvature is only 2·reg_eps leaves v
  # uncertain to ~1e-3 whichever start (the cold float32 solve is that far from float64 too).
  _common.check_warm_start(_warm_and_cold, rtol32=5e-3, rtol64=1e-8)
