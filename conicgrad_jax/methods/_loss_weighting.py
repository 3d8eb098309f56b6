"""Pieces shared by the loss weightings: option checks and learned log-scales (UW, IMTL-L).

UW and IMTL-L both keep K learned log-scales s in their state and move them
by one step of their own optimiser on ∂(scalarised loss)/∂s per update; the
two differ only in the scalarisation and in the weights as a function of s.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def log_scale_init(state_type, optimizer: optax.GradientTransformation, init_log_scale: float,
                   weights_of: Callable[[jax.Array], jax.Array]):
  """``init_state(k, dtype)`` of a ``state_type(weights, log_scales, inner_state, nonfinite_steps)``."""

  def init_state(k, dtype=jnp.float32):
    s = jnp.full((0 if k is None else k,), init_log_scale, dtype)
    return state_type(weights_of(s), s, optimizer.init(s), jnp.zeros((), jnp.int32))

  return init_state


def log_scale_step(loss: Callable[[jax.Array, jax.Array], jax.Array],
                   weights_of: Callable[[jax.Array], jax.Array], losses: jax.Array, state,
                   optimizer: optax.GradientTransformation):
  """Weights from the current log-scales s, then one optimiser step on ∂loss(losses, s)/∂s.

  Returns ``(weights, new_state)``.
  """
  s = state.log_scales
  weights = weights_of(s)
  grad = jax.grad(loss, argnums=1)(losses.astype(s.dtype), s)
  updates, inner_state = optimizer.update(clip_for_second_moment(grad), state.inner_state, s)
  bound = log_scale_bound(s.dtype)
  return weights, state._replace(
      weights=weights, log_scales=jnp.clip(optax.apply_updates(s, updates), -bound, bound),
      inner_state=inner_state)


def log_scale_bound(dtype) -> float:
  """|s| ≤ ½ log(largest float): e^{±s}, the weights, stay finite with room to spare.

  Without the bound, losses near 0 drive s towards ∓∞; once e^{±s} overflowed,
  every later step would be skipped and s could never come back.
  """
  return 0.5 * float(np.log(np.finfo(np.dtype(dtype)).max))


def clip_for_second_moment(grad: jax.Array) -> jax.Array:
  """The gradient clipped to ±√(largest float)/4, so that Adam's g² stays finite.

  Adam's step depends on g only through m/√v, so the clip changes nothing for
  ordinary gradients; for losses beyond about 1e19 (float32) it keeps the
  inner optimiser's state finite instead of skipping the step.
  """
  bound = 0.25 * float(np.sqrt(np.finfo(np.dtype(grad.dtype)).max))
  return jnp.clip(grad, -bound, bound)
