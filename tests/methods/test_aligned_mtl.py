"""aligned_mtl: the aligned task gradients are orthogonal with equal norms (numpy reference), contract."""

import jax
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
from conicgrad_jax.methods import aligned_mtl as aligned_mtl_m


def test_published_values():
  _common.check_published(cg.aligned_mtl, [0.2133, 0.9673, 0.9673])


def test_aligned_mtl_whitens():
  J = _common.random_J(3, k=3, m=6)
  G = J @ J.T
  vals, vecs = np.linalg.eigh(G)
  B = np.sqrt(vals.min()) * vecs @ np.diag(vals ** -0.5) @ vecs.T
  aligned = B @ J           # the aligned task gradients (rows) are orthogonal with equal norms
  np.testing.assert_allclose(aligned @ aligned.T, vals.min() * np.eye(3), atol=1e-8)
  w, _ = _common.x64(jax.jit(aligned_mtl_m.aligned_mtl_weighting), G)
  np.testing.assert_allclose(w, B @ np.full(3, 1 / 3), atol=1e-8)


def _aligned_mtl_reference(G, preference, scale_mode, eps=np.finfo(np.float32).eps):
  """α = σ·V Λ^{−½} Vᵀ p on the eigenpairs above max(λ)·K·ε_float32, in numpy.

  σ² as SamsungLabs/MTL's ProcrustesSolver: the smallest kept eigenvalue ("min"),
  ``torch.median`` of them ("median": the lower middle value for an even count) or their
  mean ("rmse").
  """
  vals, vecs = np.linalg.eigh(G)
  keep = vals > vals.max() * len(G) * eps
  kept = np.sort(vals[keep])
  sigma2 = {"min": kept[0], "median": kept[(len(kept) - 1) // 2], "rmse": kept.mean()}[scale_mode]
  p = np.asarray(preference, np.float64) / np.sum(preference)
  basis = vecs[:, keep]
  return np.sqrt(sigma2) * basis @ ((basis.T @ p) / np.sqrt(vals[keep]))


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_preference_and_scale_mode_match_the_reference(scale_mode):
  """cg.aligned_mtl(preference=p, scale_mode=...) updates by Jᵀα of the numpy reference."""
  k, m = 4, 7
  preference = np.array([4.0, 1.0, 2.0, 3.0])
  rank_two = _common.random_J(9, k=k, m=2) @ _common.random_J(10, k=2, m=m)
  Js = np.stack([_common.random_J(seed, k=k, m=m) for seed in range(3)] + [rank_two])
  tx = cg.aligned_mtl(preference=preference, scale_mode=scale_mode, num_tasks=k)
  ds = _common.updates_in_float64(tx, Js)
  for J, d in zip(Js, ds):
    G = J @ J.T
    expected = J.T @ _aligned_mtl_reference(G, preference, scale_mode)
    scale = np.linalg.norm(expected)
    # Observed ≤ 3e-15 relative to ‖d‖ (float64).
    np.testing.assert_allclose(d / scale, expected / scale, atol=1e-9, rtol=0)
    if np.linalg.matrix_rank(J) < k:
      continue
    # Neither the preference nor σ² may be ignored: both move the reference by ≥ 10 %.
    assert np.linalg.norm(expected - J.T @ _aligned_mtl_reference(G, np.ones(k), scale_mode)) > (
        0.1 * scale)
    if scale_mode != "min":
      assert np.linalg.norm(expected - J.T @ _aligned_mtl_reference(G, preference, "min")) > (
          0.1 * scale)


def test_float64_drops_the_eigenvalues_float32_cannot_resolve_as_the_reference():
  """The kept eigenvalues exceed max(λ)·K·ε_float32 in every dtype (the reference's rule).

  J has singular values 1, 1e-2, 1e-5, so G's eigenvalue 1e-10 lies below that cut
  (3.6e-7 at K = 3) but far above float64's: kept, it would become σ² and change the
  update completely.
  """
  rng = np.random.default_rng(3)
  left = np.linalg.qr(rng.standard_normal((3, 3)))[0]
  right = np.linalg.qr(rng.standard_normal((6, 3)))[0]
  J = left @ np.diag([1.0, 1e-2, 1e-5]) @ right.T
  d = _common.updates_in_float64(cg.aligned_mtl(num_tasks=3), J[None])[0]
  G = J @ J.T
  expected = J.T @ _aligned_mtl_reference(G, np.ones(3), "min")
  with_float64_cut = J.T @ _aligned_mtl_reference(G, np.ones(3), "min", np.finfo(float).eps)
  assert np.linalg.norm(with_float64_cut - expected) > 0.5 * np.linalg.norm(expected)
  np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-9 * np.linalg.norm(expected))


def test_options_are_validated():
  with pytest.raises(ValueError, match="scale_mode"):
    cg.aligned_mtl(scale_mode="max")
  with pytest.raises(ValueError, match="preference"):
    cg.aligned_mtl(preference=[-1.0, 1.0])


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.aligned_mtl)


def test_optax_contract():
  _common.check_optax_contract(cg.aligned_mtl)
