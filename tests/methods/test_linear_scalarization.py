"""linear_scalarization: fixed weights, no Gram matrix, the published value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conicgrad_jax import linear_scalarization

J_PUBLISHED = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def test_published_value():
  """torchjd's documented ``Mean`` output on its example Jacobian (sum of rows / 2)."""
  tx = linear_scalarization()
  u, _ = jax.jit(tx.update)({"w": jnp.asarray(J_PUBLISHED, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), [1.0, 1.0, 1.0], atol=1e-3)


def test_mean_sum_and_preference():
  g = {"w": jnp.array([[1.0, 2.0], [3.0, -4.0], [0.0, 1.0]])}
  for reduction, expected in [("mean", [4 / 3, -1 / 3]), ("sum", [4.0, -1.0])]:
    tx = linear_scalarization(reduction)
    u, s = tx.update(g, tx.init(None))
    np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-6)
  tx = linear_scalarization(weights=[0.5, 0.0, 0.5])
  u, _ = tx.update(g, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), [0.5, 1.5], rtol=1e-6)


def test_no_gram_matrix_in_the_program():
  tx = linear_scalarization("mean", num_tasks=3)
  g = {"w": jnp.ones((3, 5))}
  jaxpr = str(jax.make_jaxpr(lambda g: tx.update(g, tx.init(None)))(g))
  assert jaxpr.count("dot_general") == 1  # the combination only


def test_nonfinite_and_bad_options():
  tx = linear_scalarization("mean")
  u, s = tx.update({"w": jnp.array([[1.0, jnp.nan]])}, tx.init(None))
  assert np.all(np.asarray(u["w"]) == 0) and int(s.nonfinite_steps) == 1
  with pytest.raises(ValueError, match="reduction"):
    linear_scalarization("median")
  with pytest.raises(ValueError, match="weights"):
    linear_scalarization(weights=[1.0, 2.0], num_tasks=3)
