"""CAGrad (Liu et al., NeurIPS 2021): the worst-task improvement within a ball around g0."""

from __future__ import annotations

import numbers
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.solvers import barrier

RESCALES = (0, 1, 2)


def cagrad_weighting(gram: jax.Array, c: float = 0.5, *, rescale: int = 1,
                     tol: Optional[float] = None, max_iter: int = 100,
                     previous=None) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""CAGrad weights: d = g0 + (φ/‖g_w*‖) g_w*, φ = c‖g0‖, g0 the mean gradient.

  w* = argmin_{w∈Δ} wᵀG b + φ (wᵀGw)^½ with b = 1/K, the dual of
  max_d min_i ⟨g_i, d⟩ s.t. ‖d − g0‖ ≤ c‖g0‖ (its ½‖d‖² form in the paper).
  The inner problem is solved by a barrier method (the reference uses scipy
  SLSQP); 1e-8 regularises the square root, as in the reference, but is added
  after G is divided by its largest diagonal entry, so the weights do not
  depend on the gradients' scale (the reference adds it to the raw G, which
  changes its weights once ‖g_i‖² approaches 1e-8). Another deviation:
  ‖g_w*‖ is floored at (K·ε)^½·Σ_i w*_i ‖g_i‖, the size of its
  rounding error from G, before dividing by it, so that d stays in the ball
  when g_w* vanishes (g0 ≈ 0 in float32); above the floor nothing changes.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    c: radius of the ball, relative to ‖g0‖.
    rescale: 0 → d, 1 → d/(1 + c²) (official default), 2 → d/(1 + c).
      torchjd's CAGrad is ``rescale=0``.
    tol: barrier-method target gap (default: the solver's, per dtype).
    max_iter: cap on Newton steps.
    previous: an optional :class:`~conicgrad_jax.solvers.barrier.PreviousSolution`
      holding an earlier w* to start from; its answer is kept only when its
      Frank–Wolfe gap certifies it to ``tol``
      (:func:`~conicgrad_jax.solvers.barrier.warm_started_minimize`).

  Returns:
    ``(weights (K,), SolverInfo(iterations))``.
  """
  validation.check_unit_interval("c", c, closed_right=True)
  weights, info, _ = _solve(gram, c, rescale=rescale, tol=tol, max_iter=max_iter,
                            previous=previous)
  return weights, info


def _check_rescale(rescale):
  if not (isinstance(rescale, numbers.Integral) and not isinstance(rescale, bool)
          and int(rescale) in RESCALES):
    raise ValueError(f"`rescale` must be one of {RESCALES}, got {rescale!r}.")


def _solve(gram, c, *, rescale, tol, max_iter, previous):
  """CAGrad's weights, SolverInfo and the simplex weights w* (the solver's solution)."""
  _check_rescale(rescale)
  gram_n, _ = _numeric.normalized_gram(gram)
  k = gram_n.shape[0]
  dtype = gram_n.dtype
  b = jnp.full((k,), 1.0 / k, dtype)
  g0_norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram_n, b), 0.0) + 1e-8)
  phi = c * g0_norm + 1e-8
  gb = _numeric.matvec(gram_n, b)
  f = lambda w: jnp.dot(w, gb) + phi * jnp.sqrt(jnp.maximum(_numeric.quad(gram_n, w), 0.0) + 1e-8)
  res = barrier.warm_started_minimize(f, jnp.full((k,), 1.0 / k, dtype), previous, simplex=True,
                                      gap=lambda w: barrier.simplex_gap(f, w), tol=tol,
                                      max_iter=max_iter, smooth_polish=True)
  w = res.x
  gw_norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram_n, w), 0.0))
  # wᵀGw from G is off by up to K·eps·(Σ_i w_i ‖g_i‖)², so ‖g_w*‖ below
  # (K·eps)^½·Σ_i w_i ‖g_i‖ is rounding noise: dividing by it would blow the noise up and
  # leave the ball ‖d − g0‖ ≤ φ (by tenths of max_i ‖g_i‖ in float32 when g0 ≈ 0). Below
  # that floor the step along g_w* is shortened instead; above it this is the reference's
  # φ/(‖g_w*‖ + 1e-8).
  combined_norm = jnp.dot(w, _numeric.gradient_norms(gram_n))
  resolved = jnp.maximum(gw_norm, jnp.sqrt(k * jnp.finfo(dtype).eps) * combined_norm)
  weights = b + (phi / (resolved + 1e-8)) * w
  divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
  return weights / divisor, aggregator.SolverInfo(res.iterations), w


def cagrad(c: float = 0.4, *, rescale: int = 1, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None, max_iter: int = 100, warm_start: bool = True,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Conflict-averse gradient descent: the best worst-task direction near the mean gradient.

  With g0 the mean task gradient, the direction solves
  max_d min_i ⟨g_i, d⟩ s.t. ‖d − g0‖ ≤ c‖g0‖, through its dual over the
  simplex:

  .. math::

     w^* = \arg\min_{w \in \Delta} \langle g_w, g_0\rangle + c\|g_0\|\,\|g_w\|,
     \qquad d = \Big(g_0 + \frac{c\|g_0\|}{\|g_{w^*}\|} g_{w^*}\Big) / r,

  with g_w = Σ_i w_i g_i. It needs only the Gram matrix.

  Args:
    c: radius of the ball around g0, relative to ‖g0‖, in [0, 1]; ``c = 0``
      gives the mean gradient. Default 0.4 as in the Nash-MTL and FAMO code
      bases (LibMTL and the official parser use 0.5).
    rescale: the divisor r: ``1`` → 1 + c² (the official default), ``2`` →
      1 + c, ``0`` → 1 (torchjd).
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    max_iter: cap on the barrier method's Newton steps.
    warm_start: start each solve from the previous update's simplex weights
      w* (kept in the state), moved strictly inside the simplex, with the
      barrier centred at its final level; that answer is kept only when its
      Frank–Wolfe gap is within the cold solve's tolerance, otherwise the
      solve starts from scratch.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`~conicgrad_jax.aggregator.WarmGramMethodState` (``previous``
    holds w*). ``update`` needs no extra arguments.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.cagrad(0.5, rescale=0)
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> updates, _ = jax.jit(tx.update)(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.18, 1.2, 1.2]

  References:
    Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021 (github.com/Cranial-XIX/CAGrad).

  Deviations from the reference code: the inner problem is solved by a
  barrier method in JAX (the reference calls scipy's SLSQP on the CPU); the
  update is not multiplied by K (the Nash-MTL code base's ``K·d``).
  """
  validation.check_unit_interval("c", c, closed_right=True)
  _check_rescale(rescale)
  validation.check_positive_int("max_iter", max_iter)

  def weighting(gram, previous, **_):
    return _solve(gram, c, rescale=rescale, tol=None, max_iter=max_iter, previous=previous)

  return aggregator.warm_started_gram_method(weighting, lambda k: (k,), warm_start=warm_start,
                                             shared=shared, num_tasks=num_tasks,
                                             precision=precision)
