"""Gramian-only updates: G = JJᵀ column by column, never the K task gradients at once (``mode="gramian"``)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax import validation
from conicgrad_jax.task_updates import _common
from conicgrad_jax.task_updates import conv_layout


def gram_by_columns(of_shared, vjp_shared, shared_leaves, k: int, dtype,
                    unroll: bool, canonical_convolutions: bool = False) -> jax.Array:
  """G column by column: g_i = VJP(e_i), then (J g_i)_j = ⟨g_j, g_i⟩ as a JVP.

  With ``unroll`` the K columns are straight-line code (XLA:CPU runs the
  convolutions at top-level speed) and column i + 1 depends on column i
  through its basis vector (``_common.after``), so one task gradient is
  live at a time. Without ``unroll``, a ``lax.scan``
  (the accelerator default), whose body's convolutions are rewritten into
  canonical order with ``canonical_convolutions``
  (:mod:`~conicgrad_jax.task_updates.conv_layout`).
  """
  basis = jnp.eye(k, dtype=dtype)

  def column(row):
    g_i = vjp_shared(row)
    return jax.jvp(of_shared, (shared_leaves,), (g_i,))[1]

  if unroll:
    cols, col = [], None
    for i in range(k):
      row = basis[i]
      if col is not None:
        row = _common.after(row, col)
      col = column(row)
      cols.append(col)
    cols = jnp.stack(cols)
  else:
    body = conv_layout.canonical_convolutions_if(canonical_convolutions, column)
    cols = jax.lax.scan(lambda _, row: (None, body(row)), None, basis)[1]
  # In at least float32, as the stacked path builds G (bfloat16 and float16 have no eigh).
  cols = cols.astype(_numeric.solver_dtype(cols.dtype))
  return 0.5 * (cols + cols.T)


def gramian_core(fun, weighting, *, shared, unroll, log_losses, canonical_convolutions=False,
                 zero_nonfinite=True):
  """``(params, *args) -> (losses, update, gram, info)``; ``weighting(gram, losses) -> (w, info)``.

  With ``zero_nonfinite``, non-finite weights, losses or updates give a zero
  update; without it the caller applies its own policy (``_common.settle``).
  """

  def wrapped(params, *args):
    sp = _common.split(params, shared)
    shared_leaves, head_leaves = sp.shared_leaves(params), sp.head_leaves(params)

    def of_both(s, h):
      diff, (losses, _) = _common.loss_function(fun, args, {}, log_losses=log_losses)(
          sp.merge(s, h))
      return diff, losses

    diff, vjp_both, losses = jax.vjp(of_both, shared_leaves, head_leaves, has_aux=True)
    of_shared = lambda s: of_both(s, head_leaves)[0]
    k = diff.shape[0]
    gram = gram_by_columns(of_shared, lambda row: vjp_both(row)[0], shared_leaves, k,
                           diff.dtype, unroll, canonical_convolutions)
    weights, info = weighting(gram, losses)
    finite = jnp.all(jnp.isfinite(weights))
    shared_update = vjp_both(jnp.where(finite, weights, 0.0).astype(diff.dtype))[0]
    # A second VJP from the same forward pass; XLA prunes its encoder half.
    head_update = vjp_both(jnp.ones_like(diff))[1] if head_leaves else []
    update = _common.cast_like(sp.merge(shared_update, head_update), params)
    if zero_nonfinite:
      update = _common.zero_unless(finite & _common.all_finite(losses, update), update)
    return losses, update, gram, info

  return wrapped


def gramian_value_and_update(
    fun: Callable[..., Any],
    weighting: Callable[[jax.Array], tuple[jax.Array, Any]],
    *,
    shared: validation.SharedSpec = None,
    unroll: Optional[bool] = None,
    canonical_convolutions: Optional[bool] = None,
    log_losses: bool = False,
) -> Callable[..., Any]:
  r"""Losses and a Gram-weighted update without ever holding the K task gradients at once.

  For each task i in turn: g_i from one VJP, then the i-th column of
  G = JJᵀ as the JVP of the losses along g_i (forward-over-reverse:
  (J g_i)_j = ⟨g_j, g_i⟩). The weights come from ``weighting(G)`` (e.g.
  ``lambda G: conic_weighting(G, 0.5)``), and the shared leaves' update is one
  more VJP, of Σ_k w_k L_k. Task-specific leaves get the gradient of Σ_k L_k
  (the same convention as :func:`conicgrad`). Peak memory is O(m), independent
  of K; the price is K forward-mode passes. The update equals ``conicgrad``'s
  on the stacked gradients (tested).

  Args:
    fun: ``fun(params, *args) -> (K,)`` task losses.
    weighting: ``weighting(gram) -> (weights, info)``, a Gram-level weighting.
    shared: which leaves are shared (see :func:`value_and_task_grads`).
    unroll: K columns as straight-line code (``True``, the CPU default) or a
      ``lax.scan`` (``False``, the GPU/TPU default); see
      :func:`gram_by_columns`.
    canonical_convolutions: rewrite the convolutions of the ``lax.scan``
      body into XLA's canonical dimension order; ``None``: on CPU.
    log_losses: weigh the gradients of log L_k (see
      :func:`value_and_task_grads`).

  Returns:
    ``(params, *args) -> (losses, update, gram, info)``; feed ``update`` to an
    ordinary optax optimiser.
  """
  validation.check_shared_spec(shared)
  log_losses = validation.check_bool("log_losses", log_losses)
  return gramian_core(fun, lambda gram, losses: weighting(gram), shared=shared,
                      unroll=_common.check_unroll(unroll), log_losses=log_losses,
                      canonical_convolutions=_common.check_canonical_convolutions(
                          canonical_convolutions))


def gram_surrogate(gram: jax.Array) -> jax.Array:
  """S (K×K) with S Sᵀ = G (eigen-factor, negative rounding eigenvalues clipped): a Jacobian stand-in."""
  eigenvalues, vectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
  return vectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))[None, :]


def build(fun, method, *, shared, unroll, log_losses, canonical_convolutions=False):
  """``exact(params, method_state, *args)``: the method weighs a K×K stand-in with the same G."""

  def exact(params, method_state, *args):
    def weighting(gram, losses):
      new_state = _common.call_method(method, gram_surrogate(gram), method_state, None,
                                      losses)[1]
      return new_state.weights, new_state

    losses, update, _, method_state = gramian_core(
        fun, weighting, shared=shared, unroll=unroll, log_losses=log_losses,
        canonical_convolutions=canonical_convolutions, zero_nonfinite=False)(params, *args)
    return losses, update, method_state

  return exact
