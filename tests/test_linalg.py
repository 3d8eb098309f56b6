"""Pytree-native Gram matrix and combination against dense numpy on the flattened J."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax import combine, gram_matrix, linalg
from conicgrad_jax.linalg import cross_gram_matrix


def _tree(rng, k, dtype=jnp.float32):
  return {
      "conv": {"kernel": jnp.asarray(rng.standard_normal((k, 3, 3, 2, 4)), dtype)},
      "dense": [jnp.asarray(rng.standard_normal((k, 5)), dtype),
                jnp.asarray(rng.standard_normal((k,)), dtype)],  # a scalar parameter
  }


def _dense(tree, k):
  return np.stack([np.concatenate([np.ravel(np.asarray(x[i], np.float64))
                                   for x in jax.tree_util.tree_leaves(tree)])
                   for i in range(k)])


def test_gram_and_combine_match_dense_reference():
  rng = np.random.default_rng(0)
  tree = _tree(rng, 4)
  J = _dense(tree, 4)
  np.testing.assert_allclose(np.asarray(gram_matrix(tree)), J @ J.T, rtol=1e-5, atol=1e-4)
  w = jnp.asarray(rng.standard_normal(4), jnp.float32)
  out = combine(w, tree)
  flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(out)])
  np.testing.assert_allclose(flat, np.asarray(w, np.float64) @ J, rtol=1e-5, atol=1e-5)
  assert out["dense"][1].shape == ()


def test_low_precision_leaves_accumulate_in_float32():
  rng = np.random.default_rng(1)
  for dtype in (jnp.bfloat16, jnp.float16):
    tree = _tree(rng, 3, dtype)
    G = gram_matrix(tree)
    assert G.dtype == jnp.float32
    J = _dense(tree, 3)  # the exact low-precision values, in float64
    np.testing.assert_allclose(np.asarray(G), J @ J.T, rtol=1e-5, atol=1e-3)
    out = combine(jnp.ones(3) / 3, tree)
    assert out["conv"]["kernel"].dtype == dtype


def test_mixed_dtypes_and_float64():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    tree = {"a": jnp.asarray(rng.standard_normal((2, 3)), jnp.float64),
            "b": jnp.asarray(rng.standard_normal((2, 3)), jnp.bfloat16)}
    G = gram_matrix(tree)
    assert G.dtype == jnp.float64
    out = combine(jnp.array([0.5, 0.5]), tree, out_dtypes={"a": jnp.float64, "b": jnp.float32})
    assert out["a"].dtype == jnp.float64 and out["b"].dtype == jnp.float32


def test_gram_never_concatenates_leaves():
  """The jaxpr contracts each leaf separately: no concatenate of the stacked gradients."""
  tree = _tree(np.random.default_rng(3), 4)
  jaxpr = jax.make_jaxpr(gram_matrix)(tree)
  assert "concatenate" not in str(jaxpr)
  assert str(jaxpr).count("dot_general") == len(jax.tree_util.tree_leaves(tree))


def test_empty_tree_is_an_error():
  with pytest.raises(ValueError, match="no leaves"):
    gram_matrix({})


@pytest.mark.parametrize("k, block", [(1, 1), (5, 2), (8, 4), (7, 7), (6, 10)])
def test_upper_triangle_gram_equals_the_full_product(k, block):
  from conicgrad_jax.linalg import upper_triangle_gram
  J = np.random.default_rng(k).standard_normal((k, 3, 11)).astype(np.float32)
  G = np.asarray(upper_triangle_gram(jnp.asarray(J), block))
  flat = J.reshape(k, -1).astype(np.float64)
  np.testing.assert_allclose(G, flat @ flat.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(G, G.T)


def test_gram_matrix_on_shared_leaves_and_cross_gram():
  from conicgrad_jax.linalg import cross_gram_matrix
  rng = np.random.default_rng(3)
  tree = {"enc": jnp.asarray(rng.standard_normal((3, 4, 2)), jnp.float32),
          "head": jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)}
  J = np.asarray(tree["enc"]).reshape(3, -1)
  expected = J @ J.T
  by_tree = gram_matrix(tree, shared={"enc": True, "head": False})
  by_predicate = gram_matrix(tree, shared=lambda path, leaf: "enc" in jax.tree_util.keystr(path))
  np.testing.assert_allclose(np.asarray(by_tree), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(by_predicate), expected, rtol=1e-5, atol=1e-5)
  other = jax.tree_util.tree_map(lambda x: 2.0 * x + 1.0, tree)
  J2 = np.asarray(other["enc"]).reshape(3, -1)
  np.testing.assert_allclose(np.asarray(cross_gram_matrix(tree, other, shared={"enc": True,
                                                                                "head": False})),
                             J @ J2.T, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="shared"):
    gram_matrix(tree, shared={"enc": False, "head": False})
  renamed = {"x": other["enc"], "y": other["head"]}          # same shapes, other keys
  with pytest.raises(ValueError, match="task_grads_b"):
    cross_gram_matrix(tree, renamed)
  fewer_tasks = jax.tree_util.tree_map(lambda x: x[:2], other)
  with pytest.raises(ValueError, match="same K"):
    cross_gram_matrix(tree, fewer_tasks)
  # Neither a's structure nor its shared leaves alone: refused, not matched by position.
  three = {"enc": tree["enc"], "head_a": tree["head"], "head_b": tree["head"]}
  other_tree = {"dec": 5.0 * tree["enc"], "enc": tree["enc"]}
  with pytest.raises(ValueError, match="task_grads_b.*2 leaves"):
    cross_gram_matrix(three, other_tree, shared={"enc": True, "head_a": False, "head_b": False})
  np.testing.assert_allclose(   # its shared leaves alone are accepted
      np.asarray(cross_gram_matrix(three, [other["enc"]],
                                   shared={"enc": True, "head_a": False, "head_b": False})),
      J @ J2.T, rtol=1e-5, atol=1e-4)
  # A task-specific leaf that sorts before the shared one, of the same shape: b's shared
  # leaf is taken by a's mask, not by its position.
  first = {"a_head": tree["enc"] + 3.0, "enc": tree["enc"]}
  first_other = {"a_head": -other["enc"], "enc": other["enc"]}
  np.testing.assert_allclose(
      np.asarray(cross_gram_matrix(first, first_other, shared={"a_head": False, "enc": True})),
      J @ J2.T, rtol=1e-5, atol=1e-4)


def test_a_summed_head_in_the_gram_names_the_leaf_and_the_shared_option():
  """A head gradient already summed over tasks (no task axis) is named, with `shared=` as the fix."""
  tree = {"enc": jnp.ones((2, 8, 8)), "head_a": jnp.ones((8,))}
  with pytest.raises(ValueError, match=r"\['head_a'\] has shape \(8,\).*K = 2.*`shared=`"):
    gram_matrix(tree)
  with pytest.raises(ValueError, match=r"\['b'\] has no leading task axis.*`shared=`"):
    gram_matrix({"a": jnp.ones((2, 3)), "b": jnp.ones(())})
  np.testing.assert_allclose(
      np.asarray(gram_matrix(tree, shared={"enc": True, "head_a": False})),
      np.full((2, 2), 64.0))


def test_combine_names_weights_that_do_not_match_the_task_axis():
  tree = {"a": jnp.ones((2, 3))}
  with pytest.raises(ValueError, match=r"`weights` must be a \(K,\) vector"):
    combine(jnp.ones((2, 1)), tree)
  with pytest.raises(ValueError, match=r"leaf \['a'\] has shape \(2, 3\); `weights` has K = 3"):
    combine(jnp.ones(3), tree)
  np.testing.assert_allclose(np.asarray(combine(jnp.array([1.0, 2.0]), tree)["a"]), [3.0] * 3)
  np.testing.assert_allclose(np.asarray(combine([1.0, 2.0], tree)["a"]), [3.0] * 3)   # a list


def test_combine_refuses_integer_leaves_by_name():
  """Σ_k w_k g_k of integer gradients would be truncated to the leaf's integer dtype."""
  with pytest.raises(ValueError, match=r"\['w'\]"):
    combine(jnp.array([0.5, 0.5]), {"w": jnp.array([[1, 0], [0, 1]], jnp.int32)})


