"""Trimmed mean against sorting in numpy, its kept-share weights, clipping, and torchjd."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
import torchjd_reference as tjd


def _reference(x, t):
  k = x.shape[0]
  return np.sort(x, axis=0)[t:k - t].mean(axis=0)


@pytest.mark.parametrize("t", [0, 1, 2])
def test_matches_numpy_on_a_pytree(t):
  rng = np.random.default_rng(t)
  g = {"a": rng.standard_normal((6, 3, 2)), "b": rng.standard_normal((6, 4))}
  tx = cg.trimmed_mean(t)
  u, state = jax.jit(tx.update)(jax.tree_util.tree_map(jnp.asarray, g), tx.init(None))
  for name in g:
    np.testing.assert_allclose(np.asarray(u[name]), _reference(g[name], t), rtol=1e-5,
                               atol=1e-6)
  w = np.asarray(state.weights)
  assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
  if t == 0:
    np.testing.assert_allclose(w, 1.0 / 6)
  # Each task's share: the fraction of the 10 coordinates where it was kept, over K − 2t.
  kept = sum(((np.argsort(np.argsort(x, axis=0, kind="stable"), axis=0) >= t)
              & (np.argsort(np.argsort(x, axis=0, kind="stable"), axis=0) < 6 - t))
             .reshape(6, -1).sum(1) for x in g.values())
  np.testing.assert_allclose(w, kept / (10 * (6 - 2 * t)), rtol=1e-6)


def test_outlier_coordinates_are_dropped_and_small_k_is_the_mean():
  J = np.array([[1.0, 0.0], [2.0, 1e6], [-1e6, 2.0], [3.0, 1.0]])
  tx = cg.trimmed_mean(1)
  u, _ = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), [1.5, 1.5])
  J2 = J[:2]                                        # K = 2 < 2t + 1: t clipped to 0
  u, _ = tx.update({"w": jnp.asarray(J2, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), J2.mean(0))
  with pytest.raises(ValueError, match="trim_number"):
    cg.trimmed_mean(-1)


@pytest.mark.parametrize("t", [1, 2])
def test_matches_torchjd(t):
  torch, torchjd = tjd.require()
  from torchjd.aggregation import TrimmedMean
  rng = np.random.default_rng(t)
  J = tjd.random_jacobian(rng, 7, 11)
  tx = cg.trimmed_mean(t)
  u, _ = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  ref = TrimmedMean(trim_number=t)(torch.tensor(J)).numpy()
  assert tjd.cosine(u["w"], ref) >= 0.999
  np.testing.assert_allclose(np.asarray(u["w"]), ref, rtol=1e-5, atol=1e-6)


def test_torchjd_published_values():
  """torchjd's test values: TrimmedMean(trim_number=1) on its J_TrimmedMean."""
  J = np.array([[1e11, 3.0], [1.0, -1e11], [-1e10, 1e10], [2.0, 2.0]])
  tx = cg.trimmed_mean(1)
  u, _ = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), [1.5, 2.5], rtol=1e-6)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_nonfinite_gradient_skips_the_step_although_trimming_would_hide_it(bad):
  """An Inf or NaN entry is trimmed away from the mean, so the update alone looks fine:
  the step must still be skipped (zero update, state kept, ``nonfinite_steps`` + 1)."""
  rng = np.random.default_rng(0)
  g = {"a": rng.standard_normal((5, 3)), "b": rng.standard_normal((5, 4))}
  tx = cg.trimmed_mean(1)
  step = jax.jit(tx.update)
  _, state = step(jax.tree_util.tree_map(jnp.asarray, g), tx.init(None))
  g["b"][2, 1] = bad
  bad_grads = jax.tree_util.tree_map(jnp.asarray, g)
  u, new_state = step(bad_grads, state)
  for leaf in jax.tree_util.tree_leaves(u):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)
  assert int(new_state.nonfinite_steps) == 1
  np.testing.assert_array_equal(np.asarray(new_state.weights), np.asarray(state.weights))


def test_default_trims_one_value_from_each_end():
  rng = np.random.default_rng(4)
  J = rng.standard_normal((7, 5))
  tx = cg.trimmed_mean()
  u, _ = tx.update({"w": jnp.asarray(J)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), _reference(J, 1), rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(_reference(J, 1) - _reference(J, 2))) > 0.05
