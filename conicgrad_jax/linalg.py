"""Pytree-native linear algebra over stacked task gradients.

A stacked task-gradient pytree is read as one K×m matrix J whose rows are the
task gradients, without ever concatenating its leaves: the Gram matrix is a sum
of per-leaf contractions over each leaf's non-task axes, and the combination
Σ_k w_k g_k is one contraction over the task axis per leaf. Under sharding each
leaf's contraction runs where the leaf lives and only the K×K partial Gram
matrices are reduced, so the stacked gradients are never gathered.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from conicgrad_jax._types import PyTree
from conicgrad_jax import _numeric
from conicgrad_jax import validation



def _accumulation_dtype(dtype) -> jnp.dtype:
  return _numeric.solver_dtype(dtype)


def per_task_sum(leaf: jax.Array, dtype=None) -> jax.Array:
  """Σ over every axis of a stacked leaf but its leading task axis, shape (K,).

  A sum over the axes themselves, not over ``leaf.reshape(K, -1)``: a reshape
  of a leaf sharded along a feature axis makes XLA gather the whole leaf.
  """
  return jnp.sum(leaf, axis=tuple(range(1, leaf.ndim)), dtype=dtype)


def leaf_gram(leaf: jax.Array, precision=_numeric.HIGHEST) -> jax.Array:
  """K×K Gram matrix of one stacked leaf (contracting every non-task axis)."""
  axes = tuple(range(1, leaf.ndim))
  out_dtype = _accumulation_dtype(leaf.dtype)
  return jax.lax.dot_general(
      leaf, leaf, ((axes, axes), ((), ())), precision=precision,
      preferred_element_type=out_dtype)


def _shared_leaves(task_grads: PyTree, shared) -> list:
  """The leaves that ``shared`` selects, each checked to carry the same leading task axis."""
  validation.check_shared_spec(shared)
  paths_leaves = jax.tree_util.tree_flatten_with_path(task_grads)[0]
  if not paths_leaves:
    raise ValueError("`task_grads` has no leaves.")
  flags = ([True] * len(paths_leaves) if shared is None
           else validation.resolve_shared(shared, task_grads))
  selected = [(path, leaf) for (path, leaf), f in zip(paths_leaves, flags) if f]
  validation.check_leading_axis(
      selected, hint="; a task-specific leaf whose gradient is already summed over the "
                     "tasks stays out of the Gram matrix with `shared=`")
  for path, leaf in selected:
    validation.check_floating_leaf(path, leaf)
  return [leaf for _, leaf in selected]


def gram_matrix(task_grads: PyTree, precision=_numeric.HIGHEST, *, shared=None) -> jax.Array:
  """G = J Jᵀ of a stacked task-gradient pytree, G_ij = Σ_leaves ⟨g_i, g_j⟩.

  Args:
    task_grads: pytree whose leaves all have the same leading task axis K.
    precision: matmul precision (``HIGHEST`` by default: TPU and GPU defaults
      would round float32 inputs to bfloat16/tf32).
    shared: which leaves enter G, as the methods' ``shared`` option: ``None``
      (all), a pytree of bools shaped like ``task_grads``, or a predicate
      ``(key_path, leaf) -> bool``. The Gram matrix every Gram method sees is
      ``gram_matrix(task_grads, shared=shared)`` with the method's ``shared``.

  Returns:
    A (K, K) array in at least float32 (float64 if any leaf is float64).

  Example:
    >>> import jax.numpy as jnp
    >>> g = {"w": jnp.ones((2, 3, 4)), "b": jnp.ones((2, 4))}
    >>> gram_matrix(g)[0, 1].item()
    16.0
    >>> gram_matrix(g, shared={"w": True, "b": False})[0, 1].item()
    12.0
  """
  leaves = _shared_leaves(task_grads, shared)
  grams = [leaf_gram(leaf, precision) for leaf in leaves]
  dtype = jnp.result_type(*[g.dtype for g in grams])
  return sum(g.astype(dtype) for g in grams)


def cross_gram_matrix(task_grads_a: PyTree, task_grads_b: PyTree, precision=_numeric.HIGHEST,
                      *, shared=None) -> jax.Array:
  """M = J_a J_bᵀ of two stacked task-gradient pytrees, M_ij = ⟨a_i, b_j⟩.

  The cross-Gramian of two independent batches that double-sampling methods
  (MoDo, SDMGrad) feed their weight update. ``shared`` as in
  :func:`gram_matrix`, resolved on ``task_grads_a``; ``task_grads_b`` has
  either the structure of ``task_grads_a`` (its shared leaves are used) or
  holds ``task_grads_a``'s shared leaves alone, in order (e.g. a list).

  Example:
    >>> import jax.numpy as jnp
    >>> a = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> b = {"w": jnp.array([[3.0, 1.0], [1.0, 1.0]])}
    >>> cross_gram_matrix(a, b).tolist()
    [[3.0, 1.0], [2.0, 2.0]]
  """
  a_leaves = _shared_leaves(task_grads_a, shared)
  flags = None if shared is None else validation.resolve_shared(shared, task_grads_a)
  b_all = jax.tree_util.tree_leaves(task_grads_b)
  n_all = len(jax.tree_util.tree_leaves(task_grads_a))
  # b is either shaped like a (its shared leaves are then taken by a's flags) or
  # holds a's shared leaves alone, in order.
  flat_sequence = (isinstance(task_grads_b, (list, tuple))
                   and all(validation.is_array(leaf) for leaf in task_grads_b))
  if len(b_all) == n_all and not (len(a_leaves) == n_all and flat_sequence):
    validation.check_same_structure(task_grads_b, task_grads_a, "`task_grads_b`",
                                    "`task_grads_a`")
    b_leaves = b_all if flags is None else [leaf for leaf, f in zip(b_all, flags) if f]
  elif len(b_all) == len(a_leaves):
    b_leaves = b_all
  else:
    raise ValueError(f"`task_grads_b` has {len(b_all)} leaves; it needs the structure of "
                     f"`task_grads_a` ({n_all} leaves) or its {len(a_leaves)} shared leaves.")
  grams = []
  for i, (a, b) in enumerate(zip(a_leaves, b_leaves)):
    validation.check_floating_leaf((jax.tree_util.SequenceKey(i),), b,
                                   "Shared leaf of `task_grads_b`")
    if a.shape != b.shape:
      raise ValueError(f"Leaves of shapes {a.shape} and {b.shape} do not match (both need "
                       "the same K tasks and the same parameter shape).")
    axes = tuple(range(1, a.ndim))
    grams.append(jax.lax.dot_general(
        a, b, ((axes, axes), ((), ())), precision=precision,
        preferred_element_type=_accumulation_dtype(jnp.result_type(a.dtype, b.dtype))))
  dtype = jnp.result_type(*[g.dtype for g in grams])
  return sum(g.astype(dtype) for g in grams)


def combine_leaf(weights: jax.Array, leaf: jax.Array, out_dtype=None,
                 precision=_numeric.HIGHEST) -> jax.Array:
  """Σ_k weights_k leaf[k], accumulated in at least float32."""
  acc = _accumulation_dtype(jnp.result_type(leaf.dtype, weights.dtype))
  out = jax.lax.dot_general(
      weights.astype(acc), leaf, (((0,), (0,)), ((), ())),
      precision=precision, preferred_element_type=acc)
  return out.astype(out_dtype or leaf.dtype)


def combine(weights: jax.Array, task_grads: PyTree, out_dtypes: PyTree = None,
            precision=_numeric.HIGHEST) -> PyTree:
  """Σ_k weights_k g_k, leaf by leaf: the update shaped like the parameters.

  Args:
    weights: (K,) combination weights.
    task_grads: stacked task-gradient pytree.
    out_dtypes: optional pytree of dtypes (e.g. the parameters'); by default
      each output leaf keeps its task-gradient leaf's dtype.
    precision: matmul precision.

  Returns:
    A pytree with the task axis contracted away.
  """
  weights = jnp.asarray(weights)
  if weights.ndim != 1:
    raise ValueError(f"`weights` must be a (K,) vector, got shape {weights.shape}.")
  paths_leaves = jax.tree_util.tree_flatten_with_path(task_grads)[0]
  validation.check_leading_axis(paths_leaves, jnp.shape(weights)[0], "`weights`")
  for path, leaf in paths_leaves:
    validation.check_floating_leaf(path, leaf)
  if out_dtypes is None:
    return jax.tree_util.tree_map(
        lambda leaf: combine_leaf(weights, leaf, None, precision), task_grads)
  return jax.tree_util.tree_map(
      lambda leaf, dt: combine_leaf(weights, leaf, dt, precision),
      task_grads, out_dtypes)


def upper_triangle_gram(leaf: jax.Array, block_size: int,
                        precision=_numeric.HIGHEST) -> jax.Array:
  """J Jᵀ of one stacked leaf from its upper-triangular blocks only (the rest mirrored).

  Splits the K task rows into blocks of ``block_size`` and computes the
  products J_a J_bᵀ for a ≤ b: about (K/b + 1)/(2K/b) of the flops of the full
  product, the saving a BLAS ``syrk`` gets. Whether it is faster than one
  large matmul depends on the backend; ``python -m benchmarks perf`` measures it.
  """
  validation.check_static_positive_int("block_size", block_size)
  k = leaf.shape[0]
  flat = leaf.reshape(k, -1)
  out_dtype = _accumulation_dtype(leaf.dtype)
  starts = list(range(0, k, block_size))
  rows = []
  blocks = {}
  for i, a in enumerate(starts):
    for b in starts[i:]:
      blocks[a, b] = jax.lax.dot_general(
          flat[a:a + block_size], flat[b:b + block_size], (((1,), (1,)), ((), ())),
          precision=precision, preferred_element_type=out_dtype)
  for a in starts:
    rows.append(jnp.concatenate(
        [blocks[a, b] if a <= b else blocks[b, a].T for b in starts], axis=1))
  return jnp.concatenate(rows, axis=0)
