"""Representation-level weighting, the MGDA-UB approximation (``mode="representation"``).

Sener & Koltun (2018, "Multi-Task Learning as Multi-Objective Optimization",
§3.3) bound the Gram matrix of the shared parameters' task gradients through
the shared representation z = encode(θ_s, x): with Z_k = ∂L_k/∂z,
∇_{θ_s} L_k = (∂z/∂θ_s)ᵀ Z_k, so the method weighs the K representation
gradients Z_k (Gram matrix G_z = ⟨Z_k, Z_l⟩, K backward passes through the
heads only) instead of the K parameter gradients (G = JJᵀ, K backward passes
through the encoder). The combined representation gradient then goes through
the encoder once. For a method whose update is Σ_k w_k g_k the result is
Σ_k w_k(G_z) ∇_{θ_s} L_k: the same combination form as the stacked path, with
weights computed from G_z rather than G, so the two differ in general (they
agree when ∂z/∂θ_s preserves the inner products of the Z_k, e.g. an
orthogonal Jacobian).

A ``representation_loss`` of the Z_k themselves (RotoGrad's rotation
objective) adds its parameter gradient, the Z_k held constant, from the same
K passes through the heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from conicgrad_jax import linalg
from conicgrad_jax.task_updates import _common
from conicgrad_jax.task_updates import stacked


def forward(fun, encode, params, args, log_losses):
  """``(losses, diff losses, z, encoder_vjp, heads_vjp)`` from one forward pass."""
  z, encoder_vjp = jax.vjp(lambda p: encode(p, *args), params)
  if not isinstance(z, jax.Array):
    raise ValueError(f"`encode` must return one array, the shared representation z; got a "
                     f"{type(z).__name__} with structure {jax.tree_util.tree_structure(z)}.")

  def of_heads(p, zz):
    diff, (losses, _) = _common.loss_function(
        lambda q, *a: fun(q, zz, *a), args, {}, log_losses=log_losses)(p)
    return diff, losses

  diff, heads_vjp, losses = jax.vjp(of_heads, params, z, has_aux=True)
  return losses, diff, z, encoder_vjp, heads_vjp


def combine(encoder_vjp, heads_vjp, z, rep_combination, diff, params):
  """Encoder leaves: the VJP of the combined representation gradient; heads: Σ_k ∇L_k."""
  encoder_update = encoder_vjp(rep_combination.astype(z.dtype))[0]
  head_update = heads_vjp(jnp.ones_like(diff))[0]
  update = jax.tree_util.tree_map(lambda a, b: a + b, encoder_update, head_update)
  return _common.cast_like(update, params)


def gradients(heads_vjp, diff, strategy):
  """The K representation gradients ∂L_k/∂z, shape (K, *z.shape): K passes through the heads."""
  return stacked.stacked_cotangents(lambda row: (heads_vjp(row)[1],), diff.shape[0],
                                    diff.dtype, strategy)[0]


def weighted(weights, heads_vjp, diff, rep_grads=None):
  """Σ_k w_k ∂L_k/∂z: from the stacked representation gradients when they are at hand,
  otherwise by one pass through the heads with the weights as cotangent."""
  if rep_grads is not None:
    return linalg.combine_leaf(weights, rep_grads)
  return heads_vjp(weights.astype(diff.dtype))[1]


def with_representation_loss(update, representation_loss, params, rep_grads, args):
  """``update`` plus ∇_θ representation_loss(θ, sg(rep_grads), *args), cast like the parameters.

  The representation gradients enter as constants: only the parameters the
  loss reads directly (e.g. RotoGrad's rotations) receive its gradient.
  """
  if representation_loss is None:
    return update
  rep_grads = jax.lax.stop_gradient(rep_grads)
  value, loss_vjp = jax.vjp(lambda p: representation_loss(p, rep_grads, *args), params)
  if not (isinstance(value, jax.Array) and value.shape == ()
          and jnp.issubdtype(value.dtype, jnp.floating)):
    got = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)),
                                 value)
    raise ValueError(
        "`representation_loss(params, rep_grads, *args)` must return one real number (a "
        f"float scalar); it returned {got} for rep_grads of shape {rep_grads.shape}.")
  extra = loss_vjp(jnp.ones_like(value))[0]
  return jax.tree_util.tree_map(lambda a, b: a + b, update, _common.cast_like(extra, params))


def build(fun, encode, method, *, strategy, log_losses, representation_loss=None):
  """``exact(params, method_state, *args)``: the method weighs ∂L_k/∂z."""

  def exact(params, method_state, *args):
    losses, diff, z, encoder_vjp, heads_vjp = forward(fun, encode, params, args, log_losses)
    rep_grads = gradients(heads_vjp, diff, strategy)
    combined, method_state = _common.call_method(method, rep_grads, method_state, None, losses)
    update = combine(encoder_vjp, heads_vjp, z, combined, diff, params)
    return (losses, with_representation_loss(update, representation_loss, params, rep_grads, args),
            method_state)

  return exact


def build_reuse(fun, encode, *, strategy, log_losses, representation_loss=None):
  """``cheap(params, weights, *args)``: Σ_k w_k Z_k through the encoder, Σ_k ∇L_k for the heads.

  With a ``representation_loss`` the K representation gradients are needed
  anyway; the weighted one is then their weighted sum, not one more pass.
  """

  def cheap(params, weights, *args):
    losses, diff, z, encoder_vjp, heads_vjp = forward(fun, encode, params, args, log_losses)
    rep_grads = (gradients(heads_vjp, diff, strategy)
                 if representation_loss is not None else None)
    rep = weighted(weights, heads_vjp, diff, rep_grads)
    update = combine(encoder_vjp, heads_vjp, z, rep, diff, params)
    return losses, with_representation_loss(update, representation_loss, params, rep_grads, args)

  return cheap
