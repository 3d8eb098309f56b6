"""fairgrad: the α-fair fixed point G w = w^(−1/α) for several α, contract."""

import jax
import numpy as np
import pytest
import scipy.optimize

import _common
import conicgrad_jax as cg
from conicgrad_jax.methods import fairgrad as fairgrad_m
from conicgrad_jax.solvers import power_condition

SEEDS = range(4)
ALPHAS = (1.0, 2.0, 4.0)


def test_published_values():
  """torchjd has no FairGrad: the reference solves G w = 1/w (α = 1) with scipy's fsolve."""
  J = _common.J_PUBLISHED
  G = J @ J.T
  w = scipy.optimize.fsolve(lambda w: G @ w - 1.0 / w, np.full(2, 0.1), xtol=1e-12)
  np.testing.assert_allclose(G @ w, 1.0 / w, rtol=1e-9)
  _common.check_published(cg.fairgrad, J.T @ w, alpha=1.0)


@jax.jit
@jax.vmap
def _weigh_all_alphas(G):
  return [fairgrad_m.fairgrad_weighting(G, a)[0] for a in ALPHAS]


def test_fairgrad_fixed_points():
  Js = [_common.random_J(seed, k=4, m=9) for seed in SEEDS]
  Gs = np.stack([J @ J.T for J in Js])
  per_alpha = _common.x64(_weigh_all_alphas, Gs)
  for i, G in enumerate(Gs):
    # The documented regularisation: G + RIDGE·‖G‖_F·I (a rank-deficient G has no solution).
    G_reg = G + power_condition.RIDGE * np.linalg.norm(G) * np.eye(4)
    for a, ws in zip(ALPHAS, per_alpha):
      w = ws[i]
      np.testing.assert_allclose(G_reg @ w, w ** (-1.0 / a), rtol=1e-6)


def test_options_are_validated():
  with pytest.raises(ValueError, match="warm_start"):
    cg.fairgrad(warm_start="yes")
  with pytest.raises(ValueError, match="alpha"):
    cg.fairgrad(0.0)
  with pytest.raises(ValueError, match="max_norm"):
    cg.fairgrad(max_norm=-1.0)


def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.fairgrad)


def test_optax_contract():
  _common.check_optax_contract(cg.fairgrad)


_warm_and_cold = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.fairgrad, Js, warm_start=True))


def test_warm_start_agrees_with_cold_solve_in_fewer_newton_steps():
  cold = _common.check_warm_start(_warm_and_cold, rtol32=1e-4, rtol64=1e-8)
  # float32 cannot bring Newton's decrement² to 1e-12; it stops at its rounding floor
  # instead of running to max_iter = 100.
  assert np.all(cold[np.float32] < 30)
