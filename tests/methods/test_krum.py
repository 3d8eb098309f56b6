"""Krum / Multi-Krum against a brute-force score on the rows, robustness, and torchjd."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods.krum import krum_weighting
import torchjd_reference as tjd


def _reference(J, f, n_selected, squared=False):
  k = J.shape[0]
  d = np.linalg.norm(J[:, None, :] - J[None, :, :], axis=-1) ** (2 if squared else 1)
  scores = [np.sort(np.delete(d[i], i))[:k - f - 2].sum() for i in range(k)]
  w = np.zeros(k)
  w[np.argsort(scores, kind="stable")[:n_selected]] = 1.0 / n_selected
  return w


@pytest.mark.parametrize("f,n_selected", [(0, 1), (1, 1), (1, 3)])
def test_weights_match_brute_force_scores(f, n_selected):
  rng = np.random.default_rng(f + 10 * n_selected)
  Js = rng.standard_normal((6, 7, 5))
  fn = jax.jit(jax.vmap(lambda g: krum_weighting(g, f, n_selected)[0]))
  got = np.asarray(fn(jnp.asarray(np.einsum("bkm,blm->bkl", Js, Js), jnp.float32)))
  for J, w in zip(Js, got):
    np.testing.assert_allclose(w, _reference(J, f, n_selected), atol=1e-6)


def test_squared_scores_follow_the_paper_and_can_choose_another_row():
  """Blanchard et al. score with squared distances; torchjd (the default) with plain
  ones. On these five points the two choose different rows."""
  points = np.array([[0.3, -0.3], [1.3, 0.2], [-1.1, 0.7], [2.6, 1.9], [-1.4, -2.5]])
  g = jnp.asarray(points @ points.T, jnp.float32)
  plain = np.asarray(krum_weighting(g, 0)[0])
  squared = np.asarray(krum_weighting(g, 0, squared=True)[0])
  np.testing.assert_allclose(plain, _reference(points, 0, 1), atol=1e-6)
  np.testing.assert_allclose(squared, _reference(points, 0, 1, squared=True), atol=1e-6)
  assert np.argmax(plain) == 0 and np.argmax(squared) == 1
  rng = np.random.default_rng(4)
  for J in rng.standard_normal((20, 6, 5)):
    w = krum_weighting(jnp.asarray(J @ J.T, jnp.float32), 1, 2, squared=True)[0]
    np.testing.assert_allclose(np.asarray(w), _reference(J, 1, 2, squared=True), atol=1e-6)
  # The factory passes the option on: its update is the row the squared scores choose.
  for option, row in ((True, 1), (False, 0)):
    tx = cg.krum(0, squared=option)
    u, state = tx.update({"w": jnp.asarray(points, jnp.float32)}, tx.init(None))
    np.testing.assert_allclose(np.asarray(state.weights), np.eye(5)[row], atol=1e-6)
    np.testing.assert_allclose(np.asarray(u["w"]), points[row], rtol=1e-6)


def test_excludes_the_outliers():
  rng = np.random.default_rng(0)
  honest = 1.0 + 0.1 * rng.standard_normal((5, 4))
  J = np.concatenate([honest, 50.0 * rng.standard_normal((2, 4))])
  tx = cg.krum(2, n_selected=3)
  u, state = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  w = np.asarray(state.weights)
  assert np.all(w[5:] == 0.0) and w.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(np.asarray(u["w"]), w @ J, rtol=1e-5)


def test_options_are_validated():
  with pytest.raises(ValueError, match="n_byzantine"):
    cg.krum(-1)
  with pytest.raises(ValueError, match="n_selected"):
    cg.krum(0, n_selected=0)
  with pytest.raises(ValueError, match="n_selected"):
    cg.krum(0, n_selected=4, num_tasks=3)
  for bad in ("abc", 0, [2]):
    with pytest.raises(ValueError, match="`num_tasks` must be a positive integer"):
      cg.krum(0, num_tasks=bad)
  cg.krum(np.int64(1), num_tasks=np.int64(4))       # NumPy integers are integers
  cg.trimmed_mean(np.int64(1))


@pytest.mark.parametrize("f,n_selected", [(0, 1), (1, 2)])
def test_matches_torchjd(f, n_selected):
  torch, torchjd = tjd.require()
  from torchjd.aggregation import Krum
  rng = np.random.default_rng(7)
  tx = cg.krum(f, n_selected=n_selected)
  step = jax.jit(tx.update)
  for _ in range(5):
    J = tjd.random_jacobian(rng, 6, 9)
    u, _ = step({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
    ref = Krum(n_byzantine=f, n_selected=n_selected)(torch.tensor(J, dtype=torch.float64))
    assert tjd.cosine(u["w"], ref.numpy()) >= 0.999
    np.testing.assert_allclose(np.asarray(u["w"]), ref.numpy(), rtol=1e-4, atol=1e-5)


def test_torchjd_published_values():
  """torchjd's test values: Krum(n_byzantine=1, n_selected=4) on its J_Krum (row 2 adversarial)."""
  J = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [75.0, -666.0, 23.0], [1.0, 2.0, 3.0],
                [2.0, 0.0, 1.0]])
  tx = cg.krum(1, n_selected=4)
  u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), [1.25, 0.75, 1.5], atol=1e-5)
  np.testing.assert_allclose(np.asarray(state.weights), [0.25, 0.25, 0.0, 0.25, 0.25])
