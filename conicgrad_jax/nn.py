"""Flax NNX modules of the architecture-level methods (imports flax; the rest of the package does not)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from conicgrad_jax import validation
from conicgrad_jax.methods import rotograd as rotograd_m


class RotoGradRotations(nnx.Module):
  """K trainable rotations of the first ``rotation_size`` features of a shared representation.

  ``__call__(z)`` returns the K rotated copies (K, ..., d); the task losses
  see the rotations through ``stop_gradient`` (as in the reference), so they
  are trained only by :meth:`loss`, RotoGrad's rotation objective (wrapped as
  ``representation_loss(params, rep_grads, *args)`` of
  :func:`conicgrad_jax.make_task_update` in representation mode, as
  ``examples/rotograd_digits.py`` does). The
  generators start at zero: every R_k starts as the identity.

  Args:
    num_tasks: K.
    latent_size: d, the representation's feature count.
    rotation_size: r ≤ d, how many leading features are rotated (default: all).
    dtype: the dtype of the rotated output; ``None`` (default) promotes the input's
      dtype with the float32 rotations, as ``nnx.Linear`` does.

  Example:
    >>> import jax.numpy as jnp
    >>> from conicgrad_jax.nn import RotoGradRotations
    >>> rot = RotoGradRotations(num_tasks=3, latent_size=8)
    >>> rot(jnp.ones((4, 8))).shape
    (3, 4, 8)

  References:
    Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask Learning", ICLR 2022.
  """

  def __init__(self, num_tasks: int, latent_size: int, *, rotation_size: Optional[int] = None,
               dtype=None):
    validation.check_static_positive_int("num_tasks", num_tasks)
    validation.check_static_positive_int("latent_size", latent_size)
    validation.check_static_positive_int("rotation_size", rotation_size, allow_none=True)
    rotation_size = latent_size if rotation_size is None else rotation_size
    if rotation_size > latent_size:
      raise ValueError(f"`rotation_size` must be in [1, latent_size={latent_size}], got "
                       f"{rotation_size}.")
    self.latent_size = latent_size
    self.dtype = dtype
    self.generators = nnx.Param(jnp.zeros((num_tasks, rotation_size, rotation_size)))

  def matrices(self) -> jax.Array:
    return rotograd_m.rotation_matrices(self.generators[...])

  def __call__(self, z: jax.Array) -> jax.Array:
    if z.shape[-1] != self.latent_size:
      raise ValueError(f"RotoGradRotations expects {self.latent_size} features, got shape "
                       f"{z.shape}.")
    rotations = jax.lax.stop_gradient(self.matrices())
    rotated = jax.vmap(lambda r: rotograd_m.rotate(z, r))(rotations)
    return rotated if self.dtype is None else rotated.astype(self.dtype)

  def loss(self, rep_grads: jax.Array) -> jax.Array:
    """RotoGrad's rotation objective for representation gradients of shape (K, B, d)."""
    if jnp.shape(rep_grads)[-1:] != (self.latent_size,):
      raise ValueError(f"RotoGradRotations.loss: `rep_grads` must have {self.latent_size} "
                       f"features (shape (K, batch, {self.latent_size})), got shape "
                       f"{jnp.shape(rep_grads)}.")
    return rotograd_m.rotation_loss(self.generators[...], rep_grads)
