"""bilb4mtl: the weights are the gradient of its scalarisation, the router moves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from loss_runs import run_losses


def test_bilb4mtl_weights_are_the_loss_gradient():
  l = jnp.array([1.0, 3.0])
  state = run_losses(cg.bilb4mtl(lamb=0.1, num_tasks=2), [l])
  expected = jax.grad(cg.bilb4mtl_loss)(l, jnp.zeros(2), l, 0.1, "identity")
  np.testing.assert_allclose(np.asarray(state.weights), np.asarray(expected), rtol=1e-6)
  assert not np.allclose(np.asarray(state.logits), 0.0)   # the router moved


def test_loss_normalisations():
  l, l0 = jnp.array([1.0, 3.0]), jnp.array([2.0, 4.0])
  sigma = np.full(2, 0.5)
  for normalization, norm in [("identity", np.asarray(l)),
                              ("rescaled", np.asarray(l) / (np.asarray(l0) / 2.0)),
                              ("log", np.log(np.asarray(l) / np.asarray(l0)))]:
    value = cg.bilb4mtl_loss(l, jnp.zeros(2), l0, 0.0, normalization)
    assert float(value) == pytest.approx(float(sigma @ norm), rel=1e-6), normalization


def test_options_are_validated():
  with pytest.raises(ValueError, match="normalization"):
    cg.bilb4mtl(normalization="z-score")
  with pytest.raises(ValueError, match="lamb"):
    cg.bilb4mtl(lamb=-0.1)
