"""sdmgrad: the inner simplex problem against cvxpy, the cross-batch Gram matrix."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
import reference_solvers as ref
from conicgrad_jax.methods import sdmgrad as sdmgrad_m


def _random_J(seed, k=4, m=7):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m))
  J[1:] -= 0.8 * J[0]
  return J


def test_sdmgrad_inner_problem_and_cross_batch_gram():
  J = _random_J(2, k=3, m=6)
  lam = 0.3
  tx = cg.sdmgrad(lamda=lam, lr=0.05, niter=3000, num_tasks=3)
  update = jax.jit(tx.update)
  u, state = update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  M = J @ J.T
  M = M / np.mean(np.sqrt(np.diag(M) + 1e-4)) ** 2
  b = M.mean(1)
  w = cp.Variable(3, nonneg=True)
  ref.solve_tight(cp.Problem(cp.Minimize(0.5 * cp.quad_form(w, cp.psd_wrap(M)) + lam * b @ w),
                             [cp.sum(w) == 1]))
  np.testing.assert_allclose(np.asarray(state.simplex_weights), w.value, atol=2e-3)
  np.testing.assert_allclose(np.asarray(u["w"]), J.T @ ((w.value + lam / 3) / (1 + lam)),
                             atol=1e-2)
  other = {"w": jnp.asarray(_random_J(9, k=3, m=6), jnp.float32)}
  _, cross = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None),
                                weight_grads=(other, other))
  assert not np.allclose(np.asarray(cross.simplex_weights), np.asarray(state.simplex_weights))


def test_cross_gram_matches_numpy_leaf_by_leaf():
  rng = np.random.default_rng(0)
  a = [rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 5))]
  b = [rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 5))]
  m = sdmgrad_m.cross_gram([jnp.asarray(x, jnp.float32) for x in a],
                           [jnp.asarray(x, jnp.float32) for x in b])
  expected = sum(x.reshape(3, -1) @ y.reshape(3, -1).T for x, y in zip(a, b))
  np.testing.assert_allclose(np.asarray(m), expected, rtol=1e-5, atol=1e-5)
  same = sdmgrad_m.cross_gram([jnp.asarray(x, jnp.float32) for x in a],
                              [jnp.asarray(x, jnp.float32) for x in a])
  np.testing.assert_allclose(np.asarray(same),
                             np.asarray(cg.gram_matrix([jnp.asarray(x, jnp.float32) for x in a])),
                             rtol=1e-6)


def test_options_are_validated():
  with pytest.raises(ValueError, match="lamda"):
    cg.sdmgrad(-0.1)
  with pytest.raises(ValueError, match="niter"):
    cg.sdmgrad(niter=0)
  with pytest.raises(ValueError, match="lr"):
    cg.sdmgrad(lr=0.0)
