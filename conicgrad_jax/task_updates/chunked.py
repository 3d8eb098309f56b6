"""Stacked task gradients ``chunk_size`` tasks at a time (``mode="chunked"``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from conicgrad_jax.task_updates import _common
from conicgrad_jax.task_updates import conv_layout
from conicgrad_jax.task_updates import stacked


def chunked_cotangents(vjp_fn, k: int, dtype, chunk_size: int, strategy: str,
                       unroll: bool, canonical_convolutions: bool = False) -> list:
  """The K VJPs of the basis rows, ``chunk_size`` rows per backward batch.

  With ``unroll`` the chunks are straight-line code, each chunk's basis rows
  made to depend on the previous chunk's result (``_common.after``), so that
  only one chunk's backward intermediates are live at a time; rows inside a
  chunk follow ``strategy``. Without it they run in ``lax.map``
  (each chunk vmapped), the form accelerators prefer; XLA:CPU runs it at
  the unrolled form's speed only with ``canonical_convolutions`` (the
  body's convolutions rewritten, :mod:`~conicgrad_jax.task_updates.conv_layout`).
  """
  basis = jnp.eye(k, dtype=dtype)
  if not unroll:
    body = conv_layout.canonical_convolutions_if(canonical_convolutions,
                                                 lambda e: vjp_fn(e)[0])
    out = jax.lax.map(body, basis, batch_size=chunk_size)
    return jax.tree_util.tree_leaves(out)
  chunks, previous = [], None
  for start in range(0, k, chunk_size):
    rows = basis[start:start + chunk_size]
    if previous is not None:
      rows = _common.after(rows, next((l for l in previous if l.size), previous[0]))
    n = rows.shape[0]
    if strategy == "vmap":
      leaves = jax.tree_util.tree_leaves(jax.vmap(vjp_fn)(rows)[0])
    else:
      per_row = [jax.tree_util.tree_leaves(vjp_fn(rows[i])[0]) for i in range(n)]
      leaves = [jnp.stack(col) for col in zip(*per_row)]
    chunks.append(leaves)
    previous = leaves
  return [jnp.concatenate(col) for col in zip(*chunks)]


def build(fun, method, *, shared, strategy, unroll, chunk_size, log_losses,
          canonical_convolutions=False):
  """``exact(params, method_state, *args)`` with the K backward passes in chunks."""
  per_task = lambda vjp_fn, k, dtype: (
      chunked_cotangents(vjp_fn, k, dtype, chunk_size, strategy, unroll,
                         canonical_convolutions)
      if chunk_size < k else stacked.stacked_cotangents(vjp_fn, k, dtype, strategy))
  return stacked.build(fun, method, shared=shared, strategy=strategy, log_losses=log_losses,
                       per_task=per_task)
