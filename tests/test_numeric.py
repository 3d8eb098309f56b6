"""The numeric helpers the solvers share: the simplex projection against cvxpy."""

import cvxpy as cp
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

import reference_solvers as ref
from conicgrad_jax import _numeric

_project = jax.jit(_numeric.project_simplex)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(hnp.arrays(np.float64, st.integers(1, 8),
                             elements=st.floats(-1e3, 1e3, allow_nan=False)))
@hypothesis.example(np.array([0.5, 0.5, 0.5]))           # ties
@hypothesis.example(np.array([-3.0, 7.0]))               # one vertex
def test_project_simplex_is_the_euclidean_projection(v):
  with jax.enable_x64(True):
    w = np.asarray(_project(jnp.asarray(v)))
  x = cp.Variable(v.shape[0])
  ref.solve_tight(cp.Problem(cp.Minimize(cp.sum_squares(x - v)), [x >= 0, cp.sum(x) == 1]))
  scale = 1.0 + np.max(np.abs(v))
  assert np.all(w >= 0) and abs(w.sum() - 1.0) <= 1e-12 * scale
  np.testing.assert_allclose(w, x.value, atol=1e-6 * scale)
  # The projection's optimality: v − w = θ·1 on the support and ≤ θ off it.
  theta = np.max(v - w)
  on = w > 1e-9
  np.testing.assert_allclose((v - w)[on], theta, atol=1e-9 * scale)


def test_project_simplex_of_huge_entries_stays_on_the_simplex():
  """Beyond 1/eps an unshifted projection loses the −1 of its cumulative sums."""
  for dtype, big in ((jnp.float32, 3e7), (jnp.float64, 1e17)):
    with jax.enable_x64(dtype == jnp.float64):
      w = np.asarray(_project(jnp.asarray([big, big / 3, -big], dtype)))
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0])
  v = np.array([0.2, 0.5, -0.1])
  with jax.enable_x64(True):
    shifted = np.asarray(_project(jnp.asarray(v + 1e6)))
    plain = np.asarray(_project(jnp.asarray(v)))
  np.testing.assert_allclose(shifted, plain, atol=1e-9)
