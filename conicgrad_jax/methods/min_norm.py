"""MGDA, CAGrad, UPGrad and DualProj: weightings from convex programs over the task gradients' hull."""

from __future__ import annotations

from typing import Optional

import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.weighting import cagrad as cagrad_w
from conicgrad_jax.solvers import dual_cone
from conicgrad_jax.weighting import mgda as mgda_w


def mgda(normalization: str = "none", *, shared: validation.SharedSpec = None,
         num_tasks: Optional[int] = None, max_iter: int = 100,
         precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""MGDA: the min-norm element of the convex hull of the task gradients.

  d = Σ_i w*_i g_i, w* = argmin_{w∈Δ} ‖Σ_i w_i g_i/n_i‖². ``normalization``
  ("none", "l2", "loss", "loss+") picks n_i; "loss" and "loss+" need
  ``update(..., losses=...)``. Weights sum to 1 (the Nash-MTL code base
  multiplies by K). Solver: barrier method plus an exact active-face solve
  (the reference: projected gradient with line search, ≤ 250 iterations).

  Example:
    >>> import jax.numpy as jnp
    >>> tx = mgda()
    >>> u, _ = tx.update({"w": jnp.array([[-4.0, 1, 1], [6.0, 1, 1]])}, tx.init(None))
    >>> [round(float(x), 3) for x in u["w"]]
    [0.0, 1.0, 1.0]

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
  """
  if normalization not in mgda_w.NORMALIZATIONS:
    raise ValueError(f"`normalization` must be one of {mgda_w.NORMALIZATIONS}, got "
                     f"{normalization!r}.")
  validation.check_positive_int("max_iter", max_iter)

  def weights_fn(gram, losses=None, **_):
    return mgda_w.mgda_weighting(gram, losses, normalization=normalization, max_iter=max_iter)

  return aggregator.stateless_gram_method(weights_fn, shared=shared, num_tasks=num_tasks,
                                         precision=precision)


def cagrad(c: float = 0.4, *, rescale: int = 1, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None, max_iter: int = 100,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""CAGrad: maximise the worst task's improvement within ‖d − g0‖ ≤ c‖g0‖.

  d = (g0 + (c‖g0‖/‖g_w*‖) g_w*)/r with w* = argmin_{w∈Δ} ⟨g_w, g0⟩ + c‖g0‖‖g_w‖,
  g0 the mean gradient; r = 1 + c² (``rescale=1``, official default), 1 + c
  (2) or 1 (0, torchjd). Default c = 0.4 as in the Nash-MTL/FAMO code bases
  (LibMTL and the official parser: 0.5). No ×K factor.

  References:
    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
  """
  validation.check_unit_interval("c", c, closed_right=True)
  if rescale not in cagrad_w.RESCALES:
    raise ValueError(f"`rescale` must be one of {cagrad_w.RESCALES}, got {rescale!r}.")

  def weights_fn(gram, **_):
    return cagrad_w.cagrad_weighting(gram, c, rescale=rescale, max_iter=max_iter)

  return aggregator.stateless_gram_method(weights_fn, shared=shared, num_tasks=num_tasks,
                                         precision=precision)


def upgrad(*, preference=None, norm_eps: float = dual_cone.NORM_EPS,
           reg_eps: float = dual_cone.REG_EPS, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None, max_iter: int = 100,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""UPGrad: the mean of each task gradient's projection onto the dual cone {x : Jx ≥ 0}.

  Every task's directional derivative along the update is ≥ 0 (up to
  ``reg_eps``). Weights w = Σ_i v*(p_i e_i), v*(u) = argmin_{v≥u} vᵀĜv with Ĝ
  trace-normalised plus reg_eps·I, as torchjd; one K-variable QP per task,
  solved in JAX (torchjd: quadprog on the CPU).

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (torchjd).
  """
  validation.check_preference(preference)

  def weights_fn(gram, **_):
    return dual_cone.upgrad_weighting(gram, preference, norm_eps=norm_eps, reg_eps=reg_eps,
                                      max_iter=max_iter)

  return aggregator.stateless_gram_method(weights_fn, shared=shared, num_tasks=num_tasks,
                                         precision=precision)


def dualproj(*, preference=None, norm_eps: float = dual_cone.NORM_EPS,
             reg_eps: float = dual_cone.REG_EPS, shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None, max_iter: int = 100,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""DualProj: the projection of the (preference-weighted) mean gradient onto the dual cone.

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (torchjd).
  """
  validation.check_preference(preference)

  def weights_fn(gram, **_):
    return dual_cone.dualproj_weighting(gram, preference, norm_eps=norm_eps, reg_eps=reg_eps,
                                        max_iter=max_iter)

  return aggregator.stateless_gram_method(weights_fn, shared=shared, num_tasks=num_tasks,
                                         precision=precision)
