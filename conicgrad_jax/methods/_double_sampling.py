"""The matrix that double-sampling methods (MoDo, SDMGrad, MTAC-CA) weigh the tasks by."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _gradient_buffers as buf


def shared_leaves(tree, shared, num_shared: int) -> list:
  """The shared leaves of one of ``weight_grads``: a full stacked-gradient pytree
  (selected by the method's ``shared`` flags) or already the list of shared leaves."""
  leaves = jax.tree_util.tree_leaves(tree)
  if len(leaves) == num_shared:
    return leaves
  if shared is not None:
    flags = validation.resolve_shared(shared, tree)
    selected = [leaf for leaf, f in zip(leaves, flags) if f]
    if len(selected) == num_shared:
      return selected
  raise ValueError(f"`weight_grads`: each of the pair must be the full stacked task "
                   f"gradients or their {num_shared} shared leaves (tree_leaves order), "
                   f"got {len(leaves)} leaves.")


def weight_matrix(leaves, weight_grads, shared, precision) -> tuple[jax.Array, jax.Array]:
  """``(M, finite)``: M = G of the update's own shared ``leaves``, or with
  ``weight_grads=(g1, g2)`` (two further independent batches) their cross-Gram
  J₁J₂ᵀ; the identity in place of M when M or a leaf is not finite."""
  if weight_grads is None:
    m = linalg.gram_matrix(leaves, precision)
  else:
    if not (isinstance(weight_grads, (tuple, list)) and len(weight_grads) == 2):
      raise ValueError("`weight_grads` must be a pair (grads_1, grads_2) of stacked task "
                       "gradients from two independent batches.")
    a, b = (shared_leaves(g, shared, len(leaves)) for g in weight_grads)
    for which, pair_leaves in (("first", a), ("second", b)):
      for i, (leaf, own) in enumerate(zip(pair_leaves, leaves)):
        if jnp.shape(leaf) != own.shape:
          raise ValueError(
              f"`weight_grads`: shared leaf {i} of the {which} batch has shape "
              f"{jnp.shape(leaf)}, but the task gradients' shared leaf {i} has {own.shape}: "
              "both batches need the same K tasks and the same parameter shapes.")
    m = linalg.cross_gram_matrix(a, b, precision)
  finite = jnp.all(jnp.isfinite(m)) & buf.all_finite(leaves)
  return jnp.where(finite, m, jnp.eye(m.shape[0], dtype=m.dtype)), finite
