"""UPGrad (Quinton & Rey, torchjd): the mean of the task gradients' projections onto the dual cone."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.solvers import dual_cone


def upgrad_weighting(gram: jax.Array, preference: Optional[jax.Array] = None, *,
                     norm_eps: float = dual_cone.NORM_EPS, reg_eps: float = dual_cone.REG_EPS,
                     tol: Optional[float] = None, max_iter: int = 100,
                     previous=None) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""UPGrad weights: w = Σ_i v*(p_i e_i), the sum of each scaled gradient's dual-cone projection.

  v*(u) = argmin_{v ≥ u} vᵀĜv with Ĝ = G/trace(G) + reg_eps·I
  (:func:`~conicgrad_jax.solvers.dual_cone.regularized_gram`), so that
  Jᵀv*(u) projects Jᵀu onto {x : Jx ≥ 0}. One K-variable QP per task, solved
  together under ``vmap``.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    preference: p, normalised to sum 1; uniform by default (torchjd's mean).
    norm_eps: below this trace, Ĝ drops its G part (torchjd's ``norm_eps``).
    reg_eps: the ridge added to the trace-normalised G (torchjd's ``reg_eps``).
    tol: barrier-method target gap (default: the solver's, per dtype).
    max_iter: cap on Newton steps per QP.
    previous: an optional :class:`~conicgrad_jax.solvers.barrier.PreviousSolution`
      holding the K QPs' earlier solutions v*(p_i e_i) as rows, to start from.

  Returns:
    ``(weights (K,), SolverInfo(iterations))``, iterations summed over the K QPs.
  """
  validation.check_preference(preference, gram.shape[0])
  v, info = upgrad_projections(gram, preference, norm_eps=norm_eps, reg_eps=reg_eps, tol=tol,
                               max_iter=max_iter, previous=previous)
  return jnp.sum(v, axis=0), info


def upgrad_projections(gram, preference=None, *, norm_eps=dual_cone.NORM_EPS,
                       reg_eps=dual_cone.REG_EPS, tol=None, max_iter=100, previous=None):
  """The K projections' coefficients v*(p_i e_i), as the rows of a K×K matrix.

  Returns:
    ``(v (K, K), SolverInfo(iterations))``, iterations summed over the K QPs.
  """
  p_hat = dual_cone.regularized_gram(gram, norm_eps, reg_eps)
  k = p_hat.shape[0]
  p = _numeric.as_preference(preference, k, p_hat.dtype)
  if previous is None:
    v, iterations = jax.vmap(lambda u: dual_cone.dual_cone_projection_weights(
        p_hat, u, tol=tol, max_iter=max_iter))(jnp.diag(p))
  else:
    v, iterations = jax.vmap(lambda u, x: dual_cone.dual_cone_projection_weights(
        p_hat, u, tol=tol, max_iter=max_iter, previous=previous._replace(x=x)))(
            jnp.diag(p), previous.x)
  return v, aggregator.SolverInfo(jnp.sum(iterations))


def upgrad(*, preference=None, norm_eps: float = dual_cone.NORM_EPS,
           reg_eps: float = dual_cone.REG_EPS, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None, max_iter: int = 100, warm_start: bool = True,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Unconflicting projection of gradients: average each task gradient's projection onto the dual cone.

  With J the matrix of task gradients and p the preference, the update is

  .. math::

     d = \sum_i p_i\, \pi_{\mathcal C}(g_i), \qquad
     \mathcal C = \{x : Jx \ge 0\},

  where each projection is Jᵀv*, v* = argmin_{v ≥ p_i e_i} vᵀĜv (a K-variable
  QP on the Gram matrix). Every task's directional derivative along d is
  non-negative (up to ``reg_eps``), and d is the mean gradient when no pair
  of gradients conflicts.

  Args:
    preference: optional non-negative weights p (normalised to sum 1); the
      mean (p = 1/K) by default.
    norm_eps: Ĝ = G/trace(G) + reg_eps·I drops its G part when trace(G) <
      ``norm_eps`` (torchjd's default 1e-4).
    reg_eps: the ridge of Ĝ (torchjd's default 1e-4); it makes the QP
      strictly convex and bounds how far below 0 a directional derivative
      may fall.
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    max_iter: cap on the barrier method's Newton steps per QP.
    warm_start: start each of the K solves from its solution at the previous
      update (kept in the state): first the exact solve on its active set,
      then the barrier from it; either answer is kept only when its duality
      gap is within the cold solve's tolerance, otherwise that QP starts
      from scratch.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`~conicgrad_jax.aggregator.WarmGramMethodState` (``previous``
    holds the K QPs' solutions as rows). ``update`` needs no extra arguments.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.upgrad()
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> updates, _ = jax.jit(tx.update)(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.29, 1.9, 1.9]

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    arXiv:2406.16232, 2024 (github.com/TorchJD/torchjd).

  Deviations from the reference code: the QPs are solved in JAX by a barrier
  method and exact active-set steps (torchjd calls quadprog on the CPU),
  so the method runs under ``jit`` on any device.
  """
  validation.check_static_positive_int("num_tasks", num_tasks, allow_none=True)
  validation.check_preference(preference, num_tasks)
  validation.check_positive_int("max_iter", max_iter)
  validation.check_positive("norm_eps", norm_eps, allow_zero=True)
  validation.check_positive("reg_eps", reg_eps, allow_zero=True)
  for name, value in (("norm_eps", norm_eps), ("reg_eps", reg_eps)):
    v = validation.concrete_float(value)
    if v is not None and not v >= 0:
      raise ValueError(f"`{name}` must be a non-negative number, got {value!r}.")

  def weighting(gram, previous, **_):
    v, info = upgrad_projections(gram, preference, norm_eps=norm_eps, reg_eps=reg_eps,
                                 max_iter=max_iter, previous=previous)
    return jnp.sum(v, axis=0), info, v

  return aggregator.warm_started_gram_method(weighting, lambda k: (k, k),
                                             warm_start=warm_start, shared=shared,
                                             num_tasks=num_tasks, precision=precision)

