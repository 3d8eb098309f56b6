"""mgda: the min-norm point of the task gradients' convex hull (KKT, cvxpy), normalisations, contract."""

import itertools

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
import reference_solvers as ref
from conicgrad_jax.methods import mgda as mgda_m

SEEDS = range(5)


def test_published_values():
  _common.check_published(cg.mgda, [0.0, 1.0, 1.0])


def test_mgda_kkt_and_cvxpy():
  Js = [_common.random_J(seed) for seed in SEEDS]
  Gs = np.stack([J @ J.T for J in Js])
  ws, _ = _common.x64(jax.jit(jax.vmap(mgda_m.mgda_weighting)), Gs)
  for seed, J, G, w in zip(SEEDS, Js, Gs, ws):
    grad = G @ w
    assert np.all(w >= -1e-10) and w.sum() == pytest.approx(1.0), seed
    assert np.all(grad >= w @ grad - 1e-8), seed                     # KKT: (Gw)_i ≥ wᵀGw
    assert np.all(np.abs(grad - w @ grad)[w > 1e-6] <= 1e-8), seed   # with equality on the support
    x = cp.Variable(J.shape[0], nonneg=True)
    ref.solve_tight(cp.Problem(cp.Minimize(cp.sum_squares(J.T @ x)), [cp.sum(x) == 1]))
    np.testing.assert_allclose(J.T @ w, J.T @ x.value, atol=1e-6)


@jax.jit
def _normalised_and_reference(G, losses, G_refs):
  """The three normalisations of G, and plain MGDA on the matching normalised Gram matrices."""
  ws = [mgda_m.mgda_weighting(G, losses, normalization=n)[0] for n in ("l2", "loss", "loss+")]
  refs, _ = jax.vmap(mgda_m.mgda_weighting)(G_refs)
  return jnp.stack(ws), refs


def test_mgda_normalizations_use_losses():
  J = _common.random_J(1)
  losses = np.array([1.0, 2.0, 0.5, 3.0])
  norms = np.linalg.norm(J, axis=1)
  scaled = [J / n[:, None] for n in (norms, losses, losses * norms)]
  ws, w_refs = _common.x64(_normalised_and_reference, J @ J.T, losses,
                           np.stack([Jn @ Jn.T for Jn in scaled]))
  np.testing.assert_allclose(ws, w_refs, atol=1e-6)
  with pytest.raises(ValueError, match="losses"):
    mgda_m.mgda_weighting(jnp.eye(2), None, normalization="loss")
  # Through the transformation: the weights of the min-norm point of the g_i/n_i,
  # applied to the raw gradients (intel-isl's MGDA-UB code), from cvxpy.
  for normalization, n in (("loss", losses), ("loss+", losses * norms)):
    x = cp.Variable(J.shape[0], nonneg=True)
    ref.solve_tight(cp.Problem(cp.Minimize(cp.sum_squares((J / n[:, None]).T @ x)),
                               [cp.sum(x) == 1]))
    tx = cg.mgda(normalization)
    with jax.enable_x64(True):
      u, _ = jax.jit(tx.update)({"w": jnp.asarray(J)}, tx.init(None),
                                losses=jnp.asarray(losses))
      u = np.asarray(u["w"])
    np.testing.assert_allclose(u, J.T @ x.value, atol=1e-6 * np.abs(J.T @ x.value).max())
  # Ignoring the losses would give plain MGDA's update, which is far from this one.
  assert np.abs(J.T @ x.value - ref.mgda_direction(J)).max() > 1e-2 * np.abs(J.T @ x.value).max()
  tx = cg.mgda("loss")
  g = {"w": jnp.asarray(J, jnp.float32)}
  update = jax.jit(tx.update)
  with pytest.raises(ValueError, match="losses"):      # "loss" cannot run without them
    update(g, tx.init(None))
  with pytest.raises(ValueError, match=r"`losses` has shape \(3,\); expected \(4,\)"):
    update(g, tx.init(None), losses=jnp.ones(3))


def test_options_are_validated():
  with pytest.raises(ValueError, match="normalization"):
    cg.mgda("bogus")
  with pytest.raises(ValueError, match="max_iter"):
    cg.mgda(max_iter=0)
  with pytest.raises(ValueError, match="warm_start"):
    cg.mgda(warm_start=1)


def test_degenerate_inputs_give_finite_updates():
  # Runs without losses: only the "loss"/"loss+" normalisations need them.
  assert not cg.methods()["mgda"].needs_losses
  _common.check_degenerate_inputs(cg.mgda)


def test_optax_contract():
  _common.check_optax_contract(cg.mgda)


_warm_and_cold = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.mgda, Js))


def test_warm_start_agrees_with_cold_solve_in_fewer_newton_steps():
  # float32: warm and cold can end on different faces' solutions, equal to rounding
  # (observed ≤ 1.2e-4 of the largest weight).
  _common.check_warm_start(_warm_and_cold, rtol32=5e-4, rtol64=1e-8)


def _min_norm_weights_by_enumeration(G):
  """argmin_{w∈Δ} wᵀGw exactly: the face whose KKT conditions hold (w ≥ 0 on it, and
  (Gw)_i ≥ wᵀGw off it), each face's system solved by least squares in float64."""
  k = len(G)
  for size in range(1, k + 1):
    for face in itertools.combinations(range(k), size):
      face = list(face)
      kkt = np.zeros((size + 1, size + 1))
      kkt[:size, :size], kkt[:size, size], kkt[size, :size] = G[np.ix_(face, face)], 1.0, 1.0
      w = np.zeros(k)
      w[face] = np.linalg.lstsq(kkt, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
      if w.min() >= -1e-12 and np.all(G @ w >= w @ G @ w - 1e-12 * np.abs(G).max()):
        return w
  raise AssertionError("no face satisfies the KKT conditions")


@pytest.mark.parametrize("seed", [0, 3] + [pytest.param(s, marks=pytest.mark.slow)
                                           for s in (1, 2, 4, 5)])
def test_float32_min_norm_point_far_below_the_largest_gradient(seed):
  """Gradient norms 10, 5, 2 and 0.01: ‖d*‖ ≈ 1e-3 max‖g_i‖, with tasks off the optimal face.
  The barrier stops at an absolute gap that leaves its face ambiguous there (its answer was
  up to 49 % off in d); the active-set steps give the exact face: the float32 update is
  within 2e-3 of the exact one (observed ≤ 3.2e-4)."""
  rng = np.random.default_rng(seed)
  unit = rng.normal(size=(4, 20))
  J = unit / np.linalg.norm(unit, axis=1, keepdims=True) * np.array([[10.0], [5.0], [2.0], [0.01]])
  d = J.T @ _min_norm_weights_by_enumeration(J @ J.T)
  tx = cg.mgda()
  u, _ = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  assert np.linalg.norm(np.asarray(u["w"], np.float64) - d) <= 2e-3 * np.linalg.norm(d)
