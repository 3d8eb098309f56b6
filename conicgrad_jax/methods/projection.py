"""IMTL-G, Aligned-MTL and ConFIG: closed-form weightings of the Gram matrix."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.weighting import projection


def _no_iterations(fn):
  def weights_fn(gram, **_):
    return fn(gram), jnp.zeros((), jnp.int32)
  return weights_fn


def imtl_g(*, shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""IMTL-G: weights (summing to 1) giving equal projections of d on every unit task gradient.

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
  """
  return aggregator.stateless_gram_method(_no_iterations(projection.imtl_g_weighting),
                                         shared=shared, num_tasks=num_tasks, precision=precision)


def aligned_mtl(*, preference=None, scale_mode: str = "min",
                shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
                precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Aligned-MTL: align the task gradients' principal components (condition number 1).

  α = σ·VΛ^{−½}Vᵀ p; p = 1/K by default (torchjd; the reference sums, ×K).

  References:
    Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
  """
  validation.check_preference(preference)
  if scale_mode not in projection.SCALE_MODES:
    raise ValueError(f"`scale_mode` must be one of {projection.SCALE_MODES}, got {scale_mode!r}.")
  fn = lambda gram: projection.aligned_mtl_weighting(gram, preference, scale_mode=scale_mode)
  return aggregator.stateless_gram_method(_no_iterations(fn), shared=shared,
                                         num_tasks=num_tasks, precision=precision)


def config(*, preference=None, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""ConFIG: a conflict-free direction with equal cosines to all task gradients.

  References:
    Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", ICLR 2025.
  """
  validation.check_preference(preference)
  fn = lambda gram: projection.config_weighting(gram, preference)
  return aggregator.stateless_gram_method(_no_iterations(fn), shared=shared,
                                         num_tasks=num_tasks, precision=precision)
