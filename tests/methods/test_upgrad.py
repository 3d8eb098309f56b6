"""upgrad: every task's directional derivative along the update is ≥ 0 (up to reg_eps), contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
from conicgrad_jax.methods import upgrad as upgrad_m
from conicgrad_jax.solvers import dual_cone

SEEDS = range(4)


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
    assert np.all(J @ d >= -dual_cone.REG_EPS * np.trace(G) * np.abs(w) - 1e-9)


@pytest.mark.parametrize("k", [3, 5, 8])
def test_each_projection_satisfies_the_kkt_conditions_of_its_qp(k):
  """Every row v_i = v*(p_i e_i) solves min vᵀP̂v s.t. v ≥ p_i e_i, and w = Σ_i v_i.

  P̂ = G/trace(G) + reg_eps·I is built here in numpy. Feasibility, P̂v ≥ 0 and
  complementarity are the KKT conditions of this convex QP, so they prove that
  each row is its minimiser (with any positive multiple of the right v, or a
  zero update, complementarity or feasibility fails).
  """
  Js = [_common.random_J(seed, k=k, m=k + 3) for seed in SEEDS]
  Gs = np.stack([J @ J.T for J in Js])
  vs, _ = _common.x64(jax.jit(jax.vmap(upgrad_m.upgrad_projections)), Gs)
  ws, _ = _common.x64(jax.jit(jax.vmap(upgrad_m.upgrad_weighting)), Gs)
  for G, v, w in zip(Gs, vs, ws):
    p_hat = G / np.trace(G) + dual_cone.REG_EPS * np.eye(k)
    lower = np.eye(k) / k
    grad = v @ p_hat                       # row i: P̂ v_i
    assert np.all(v >= lower - 1e-12)
    assert np.all(grad >= -1e-10)
    assert np.all(np.abs(grad * (v - lower)) <= 1e-9)
    assert np.all(np.diag(grad) > 0)     # each gradient's own coefficient is active
    np.testing.assert_allclose(w, v.sum(0), rtol=1e-12, atol=1e-14)


def test_options_are_validated():
  with pytest.raises(ValueError, match="warm_start"):
    cg.upgrad(warm_start="yes")
  with pytest.raises(ValueError, match="preference"):
    cg.upgrad(preference=[1.0, -1.0])
  with pytest.raises(ValueError, match="reg_eps"):
    cg.upgrad(reg_eps=-1.0)


def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.upgrad)


def test_optax_contract():
  _common.check_optax_contract(cg.upgrad)


_warm_and_cold = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.upgrad, Js))


def test_warm_start_agrees_with_cold_solve_in_fewer_newton_steps():
  # float32: a gap within tol = 1e-6 on a QP whose curvature is only 2·reg_eps leaves v
  # uncertain to ~1e-3 whichever start (the cold float32 solve is that far from float64 too).
  _common.check_warm_start(_warm_and_cold, rtol32=5e-3, rtol64=1e-8)


def test_warm_start_from_unrelated_problems_is_certified_relative_to_the_objective():
  """K = 7, float32, every step's gradients unrelated to the last. The QPs' optimal
  values are small (about reg_eps/K²), so an absolute gap of tol once certified a
  previous solution's face with weights 0.75 % off; the gap is now relative."""
  rng = np.random.default_rng(3)
  jacobians = jnp.asarray(rng.standard_normal((1, 8, 7, 9)), jnp.float32)
  (w_warm, w_cold), _ = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.upgrad, Js))(jacobians)
  scale = np.max(np.abs(np.asarray(w_cold)), axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(w_warm) / scale, np.asarray(w_cold) / scale, atol=1e-5)
