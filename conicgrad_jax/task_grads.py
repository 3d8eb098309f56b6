"""Per-task losses and stacked task gradients in one forward and K backward passes."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from conicgrad_jax import validation

PyTree = Any


def value_and_task_grads(
    fun: Callable[..., Any],
    *,
    has_aux: bool = False,
    shared: validation.SharedSpec = None,
    chunk_size: Optional[int] = None,
) -> Callable[..., Any]:
  """Wraps a vector-valued loss to return its K losses and stacked task gradients.

  ``fun(params, *args, **kwargs)`` must return a (K,) vector of task losses
  (or ``(losses, aux)`` with ``has_aux``). The returned function runs one
  forward pass (``jax.vjp``) and K backward passes, vectorised with
  ``jax.vmap`` over the rows of the identity: the Jacobian of the losses with
  respect to the parameters, stacked leaf by leaf with a leading task axis.

  With ``shared``, only the shared leaves get a task axis (K backward passes
  through them); the other leaves receive the gradient of Σ_k L_k, already
  summed, in the parameter's shape — the form every transformation of this
  library accepts for task-specific leaves when ``params`` is passed to
  ``update``. XLA drops the per-task head gradients it never needs.

  Args:
    fun: the loss function; its first argument is the parameter pytree.
    has_aux: whether ``fun`` returns ``(losses, aux)``.
    shared: ``None`` (all leaves shared), a pytree of bools like the
      parameters, or a predicate ``(key_path, leaf) -> bool``.
    chunk_size: compute the K backward passes ``chunk_size`` tasks at a time
      (``lax.map`` with that batch size) instead of all at once, so the
      backward pass's intermediate memory grows with the chunk, not with K.
      The result is the same.

  Returns:
    A function ``(params, *args, **kwargs) -> ((losses, aux) or losses,
    task_grads)``.

  Example:
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: jnp.stack([jnp.sum(p["w"] * x), jnp.sum(p["w"] ** 2)])
    >>> losses, g = value_and_task_grads(f)({"w": jnp.ones(3)}, jnp.arange(3.0))
    >>> g["w"].shape
    (2, 3)
  """
  validation.check_shared_spec(shared)
  validation.check_positive_int("chunk_size", chunk_size, allow_none=True)

  def wrapped(params, *args, **kwargs):
    def loss_of_params(p):
      out = fun(p, *args, **kwargs)
      losses, aux = out if has_aux else (out, None)
      losses = jnp.asarray(losses)
      if losses.ndim != 1:
        raise ValueError(
            f"The loss function must return a 1-D vector of task losses, got "
            f"shape {losses.shape}.")
      return losses, aux

    losses, vjp_fn, aux = jax.vjp(loss_of_params, params, has_aux=True)
    k = losses.shape[0]
    basis = jnp.eye(k, dtype=losses.dtype)
    if chunk_size is None or chunk_size >= k:
      stacked = jax.vmap(vjp_fn)(basis)[0]
    else:
      stacked = jax.lax.map(lambda e: vjp_fn(e)[0], basis, batch_size=chunk_size)
    if shared is not None:
      flags = validation.resolve_shared(shared, params)
      summed = vjp_fn(jnp.ones_like(losses))[0]
      s_leaves, treedef = jax.tree_util.tree_flatten(stacked)
      sum_leaves = jax.tree_util.tree_leaves(summed)
      stacked = jax.tree_util.tree_unflatten(
          treedef, [s if f else t for s, t, f in zip(s_leaves, sum_leaves, flags)])
    value = (losses, aux) if has_aux else losses
    return value, stacked

  return wrapped


def gramian_value_and_update(
    fun: Callable[..., Any],
    weighting: Callable[[jax.Array], tuple[jax.Array, Any]],
    *,
    shared: validation.SharedSpec = None,
) -> Callable[..., Any]:
  r"""Losses and a Gram-weighted update without ever holding the K task gradients at once.

  For each task i in turn (``lax.scan``): g_i from one VJP, then the i-th
  column of G = JJᵀ as the JVP of the losses along g_i (forward-over-reverse:
  (J g_i)_j = ⟨g_j, g_i⟩). The weights come from ``weighting(G)`` (e.g.
  ``lambda G: conic_weighting(G, 0.5)``), and the shared leaves' update is one
  more VJP, of Σ_k w_k L_k. Task-specific leaves get the gradient of Σ_k L_k
  (the same convention as :func:`conicgrad`). Peak memory is O(m), independent
  of K; the price is K extra forward-mode passes. The update equals
  ``conicgrad``'s on the stacked gradients (tested).

  Args:
    fun: ``fun(params, *args) -> (K,)`` task losses.
    weighting: ``weighting(gram) -> (weights, info)``, a Gram-level weighting.
    shared: which leaves are shared (see :func:`value_and_task_grads`).

  Returns:
    ``(params, *args) -> (losses, update, gram, info)``; feed ``update`` to an
    ordinary optax optimiser.
  """
  validation.check_shared_spec(shared)
  return gramian_core(fun, lambda gram, losses: weighting(gram), shared)


def shared_split(params, shared):
  """Shared flags, (shared leaves, other leaves) and ``merge(shared_part, other_part) -> params``."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  flags = (validation.resolve_shared(shared, params) if shared is not None
           else [True] * len(leaves))

  def merge(shared_part, other_part):
    it_s, it_o = iter(shared_part), iter(other_part)
    return jax.tree_util.tree_unflatten(treedef, [next(it_s) if f else next(it_o) for f in flags])

  split = ([l for l, f in zip(leaves, flags) if f], [l for l, f in zip(leaves, flags) if not f])
  return flags, split, merge


def gramian_core(fun, weighting, shared):
  """The Gramian-only update; ``weighting(gram, losses) -> (weights, info)``.

  Non-finite weights (from a non-finite G or losses) give a zero update.
  """
  def wrapped(params, *args):
    _, (shared_leaves, head_leaves), merge = shared_split(params, shared)
    of_shared = lambda s: jnp.asarray(fun(merge(s, head_leaves), *args))
    losses, vjp_shared = jax.vjp(of_shared, shared_leaves)
    gram = gram_by_columns(of_shared, vjp_shared, shared_leaves, losses)
    weights, info = weighting(gram, losses)
    finite = jnp.all(jnp.isfinite(weights))
    shared_update = vjp_shared(jnp.where(finite, weights, 0.0).astype(losses.dtype))[0]
    if head_leaves:
      of_heads = lambda h: jnp.sum(jnp.asarray(fun(merge(shared_leaves, h), *args)))
      head_update = jax.grad(of_heads)(head_leaves)
    else:
      head_update = []
    update = merge(shared_update, head_update)
    finite &= jnp.all(jnp.stack([jnp.all(jnp.isfinite(u))
                                 for u in jax.tree_util.tree_leaves(update)]))
    update = jax.tree_util.tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), update)
    return losses, update, gram, info

  return wrapped

def gram_by_columns(of_shared, vjp_shared, shared_leaves, losses) -> jax.Array:
  """G = JJᵀ column by column: g_i = VJP(e_i), then (J g_i)_j = ⟨g_j, g_i⟩ as a JVP (``lax.scan``)."""
  def column(_, basis_row):
    g_i = vjp_shared(basis_row)[0]
    _, col = jax.jvp(of_shared, (shared_leaves,), (g_i,))
    return None, col

  _, cols = jax.lax.scan(column, None, jnp.eye(losses.shape[0], dtype=losses.dtype))
  return 0.5 * (cols + cols.T)
