"""FairGrad (Ban & Ji, ICML 2024): α-fair weights w > 0 with G w = w^(−1/α)."""

from __future__ import annotations

from typing import Optional

import jax
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.solvers import power_condition


def fairgrad_weighting(gram: jax.Array, alpha: float = 1.0, *, max_norm: float = 0.0,
                       tol: Optional[float] = None, max_iter: int = 100,
                       previous=None) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""FairGrad weights: w > 0 with G w = w^{−1/α} (α-fair utility maximisation), d = Σ w_i g_i.

  α = 1 is Nash-MTL's condition. Solved by Newton's method on the convex
  function whose stationarity it is
  (:func:`~conicgrad_jax.solvers.power_condition.solve_power_condition`),
  G regularised by 1e-6·‖G‖_F·I.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    alpha: the fairness exponent α > 0 (a Python float).
    max_norm: if > 0, w is scaled so that ‖d‖ ≤ max_norm; 0 (default, as
      LibMTL) disables it.
    tol: Newton target gap (default 1e-12).
    max_iter: cap on Newton steps.
    previous: an optional :class:`~conicgrad_jax.solvers.barrier.PreviousSolution`
      holding an earlier solution (before the ``max_norm`` scaling) to start
      Newton's method from.

  Returns:
    ``(weights (K,), SolverInfo(iterations))``.
  """
  a = validation.concrete_float(alpha)
  if a is not None and not 0 < a < float("inf"):
    raise ValueError(f"`alpha` must be a finite positive number, got {alpha!r}.")
  weights, info, _ = _solve(gram, alpha, max_norm=max_norm, tol=tol, max_iter=max_iter,
                            previous=previous)
  return weights, info


def _solve(gram, alpha, *, max_norm, tol, max_iter, previous):
  """The weights, SolverInfo and the unscaled solution (the next solve's start)."""
  w, iterations = power_condition.solve_power_condition(gram, float(alpha), tol=tol,
                                                        max_iter=max_iter, previous=previous)
  return (power_condition.clip_to_norm(gram, w, max_norm), aggregator.SolverInfo(iterations),
          w)


def fairgrad(alpha: float = 2.0, *, max_norm: float = 0.0, max_iter: int = 100,
             warm_start: bool = False, shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""FairGrad: the update that maximises the tasks' α-fair utility.

  The weights are the positive solution of

  .. math::

     G w = w^{-1/\alpha} \quad (\text{element-wise}), \qquad d = \sum_i w_i g_i,

  i.e. ⟨g_i, d⟩ = w_i^{−1/α}: the stationarity of the α-fair utility of the
  tasks' improvements. α = 1 is Nash-MTL's proportional fairness; α → ∞
  approaches max-min fairness.

  Args:
    alpha: the fairness exponent α > 0 (default 2.0, as in every official
      run script; the official parser's default 1.0 is Nash-MTL's condition).
    max_norm: if > 0 and ‖d‖ > ``max_norm``, the weights are scaled down so
      that ‖d‖ = ``max_norm`` (the official code clips at 1.0); 0 (default,
      as LibMTL) disables it.
    max_iter: cap on Newton steps.
    warm_start: start Newton's method from the previous update's solution
      (kept in the state, before the ``max_norm`` scaling); that answer is
      kept only when its Newton decrement meets the cold solve's stopping
      rule, otherwise Newton restarts from the cold start. Off by default:
      Newton from the cold start already converges in about 6 steps, and
      warm-starting measured no fewer (``python -m benchmarks perf --parts
      solver``) while it adds to the compiled program.
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`~conicgrad_jax.aggregator.WarmGramMethodState`. ``update`` needs
    no extra arguments.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.fairgrad(alpha=2.0)
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> _, state = jax.jit(tx.update)(task_grads, tx.init(None))
    >>> gram = task_grads["w"] @ task_grads["w"].T
    >>> w = state.weights
    >>> bool(jnp.allclose(gram @ w, w ** -0.5, rtol=1e-3))
    True

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024
    (github.com/OptMN-Lab/fairgrad).

  Deviations from the reference code: the condition is solved by Newton's
  method on a convex function in JAX (the reference calls scipy's
  ``least_squares`` on the CPU); G is normalised by its Frobenius norm and
  regularised by 1e-6·I, since a rank-deficient G has no finite solution;
  the clipping scales the weights instead of the parameters' gradient norm;
  the update is not multiplied by K (the official code's ``overwrite_grad``
  does so).
  """
  a = validation.concrete_float(alpha)
  if a is None or not 0 < a < float("inf"):
    raise ValueError(f"`alpha` must be a finite positive number, got {alpha!r}.")
  m = validation.concrete_float(max_norm)
  if m is None or not m >= 0:
    raise ValueError(f"`max_norm` must be a non-negative number, got {max_norm!r}.")
  validation.check_positive_int("max_iter", max_iter)

  def weighting(gram, previous, **_):
    return _solve(gram, a, max_norm=max_norm, tol=None, max_iter=max_iter, previous=previous)

  return aggregator.warm_started_gram_method(weighting, lambda k: (k,), warm_start=warm_start,
                                             shared=shared, num_tasks=num_tasks,
                                             precision=precision)
