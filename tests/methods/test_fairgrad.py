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


def _fairgrad_reference(J, alpha, max_norm):
  """d = Jᵀw, G_reg w = w^(−1/α) solved by scipy's root, then scaled down to ‖d‖ ≤ max_norm."""
  G = J @ J.T
  G_reg = G + 1e-6 * np.linalg.norm(G) * np.eye(len(G))   # the documented regularisation
  w = scipy.optimize.root(lambda w: G_reg @ w - w ** (-1.0 / alpha), np.ones(len(G)),
                          tol=1e-14).x
  np.testing.assert_allclose(G_reg @ w, w ** (-1.0 / alpha), rtol=1e-12)
  d = J.T @ w
  return d * min(1.0, max_norm / np.linalg.norm(d))


def test_max_norm_clips_only_longer_updates():
  """cg.fairgrad(max_norm=c) scales d down to ‖d‖ = c when longer and leaves shorter ones alone."""
  max_norm = 3.0
  # Unclipped ‖d‖: 2.09, 4.49, 2.49, 5.36 (the fair update grows as the gradients shrink).
  Js = np.stack([scale * _common.random_J(seed, k=4, m=9) for seed in (0, 1) for scale in (1, 0.1)])
  tx = cg.fairgrad(2.0, max_norm=max_norm, num_tasks=4)
  ds = _common.updates_in_float64(tx, Js)
  clipped = 0
  for J, d in zip(Js, ds):
    expected = _fairgrad_reference(J, 2.0, max_norm)
    unclipped = _fairgrad_reference(J, 2.0, np.inf)
    clipped += np.linalg.norm(unclipped) > 1.2 * max_norm
    # Observed ≤ 3e-15 relative (float64).
    np.testing.assert_allclose(d, expected, rtol=1e-7, atol=1e-9 * np.linalg.norm(expected))
  assert clipped == 2


def test_options_are_validated():
  with pytest.raises(ValueError, match="warm_start"):
    cg.fairgrad(warm_start="yes")
  with pytest.raises(ValueError, match="alpha"):
    cg.fairgrad(0.0)
  with pytest.raises(ValueError, match="max_norm"):
    cg.fairgrad(max_norm=-1.0)


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
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
