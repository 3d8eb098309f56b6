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


def test_options_are_validated():
  with pytest.raises(ValueError, match="scale_mode"):
    cg.aligned_mtl(scale_mode="max")
  with pytest.raises(ValueError, match="preference"):
    cg.aligned_mtl(preference=[-1.0, 1.0])


def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.aligned_mtl)


def test_optax_contract():
  _common.check_optax_contract(cg.aligned_mtl)
