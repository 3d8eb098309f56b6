"""MTAC-CA: tracks the regularised min-norm point, double sampling, simplex, scale, options."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
import reference_solvers as ref


def _J(seed, k=4, m=7):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m))
  J[1:] -= 0.8 * J[0]                      # conflicting tasks
  return J


def _regularised_min_norm(J, rho):
  G = J @ J.T
  G = G / np.linalg.norm(G)
  w = cp.Variable(J.shape[0], nonneg=True)
  ref.solve_tight(cp.Problem(cp.Minimize(0.5 * cp.quad_form(w, cp.psd_wrap(G))
                                         + 0.5 * rho * cp.sum_squares(w)), [cp.sum(w) == 1]))
  return w.value


_TRACK = cg.mtac_ca(0.5, rho=0.05, steps=4000, num_tasks=4)
_track = jax.jit(jax.vmap(lambda J: _TRACK.update({"w": J}, _TRACK.init(None))))
_ONE = cg.mtac_ca(0.5, rho=0.05, num_tasks=4)
_one = jax.jit(_ONE.update)


def test_weights_track_the_regularised_min_norm_point():
  """Many steps on a fixed G reach argmin_Δ ½λᵀĜλ + ½ρ‖λ‖² (cvxpy), and d = Jᵀλ."""
  Js = np.stack([_J(s) for s in range(3)])
  u, state = _track(jnp.asarray(Js, jnp.float32))
  for J, w, d in zip(Js, np.asarray(state.weights), np.asarray(u["w"])):
    np.testing.assert_allclose(w, _regularised_min_norm(J, 0.05), atol=2e-4)
    np.testing.assert_allclose(d, J.T @ w, atol=1e-5)


def test_one_step_per_update_from_the_stored_weights():
  J = _J(5)
  g = {"w": jnp.asarray(J, jnp.float32)}
  state = _ONE.init(None)
  w = np.full(4, 0.25)
  G = J @ J.T
  G = G / np.linalg.norm(G)
  for _ in range(3):
    u, state = _one(g, state)
    w = _common.project_simplex(w - 0.5 * (G @ w + 0.05 * w))
    np.testing.assert_allclose(np.asarray(state.weights), w, atol=1e-5)
    np.testing.assert_allclose(np.asarray(u["w"]), J.T @ w, atol=1e-5)   # λ_{t+1} combines
  assert int(state.step) == 3


def test_double_sampling_steps_on_the_cross_gram_and_combines_the_update_gradients():
  J, J1, J2 = _J(1), _J(2), _J(3)
  tx = cg.mtac_ca(0.3, rho=0.1)
  u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None),
                       weight_grads=({"w": jnp.asarray(J1, jnp.float32)},
                                     {"w": jnp.asarray(J2, jnp.float32)}))
  M = J1 @ J2.T
  M = M / np.linalg.norm(M)
  w0 = np.full(4, 0.25)
  w = _common.project_simplex(w0 - 0.3 * (M @ w0 + 0.1 * w0))
  np.testing.assert_allclose(np.asarray(state.weights), w, atol=1e-5)
  np.testing.assert_allclose(np.asarray(u["w"]), J.T @ w, atol=1e-5)


def test_equals_gsmgrad_without_warm_start():
  """The registry's note: steps=1 without weight_grads is gsmgrad(warm_start_steps=1)."""
  g = {"w": jnp.asarray(_J(9), jnp.float32)}
  a, b = cg.mtac_ca(0.5, rho=0.01), cg.gsmgrad(lr=0.5, rho=0.01, warm_start_steps=1)
  sa, sb = a.init(None), b.init(None)
  for _ in range(3):
    ua, sa = a.update(g, sa)
    ub, sb = b.update(g, sb)
  np.testing.assert_allclose(np.asarray(ua["w"]), np.asarray(ub["w"]), atol=1e-6)


_simplex = jax.jit(jax.vmap(lambda G, w: cg.mtac_ca_weighting(G, w, lr=0.9, rho=0.01, steps=3)))


def test_weights_stay_on_the_simplex_and_are_scale_free():
  rng = np.random.default_rng(0)
  Js = rng.standard_normal((64, 5, 6))
  G = np.einsum("bkm,blm->bkl", Js, Js)
  w0 = rng.dirichlet(np.ones(5), size=64)
  w, _ = _simplex(jnp.asarray(G, jnp.float32), jnp.asarray(w0, jnp.float32))
  w = np.asarray(w)
  assert np.all(w >= 0) and np.allclose(w.sum(1), 1.0, atol=1e-5)
  # G from 1e-30 to 1e30 (gradients 1e±15): squaring G itself over- or underflows.
  for scale in (1e-30, 1e-12, 1e6, 1e30):
    w_scaled, _ = _simplex(jnp.asarray(scale * G, jnp.float32), jnp.asarray(w0, jnp.float32))
    np.testing.assert_allclose(np.asarray(w_scaled), w, atol=1e-5)


def test_options_are_validated():
  with pytest.raises(ValueError, match="lr"):
    cg.mtac_ca(0.0)
  with pytest.raises(ValueError, match="rho"):
    cg.mtac_ca(rho=-1.0)
  with pytest.raises(ValueError, match="steps"):
    cg.mtac_ca(steps=0)
  tx = cg.mtac_ca()
  g = {"w": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match="weight_grads"):
    tx.update(g, tx.init(None), weight_grads=(g,))
  assert "mtac_ca" in cg.methods() and cg.methods()["mtac_ca"].stateful
