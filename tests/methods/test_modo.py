"""MoDo: the projected step on the cross-Gramian of two batches, against numpy and torchjd."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
import torchjd_reference as tjd


def _batches(rng, k=3):
  return [{"enc": rng.standard_normal((k, 4, 2)), "head": rng.standard_normal((k, 3))}
          for _ in range(3)]


def _flat(tree, shared_only=True):
  return np.asarray(tree["enc"]).reshape(tree["enc"].shape[0], -1)


def test_double_sampled_steps_match_numpy():
  rng = np.random.default_rng(0)
  gamma, rho = 0.05, 0.1
  shared = {"enc": True, "head": False}
  params = {"enc": jnp.zeros((4, 2)), "head": jnp.zeros(3)}
  tx = cg.modo(gamma, rho=rho, shared=shared)
  step = jax.jit(tx.update)
  state = tx.init(params)
  lam = np.full(3, 1 / 3)
  for _ in range(4):
    g, b1, b2 = (jax.tree_util.tree_map(jnp.asarray, t) for t in _batches(rng))
    u, state = step(g, state, params, weight_grads=(b1, b2))
    M = _flat(b1) @ _flat(b2).T                       # the head leaves do not enter M
    lam = _common.project_simplex(lam - gamma * (M @ lam + rho * lam))
    np.testing.assert_allclose(np.asarray(state.weights), lam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(u["enc"]).ravel(), lam @ _flat(g), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(u["head"]), np.asarray(g["head"]).sum(0), rtol=1e-6)


def test_single_sampling_tracks_the_regularised_min_norm_weights():
  """Without weight_grads, M = G: the iterates converge to argmin_Δ ½λᵀ(G + ρI)λ (KKT)."""
  J = np.array([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.1, -0.4, 1.5]])
  rho = 0.1
  tx = cg.modo(0.2, rho=rho)
  step = jax.jit(tx.update)
  state = tx.init(None)
  for _ in range(500):
    _, state = step({"w": jnp.asarray(J, jnp.float32)}, state)
  lam = np.asarray(state.weights, np.float64)
  grad = (J @ J.T + rho * np.eye(3)) @ lam
  assert np.all(grad >= lam @ grad - 1e-4)
  assert np.all(np.abs(grad - lam @ grad)[lam > 1e-4] <= 1e-4)


def test_options_are_validated():
  with pytest.raises(ValueError, match="gamma"):
    cg.modo(0.0)
  with pytest.raises(ValueError, match="rho"):
    cg.modo(0.1, rho=-1.0)


def test_matches_torchjd():
  torch, torchjd = tjd.require()
  from torchjd.aggregation import MoDoWeighting
  rng = np.random.default_rng(3)
  ref = MoDoWeighting(gamma=0.05, rho=0.1)
  tx = cg.modo(0.05, rho=0.1)
  step = jax.jit(tx.update)
  state = tx.init(None)
  for _ in range(5):
    J, J1, J2 = (tjd.random_jacobian(rng, 4, 8) for _ in range(3))
    u, state = step({"w": jnp.asarray(J, jnp.float32)}, state,
                    weight_grads=({"w": jnp.asarray(J1, jnp.float32)},
                                  {"w": jnp.asarray(J2, jnp.float32)}))
    lam = ref(torch.tensor(J1 @ J2.T)).numpy()
    np.testing.assert_allclose(np.asarray(state.weights), lam, rtol=1e-4, atol=1e-5)
    assert tjd.cosine(u["w"], lam @ J) >= 0.999
