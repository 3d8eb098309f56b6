"""DualProj (Quinton & Rey, torchjd): the mean gradient projected onto the dual cone."""

from __future__ import annotations

from typing import Optional

import jax
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.solvers import dual_cone


def dualproj_weighting(gram: jax.Array, preference: Optional[jax.Array] = None, *,
                       norm_eps: float = dual_cone.NORM_EPS, reg_eps: float = dual_cone.REG_EPS,
                       tol: Optional[float] = None, max_iter: int = 100,
                       previous=None) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""DualProj weights: w = v*(p) = argmin_{v ≥ p} vᵀĜv, the projection of Jᵀp onto {x : Jx ≥ 0}.

  Ĝ = G/trace(G) + reg_eps·I as
  :func:`~conicgrad_jax.solvers.dual_cone.regularized_gram`.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    preference: p, normalised to sum 1; uniform by default (torchjd's mean).
    norm_eps: below this trace, Ĝ drops its G part (torchjd's ``norm_eps``).
    reg_eps: the ridge added to the trace-normalised G (torchjd's ``reg_eps``).
    tol: barrier-method target gap (default: the solver's, per dtype).
    max_iter: cap on Newton steps.
    previous: an optional :class:`~conicgrad_jax.solvers.barrier.PreviousSolution`
      holding earlier weights to start from
      (:func:`~conicgrad_jax.solvers.dual_cone.dual_cone_projection_weights`).

  Returns:
    ``(weights (K,), SolverInfo(iterations))``.
  """
  validation.check_preference(preference, gram.shape[0])
  p_hat = dual_cone.regularized_gram(gram, norm_eps, reg_eps)
  p = _numeric.as_preference(preference, p_hat.shape[0], p_hat.dtype)
  w, iterations = dual_cone.dual_cone_projection_weights(p_hat, p, tol=tol, max_iter=max_iter,
                                                         previous=previous)
  return w, aggregator.SolverInfo(iterations)


def dualproj(*, preference=None, norm_eps: float = dual_cone.NORM_EPS,
             reg_eps: float = dual_cone.REG_EPS, shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None, max_iter: int = 100, warm_start: bool = True,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""DualProj: the projection of the (preference-weighted) mean gradient onto the dual cone.

  .. math::

     d = \pi_{\mathcal C}\Big(\sum_i p_i g_i\Big), \qquad
     \mathcal C = \{x : Jx \ge 0\},

  computed as Jᵀv*, v* = argmin_{v ≥ p} vᵀĜv (one K-variable QP on the Gram
  matrix). No task's directional derivative along d is negative (up to
  ``reg_eps``); d is the mean gradient when that already conflicts with no
  task.

  Args:
    preference: optional non-negative weights p (normalised to sum 1); the
      mean (p = 1/K) by default.
    norm_eps: Ĝ = G/trace(G) + reg_eps·I drops its G part when trace(G) <
      ``norm_eps`` (torchjd's default 1e-4).
    reg_eps: the ridge of Ĝ (torchjd's default 1e-4).
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    max_iter: cap on the barrier method's Newton steps.
    warm_start: start each solve from the previous update's weights (kept
      in the state): first the exact solve on their active set, then the
      barrier from them; either answer is kept only when its duality gap is
      within the cold solve's tolerance, otherwise the solve starts from
      scratch.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`~conicgrad_jax.aggregator.WarmGramMethodState`. ``update`` needs
    no extra arguments.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.dualproj()
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> updates, _ = jax.jit(tx.update)(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.56, 1.11, 1.11]

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    arXiv:2406.16232, 2024 (github.com/TorchJD/torchjd).

  Deviations from the reference code: the QP is solved in JAX by a barrier
  method and exact active-set steps (torchjd calls quadprog on the CPU).
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
    w, info = dualproj_weighting(gram, preference, norm_eps=norm_eps, reg_eps=reg_eps,
                                 max_iter=max_iter, previous=previous)
    return w, info, w

  return aggregator.warm_started_gram_method(weighting, lambda k: (k,), warm_start=warm_start,
                                             shared=shared, num_tasks=num_tasks,
                                             precision=precision)
