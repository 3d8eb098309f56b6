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
