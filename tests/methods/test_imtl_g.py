"""imtl_g: equal projections of the update on every unit task gradient, contract."""

import jax
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
from conicgrad_jax.methods import imtl_g as imtl_g_m

SEEDS = range(4)


def test_published_values():
  _common.check_published(cg.imtl_g, [0.0767, 1.0, 1.0])


def test_imtl_g_equal_projections():
  Js = [_common.random_J(seed) for seed in SEEDS]
  ws, info = _common.x64(jax.jit(jax.vmap(imtl_g_m.imtl_g_weighting)),
                         np.stack([J @ J.T for J in Js]))
  assert np.all(info.iterations == 0)                  # closed form
  for J, w in zip(Js, ws):
    d = J.T @ w
    proj = (J / np.linalg.norm(J, axis=1, keepdims=True)) @ d
    np.testing.assert_allclose(proj, proj[0], rtol=1e-8)
    assert w.sum() == pytest.approx(1.0)


def test_ill_conditioned_gradients_match_the_reference_solve():
  """Nearly parallel gradients (cond(J) ≈ 100): the reference's (K−1)×(K−1) solve.

  Liu et al.'s code solves for w_2..K from u_1 − u_i (u_i = g_i/‖g_i‖):
  w_2:K = (g_1 Uᵀ)(D Uᵀ)⁻¹ with D = g_1 − g_i and U = u_1 − u_i (rows i = 2..K),
  w_1 = 1 − Σ w_2:K; the projections are then equal to rounding.
  """
  J = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.02, 0.0, 0.0], [-0.3, 0.5, 1.0, 0.0]])
  assert np.linalg.cond(J) > 50
  w, _ = _common.x64(jax.jit(imtl_g_m.imtl_g_weighting), J @ J.T)
  units = J / np.linalg.norm(J, axis=1, keepdims=True)
  D, U = J[0] - J[1:], units[0] - units[1:]
  rest = (J[0] @ U.T) @ np.linalg.inv(D @ U.T)
  expected = np.concatenate([[1.0 - rest.sum()], rest])
  np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-10)
  proj = units @ (J.T @ w)
  np.testing.assert_allclose(proj, proj[0], rtol=1e-8)


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.imtl_g)


def test_optax_contract():
  _common.check_optax_contract(cg.imtl_g)
