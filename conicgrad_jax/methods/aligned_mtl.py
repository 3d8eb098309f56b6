"""Aligned-MTL (Senushkin et al., CVPR 2023): task gradients aligned to an orthogonal, equal-norm system."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

SCALE_MODES = ("min", "median", "rmse")


def aligned_mtl_weighting(gram: jax.Array, preference: Optional[jax.Array] = None, *,
                          scale_mode: str = "min") -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""Aligned-MTL weights: α = B p with B = σ·V Λ^{−½} Vᵀ on the eigenpairs above tolerance.

  Tolerance max(λ)·K·ε_float32 (the reference uses float32's epsilon); σ² is
  the smallest kept eigenvalue ("min", default), their median (the lower middle
  value for an even count, as ``torch.median`` in the reference), or their mean
  ("rmse"). B has eigenvalues ≤ 1, so nothing blows up.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    preference: p, normalised to sum 1; uniform by default.
    scale_mode: "min", "median" or "rmse", the choice of σ².

  Returns:
    ``(weights (K,), no_solver_info())``.
  """
  validation.check_preference(preference, gram.shape[0])
  if scale_mode not in SCALE_MODES:
    raise ValueError(f"`scale_mode` must be one of {SCALE_MODES}, got {scale_mode!r}.")
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  k = gram.shape[0]
  p = _numeric.as_preference(preference, k, dtype)
  vals, vecs = jnp.linalg.eigh(0.5 * (gram + gram.T))
  tol = jnp.max(vals) * k * float(jnp.finfo(jnp.float32).eps)
  keep = vals > tol
  kept = jnp.where(keep, vals, jnp.nan)
  if scale_mode == "min":
    sigma2 = jnp.nanmin(kept)
  elif scale_mode == "median":
    # torch.median, as the reference: the lower middle value for an even count (the NaNs
    # of the dropped eigenvalues sort last).
    count = jnp.sum(keep)
    sigma2 = jnp.sort(kept)[jnp.maximum(count - 1, 0) // 2]
  else:
    sigma2 = jnp.nanmean(kept)
  inv_root = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, vals, 1.0)), 0.0)
  b = jnp.sqrt(sigma2) * (vecs * inv_root[None, :]) @ vecs.T
  out = _numeric.matvec(b, p)
  return jnp.where(jnp.any(keep), out, p), aggregator.no_solver_info()


def aligned_mtl(*, preference=None, scale_mode: str = "min",
                shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
                precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Aligned-MTL: align the task gradients' principal components (condition number 1).

  With G = VΛVᵀ, the aligned task gradients BJ, B = σVΛ^{−½}Vᵀ, are
  orthogonal with equal norms σ, and the update is their preference-weighted
  combination:

  .. math::

     d = J^\top \alpha, \qquad \alpha = \sigma V \Lambda^{-1/2} V^\top p,

  eigenvalues below max(λ)·K·ε_float32 dropped (a rank-deficient G keeps its
  range).

  Args:
    preference: optional non-negative weights p (normalised to sum 1);
      uniform (1/K) by default.
    scale_mode: σ² is the smallest kept eigenvalue (``"min"``, default, as
      the reference), their median (``"median"``; the lower middle value for
      an even count, as the reference's ``torch.median``) or their mean
      (``"rmse"``).
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is an
    :class:`~conicgrad_jax.aggregator.GramMethodState`. ``update`` needs no
    extra arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.aligned_mtl()
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> updates, _ = tx.update(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.21, 0.97, 0.97]

  References:
    Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023 (github.com/SamsungLabs/MTL).

  Deviations from the reference code: p = 1/K by default (torchjd); the
  SamsungLabs code sums the aligned gradients, i.e. K times this update.
  """
  validation.check_static_positive_int("num_tasks", num_tasks, allow_none=True)
  validation.check_preference(preference, num_tasks)
  if scale_mode not in SCALE_MODES:
    raise ValueError(f"`scale_mode` must be one of {SCALE_MODES}, got {scale_mode!r}.")

  def weighting(gram, **_):
    return aligned_mtl_weighting(gram, preference, scale_mode=scale_mode)

  return aggregator.stateless_gram_method(weighting, shared=shared, num_tasks=num_tasks,
                                         precision=precision)