def test_cross_gram_takes_a_list_of_the_shared_leaves_when_every_leaf_is_shared():
  a = {"b": jnp.ones((2, 3)), "w": jnp.arange(8.0).reshape(2, 4)}
  b = [jnp.full((2, 3), 2.0), jnp.ones((2, 4))]          # a's leaves, in a's order
  expected = cross_gram_matrix(a, {"b": b[0], "w": b[1]})
  np.testing.assert_allclose(np.asarray(cross_gram_matrix(a, b)), np.asarray(expected))


def test_cross_gram_refuses_a_nested_sequence_of_other_keys():
  a = ({"x": jnp.ones((2, 3)), "y": jnp.ones((2, 3))},)
  b = ({"y": jnp.ones((2, 3)), "z": jnp.ones((2, 3))},)
  with pytest.raises(ValueError, match="structure"):
    cross_gram_matrix(a, b)


@pytest.mark.parametrize("block_size", [0, -2, 2.5])
def test_upper_triangle_gram_refuses_a_bad_block_size(block_size):
  with pytest.raises(ValueError, match="`block_size`"):
    linalg.upper_triangle_gram(jnp.ones((4, 3)), block_size)


@pytest.mark.parametrize("precision", [jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT])
def test_the_precision_reaches_every_contraction(precision):
  """On CPU every precision computes the same, so the jaxpr is what shows it: a dropped
  precision would run TF32 or bfloat16 passes on GPU/TPU."""
  tree = {"a": jnp.ones((3, 4)), "b": jnp.ones((3, 2, 2))}
  w = jnp.ones(3)
  for fn in (lambda: gram_matrix(tree, precision),
             lambda: combine(w, tree, precision=precision),
             lambda: cross_gram_matrix(tree, tree, precision),
             lambda: linalg.upper_triangle_gram(tree["a"], 2, precision)):
    eqns = [e for e in jax.make_jaxpr(fn)().jaxpr.eqns if e.primitive.name == "dot_general"]
    assert eqns
    for e in eqns:
      assert str(precision) in str(e.params["precision"]), e.params["precision"]
  tx = cg.conicgrad(0.5, precision=precision)
  jaxpr = jax.make_jaxpr(lambda g: tx.update(g, tx.init(None))[0])(tree)
  # The contractions with the leaves (two Gram blocks, two combinations); the K×K solve
  # inside runs at HIGHEST whatever the option.
  leaf_shapes = {(3, 4), (3, 2, 2)}
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"
          and any(tuple(v.aval.shape) in leaf_shapes for v in e.invars)]
  assert len(dots) == 4 and all(str(precision) in str(e.params["precision"]) for e in dots)


