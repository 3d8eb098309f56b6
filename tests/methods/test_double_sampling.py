"""The weight matrix of the double-sampling methods: G, or the cross-Gram of two batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods import _double_sampling

SHARED = {"enc": True, "head": False}


def _batch(rng, k=3):
  # The head leaf has the encoder leaf's shape: selecting by shape would take it too.
  return {"enc": jnp.asarray(rng.standard_normal((k, 4)), jnp.float32),
          "head": jnp.asarray(rng.standard_normal((k, 4)), jnp.float32)}


def test_cross_gram_of_full_pytrees_uses_the_shared_flags():
  rng = np.random.default_rng(0)
  g, b1, b2 = _batch(rng), _batch(rng), _batch(rng)
  leaves = [g["enc"]]
  expected = np.asarray(b1["enc"], np.float64) @ np.asarray(b2["enc"], np.float64).T
  for pair in ((b1, b2), ([b1["enc"]], [b2["enc"]])):
    m, finite = _double_sampling.weight_matrix(leaves, pair, SHARED, jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(np.asarray(m), expected, rtol=1e-5, atol=1e-5)
    assert bool(finite)
  m, _ = _double_sampling.weight_matrix(leaves, None, SHARED, jax.lax.Precision.HIGHEST)
  own = np.asarray(g["enc"], np.float64)
  np.testing.assert_allclose(np.asarray(m), own @ own.T, rtol=1e-5, atol=1e-5)


def test_a_non_finite_matrix_is_replaced_by_the_identity():
  rng = np.random.default_rng(1)
  b1, b2 = _batch(rng), _batch(rng)
  b2["enc"] = b2["enc"].at[0, 0].set(jnp.inf)
  m, finite = _double_sampling.weight_matrix([b1["enc"]], (b1, b2), SHARED,
                                             jax.lax.Precision.HIGHEST)
  assert not bool(finite)
  np.testing.assert_array_equal(np.asarray(m), np.eye(3))


@pytest.mark.parametrize("factory", [cg.sdmgrad, cg.modo, cg.mtac_ca])
def test_full_pytrees_and_shared_leaf_lists_give_the_same_weights(factory):
  rng = np.random.default_rng(2)
  g, b1, b2 = _batch(rng), _batch(rng), _batch(rng)
  tx = factory(shared=SHARED, num_tasks=3)
  step = jax.jit(tx.update)
  params = {"enc": jnp.zeros(4), "head": jnp.zeros(4)}
  full = step(g, tx.init(params), params, weight_grads=(b1, b2))[1].weights
  lists = step(g, tx.init(params), params, weight_grads=([b1["enc"]], [b2["enc"]]))[1].weights
  np.testing.assert_allclose(np.asarray(full), np.asarray(lists), rtol=1e-6, atol=1e-7)
  heads = step(g, tx.init(params), params, weight_grads=([b1["head"]], [b2["head"]]))[1].weights
  assert np.max(np.abs(np.asarray(heads) - np.asarray(full))) > 1e-3   # the check can fail


def test_weight_grads_must_be_a_pair_of_shared_leaves():
  rng = np.random.default_rng(3)
  g = _batch(rng)
  with pytest.raises(ValueError, match="pair"):
    _double_sampling.weight_matrix([g["enc"]], (g,), SHARED, jax.lax.Precision.HIGHEST)
  with pytest.raises(ValueError, match="shared leaves"):
    _double_sampling.weight_matrix([g["enc"]], ([g["enc"], g["head"], g["enc"]],) * 2, None,
                                   jax.lax.Precision.HIGHEST)


def test_weight_grads_of_other_shapes_name_the_leaf_and_the_batch():
  rng = np.random.default_rng(4)
  g = _batch(rng)
  wrong_k = {"enc": jnp.ones((2, 4)), "head": jnp.ones((2, 4))}
  with pytest.raises(ValueError, match=r"leaf 0 of the second batch has shape \(2, 4\).*\(3, 4\)"):
    _double_sampling.weight_matrix([g["enc"]], (g, wrong_k), SHARED, jax.lax.Precision.HIGHEST)
  transposed = [jnp.ones((3, 2, 2))]
  with pytest.raises(ValueError, match=r"first batch has shape \(3, 2, 2\)"):
    _double_sampling.weight_matrix([g["enc"].reshape(3, 4)], (transposed, [g["enc"]]), SHARED,
                                   jax.lax.Precision.HIGHEST)
