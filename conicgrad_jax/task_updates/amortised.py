"""Amortised weighting: recompute the weights every N steps, reuse them in between.

A reuse step is one forward pass and the backward pass of Σ_k w_k L_k for
the shared leaves, plus the heads' gradient of Σ_k L_k. The two cotangents
go through two VJP calls of the same forward pass: XLA prunes the second
call's encoder half, so the step costs one backward pass through the encoder
and two through the (small) heads — not a vmapped pair of cotangents through
the whole network. (One VJP of Σ_k w_k L_k would suffice only if the heads'
gradient of Σ_k L_k equalled theirs of Σ_k w_k L_k, which holds for uniform
weights alone: a head that several tasks share gets Σ_k w_k ∇L_k ≠ Σ_k ∇L_k.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from conicgrad_jax.task_updates import _common


def build_reuse(fun, *, shared, log_losses):
  """``cheap(params, weights, *args) -> (losses, update)`` for every mode but representation."""

  def cheap(params, weights, *args):
    of_params = _common.loss_function(fun, args, {}, log_losses=log_losses)
    diff, vjp_fn, (losses, _) = jax.vjp(of_params, params, has_aux=True)
    sp = _common.split(params, shared)
    weighted = vjp_fn(weights.astype(diff.dtype))[0]
    if sp.all_shared:
      update = weighted
    else:
      summed = vjp_fn(jnp.ones_like(diff))[0]
      update = sp.merge(sp.shared_leaves(weighted), sp.head_leaves(summed))
    return losses, _common.cast_like(update, params)

  return cheap