def test_a_float64_operand_is_not_rounded_to_its_lower_precision_partner():
  """Under x64 a float64 leaf or weight vector makes the contraction float64 whatever the other
  operand's dtype (the cross-Gramian's b, the Gram matrix's later leaf, combine's weights):
  against float64 numpy to 1e-12, far below float32 rounding (the bfloat16 leaf holds small
  integers, whose float32 Gram is exact)."""
  rng = np.random.default_rng(7)
  a32 = rng.standard_normal((3, 4)).astype(np.float32)
  b64 = rng.standard_normal((3, 4))
  low = rng.integers(-4, 5, (3, 5)).astype(np.float64)   # small integers: exact in bfloat16
  with jax.enable_x64(True):
    M = cross_gram_matrix({"w": jnp.asarray(a32)}, {"w": jnp.asarray(b64)})
    G = gram_matrix({"a": jnp.asarray(low, jnp.bfloat16), "b": jnp.asarray(b64)})
    M2 = cross_gram_matrix({"a": jnp.asarray(low, jnp.bfloat16), "b": jnp.asarray(a32)},
                           {"a": jnp.asarray(low, jnp.bfloat16), "b": jnp.asarray(b64)})
    w = jnp.asarray([1 / 3, 1 / 7, -2 / 9], jnp.float64)
    out = combine(w, {"w": jnp.asarray(a32)}, out_dtypes={"w": jnp.float64})["w"]
  assert M.dtype == G.dtype == M2.dtype == out.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(M), a32.astype(np.float64) @ b64.T, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(G), low @ low.T + b64 @ b64.T, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(M2), low @ low.T + a32.astype(np.float64) @ b64.T,
                             rtol=1e-12)
  np.testing.assert_allclose(np.asarray(out),
                             np.array([1 / 3, 1 / 7, -2 / 9]) @ a32.astype(np.float64),
                             rtol=1e-12)


def test_cross_gram_names_leaves_of_the_same_tasks_but_other_parameter_shapes():
  with pytest.raises(ValueError, match=r"\(2, 3, 4\) and \(2, 4, 3\) do not match"):
    cross_gram_matrix({"w": jnp.ones((2, 3, 4))}, {"w": jnp.ones((2, 4, 3))})


def test_per_task_sum_accumulates_in_the_requested_dtype():
  """1001 ones sum to 1001 in float32; bfloat16 (8 significant bits) cannot hold 1001."""
  leaf = jnp.ones((2, 7, 143), jnp.bfloat16)
  out = linalg.per_task_sum(leaf, jnp.float32)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), [1001.0, 1001.0])
