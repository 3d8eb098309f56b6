"""sdmgrad: the inner simplex problem against cvxpy, the cross-batch Gram matrix."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
import _common
import reference_solvers as ref


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
  # Observed: 5e-7 and 6e-7 after 3,000 projected-gradient steps in float32.
  np.testing.assert_allclose(np.asarray(state.simplex_weights), w.value, atol=2e-5)
  np.testing.assert_allclose(np.asarray(u["w"]), J.T @ ((w.value + lam / 3) / (1 + lam)),
                             atol=2e-5)


def test_two_further_batches_give_the_fixed_point_of_their_cross_gram():
  """With weight_grads = (ξ1, ξ2) the simplex weights are the fixed point of
  w ← Π_Δ(w − lr(Mw + λb)) for M = J_ξ1 J_ξ2ᵀ/s² (s = mean_i (M_ii + 1e-4)^½,
  b = row means of M), built here in numpy: every task with positive weight has
  the smallest (Mw + λb)_i (the variational inequality of the fixed point).
  M ≠ J_ξ1 J_ξ1ᵀ here, so a solver that used one batch twice would fail.
  """
  rng = np.random.default_rng(5)
  J = _random_J(2, k=3, m=6)
  xi1 = J + 0.3 * rng.standard_normal(J.shape)
  xi2 = J + 0.3 * rng.standard_normal(J.shape)
  lam = 0.3
  tx = cg.sdmgrad(lamda=lam, lr=0.05, niter=3000, num_tasks=3)
  as_tree = lambda x: {"w": jnp.asarray(x, jnp.float32)}
  _, state = jax.jit(tx.update)(as_tree(J), tx.init(None),
                                weight_grads=(as_tree(xi1), as_tree(xi2)))
  w = np.asarray(state.simplex_weights, np.float64)

  def spread(M):
    M = M / np.mean(np.sqrt(np.diag(M) + 1e-4)) ** 2
    grad = M @ w + lam * M.mean(1)
    return np.max(grad[w > 1e-4]) - np.min(grad)

  assert spread(xi1 @ xi2.T) <= 1e-4
  assert spread(xi1 @ xi1.T) > 1e-2
  assert np.sum(w > 1e-4) >= 2                       # the check above is not vacuous


def test_options_are_validated():
  with pytest.raises(ValueError, match="lamda"):
    cg.sdmgrad(-0.1)
  with pytest.raises(ValueError, match="niter"):
    cg.sdmgrad(niter=0)
  with pytest.raises(ValueError, match="lr"):
    cg.sdmgrad(lr=0.0)


def _sdmgrad_reference(Js, lam=0.3, niter=20, lr=10.0):
  """The official sdmgrad() inner loop, transcribed: M normalised by the mean gradient norm,
  niter projected SGD steps with momentum 0.5 (a fresh buffer each call) from the previous
  call's w, the update (Jᵀw + λ ḡ)/(1 + λ)."""
  k = Js[0].shape[0]
  w, outs = np.full(k, 1.0 / k), []
  for J in Js:
    M = J @ J.T
    M = M / np.mean(np.sqrt(np.diag(M) + 1e-4)) ** 2
    b = M.mean(1)
    buf = np.zeros(k)
    for _ in range(niter):
      buf = 0.5 * buf + M @ w + lam * b
      w = _common.project_simplex(w - lr * buf)
    outs.append((J.T @ w + lam * J.mean(0)) / (1 + lam))
  return outs


def test_default_options_follow_the_reference_loop_over_steps():
  """Default lr = 10, niter = 20, λ = 0.3, warm-started across four updates."""
  rng = np.random.default_rng(0)
  Js = [rng.standard_normal((3, 5)) * np.array([[1.0], [0.5], [2.0]]) for _ in range(4)]
  tx = cg.sdmgrad(num_tasks=3)
  state, update = tx.init(None), jax.jit(tx.update)
  for J, expected in zip(Js, _sdmgrad_reference(Js)):
    u, state = update({"w": jnp.asarray(J, jnp.float32)}, state)
    np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-4, atol=1e-5)
