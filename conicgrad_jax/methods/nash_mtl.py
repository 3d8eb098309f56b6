"""Nash-MTL (Navon et al., ICML 2022): the Nash bargaining solution α > 0 with Gα = 1/α."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.solvers import barrier
from conicgrad_jax.solvers import power_condition


def nash_mtl_weighting(gram: jax.Array, *, max_norm: float = 1.0, tol: Optional[float] = None,
                       max_iter: int = 100,
                       previous=None) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""Nash-MTL weights: α > 0 with Gα = 1/α (the Nash bargaining solution), d = Σ α_i g_i.

  Solved exactly by Newton's method on ½αᵀGα − Σ log α_i
  (:func:`~conicgrad_jax.solvers.power_condition.solve_power_condition` at
  α = 1), G regularised by 1e-6·‖G‖_F·I.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    max_norm: if > 0 and ‖d‖ > max_norm, α is scaled so that ‖d‖ = max_norm
      (torchjd's form of the reference's gradient clipping); 0 disables it.
    tol: Newton target gap (default 1e-12).
    max_iter: cap on Newton steps.
    previous: an optional :class:`~conicgrad_jax.solvers.barrier.PreviousSolution`
      holding an earlier α (before the ``max_norm`` scaling) to start
      Newton's method from.

  Returns:
    ``(weights (K,), SolverInfo(iterations))``.
  """
  weights, info, _ = _solve(gram, max_norm=max_norm, tol=tol, max_iter=max_iter,
                            previous=previous)
  return weights, info


def _solve(gram, *, max_norm, tol, max_iter, previous):
  """The weights, SolverInfo and the unscaled α (the next solve's start)."""
  w, iterations = power_condition.solve_power_condition(gram, 1.0, tol=tol, max_iter=max_iter,
                                                        previous=previous)
  return (power_condition.clip_to_norm(gram, w, max_norm), aggregator.SolverInfo(iterations),
          w)


class NashMTLState(NamedTuple):
  """State of :func:`nash_mtl`.

  Attributes:
    weights: the last update's weights: α after the ``max_norm`` scaling.
    step: updates taken so far (α is recomputed when ``step`` is a multiple
      of ``update_weights_every``).
    info: the :class:`~conicgrad_jax.aggregator.SolverInfo` of the last update
      (0 iterations when α was reused).
    previous: the last solution α before the ``max_norm`` scaling
      (:class:`~conicgrad_jax.solvers.barrier.PreviousSolution`), from which
      the next solve starts.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  step: jax.Array
  info: aggregator.SolverInfo
  previous: barrier.PreviousSolution
  nonfinite_steps: jax.Array


def nash_mtl(*, update_weights_every: int = 1, max_norm: float = 1.0, max_iter: int = 100,
             warm_start: bool = False, shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Nash-MTL: the update the tasks would agree on in a Nash bargaining game.

  The weights are the positive solution of

  .. math::

     G\alpha = 1/\alpha \quad (\text{element-wise}), \qquad d = \sum_i \alpha_i g_i,

  i.e. ⟨g_i, d⟩ = 1/α_i for every task: the maximiser of Σ_i log ⟨g_i, d⟩
  over a ball. α is found by Newton's method on the strictly convex
  ½αᵀGα − Σ_i log α_i.

  Args:
    update_weights_every: recompute α every this many updates and reuse the
      last α in between (the reference's speed-up; default 1, every step);
      a reused α is clipped against the current step's gradients (``max_norm``).
    max_norm: if > 0 and ‖d‖ > ``max_norm``, α is scaled down so that
      ‖d‖ = ``max_norm`` (default 1.0, as the reference clips); 0 disables it.
    max_iter: cap on Newton steps per recomputation.
    warm_start: start Newton's method from the last α (kept in the state,
      before the ``max_norm`` scaling); that answer is kept only when its
      Newton decrement meets the cold solve's stopping rule, otherwise
      Newton restarts from the cold start. Off by default: Newton from the
      cold start already converges in about 6 steps, and warm-starting
      measured no fewer (``python -m benchmarks perf --parts solver``) while
      it adds to the compiled program.
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`NashMTLState`. ``update`` needs no extra arguments.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.nash_mtl(max_norm=0.0)
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> _, state = jax.jit(tx.update)(task_grads, tx.init(None))
    >>> gram = task_grads["w"] @ task_grads["w"].T
    >>> bool(jnp.allclose(gram @ state.weights, 1.0 / state.weights, rtol=1e-3))
    True

  References:
    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022
    (github.com/AvivNavon/nash-mtl).

  Deviations from the reference code: α solves the bargaining condition
  exactly by Newton's method in JAX (the reference runs at most 20 rounds of a
  CVXPY/ECOS concave-convex procedure on the CPU, warm started); G is
  normalised by its Frobenius norm and regularised by 1e-6·I, since a
  rank-deficient G has no finite solution; the clipping scales the weights
  (torchjd's form) instead of clipping the parameters' gradient norm; α keeps
  the gradients' scale (α ~ 1/‖g‖), with no extra ×K.
  """
  validation.check_positive_int("update_weights_every", update_weights_every)
  validation.check_positive_int("max_iter", max_iter)
  _check_max_norm(max_norm)

  warm_start = validation.check_bool("warm_start", warm_start)

  def init_state(k, dtype):
    zero = jnp.zeros((), jnp.int32)
    return NashMTLState(aggregator.placeholder_weights(k, dtype), zero,
                        aggregator.no_solver_info(),
                        barrier.no_previous_solution((k or 0,), dtype), zero)

  def weigh(gram, state, **_):
    def solve(_):
      w, info, solution = _solve(gram, max_norm=max_norm, tol=None, max_iter=max_iter,
                                 previous=state.previous if warm_start else None)
      dtype = state.weights.dtype
      return (w.astype(dtype), info,
              barrier.PreviousSolution(solution.astype(dtype), jnp.asarray(True)))

    def reuse(_):
      # The reference reuses α itself and clips the current step's update.
      weights = power_condition.clip_to_norm(gram, state.previous.x, max_norm)
      return weights.astype(state.weights.dtype), aggregator.no_solver_info(), state.previous

    recompute = state.step % update_weights_every == 0
    weights, info, previous = jax.lax.cond(recompute, solve, reuse, None)
    return state._replace(weights=weights, info=info, previous=previous, step=state.step + 1)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)


def _check_max_norm(max_norm):
  v = validation.concrete_float(max_norm)
  if v is None or not v >= 0:
    raise ValueError(f"`max_norm` must be a non-negative number, got {max_norm!r}.")
