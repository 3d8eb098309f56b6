"""A small barrier-Newton minimiser for smooth convex K-dimensional problems.

Minimises a smooth convex f(x) over x > 0, optionally with Σ x = 1 (the
simplex), by the log-barrier method (Boyd & Vandenberghe, *Convex
Optimization*, §11.3): Newton steps on f(x)/μ − Σ log x_i with Jacobi-scaled
Cholesky solves (Hessians by autodiff, O(K³) per step), a vectorised Armijo
line search, and μ divided by 10 after each centring. Everything is a
``lax.while_loop`` with a fixed iteration cap, so it runs under ``jit`` and
``vmap``. Used by the Gram-level weightings whose inner problem is a convex
program in K variables (MGDA, CAGrad, UPGrad/DualProj, Nash-MTL, FairGrad).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from conicgrad_jax import _numeric

_LINE_SEARCH_STEPS = 30
KAPPA = 10.0      # barrier parameter reduction per centring (also the cone solver's)
CENTRED = 0.25    # Newton decrement² below which a point counts as centred
_QUADRATIC = 1e-4   # centre_only: Newton's decrement² below which full steps are taken
_WARM_GAP = 0.1   # a warm start centres at ν·μ = tol/10: room for its certificate, gap ≤ tol
_WARM_CHECK = 100.0   # the gap bound a warm barrier's own convergence claim must also meet
_WARM_MAX_ITER = 20   # a warm barrier's Newton steps (from a nearby point it needs few)


def armijo_step(objective, x, step, decrement2, *, steps=_LINE_SEARCH_STEPS):
  """Step length by backtracking (all candidates evaluated at once, jit-friendly).

  Tries 1, ½, ¼, ... and returns the first length satisfying Armijo's condition
  f(x + a·step) ≤ f(x) − ¼·a·decrement² (``objective`` is +inf outside the
  domain), 0 if none does or the step is not finite, and the finiteness flag.
  """
  finite = jnp.isfinite(decrement2) & jnp.all(jnp.isfinite(step))
  step = jnp.where(finite, step, 0.0)
  alphas = 0.5 ** jnp.arange(steps, dtype=x.dtype)
  f0 = objective(x)
  trial = jax.vmap(lambda a: objective(x + a * step))(alphas)
  ok = trial <= f0 - 0.25 * alphas * decrement2
  return jnp.where(jnp.any(ok) & finite, alphas[jnp.argmax(ok)], 0.0), step, finite


class BarrierResult(NamedTuple):
  x: jax.Array
  iterations: jax.Array
  gap_bound: jax.Array   # ν·μ at exit: the barrier's bound on f(x) − f* when centred
  decrement2: jax.Array  # the last Newton decrement² (at x, or just before the last step)
  converged: jax.Array   # stopped centred at ν·μ ≤ tol (or at the rounding floor), not stalled


class _State(NamedTuple):
  x: jax.Array
  mu: jax.Array
  iterations: jax.Array
  done: jax.Array
  decrement2: jax.Array
  converged: jax.Array


def default_tol(dtype) -> float:
  return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def barrier_minimize(f: Callable[[jax.Array], jax.Array], x0: jax.Array, *,
                     simplex: bool, tol=None, max_iter: int = 100,
                     mu0=1.0, centre_only: bool = False, skip=False) -> BarrierResult:
  """Minimises f over {x > 0} (and Σx = 1 if ``simplex``) from a strictly feasible x0.

  With ``centre_only`` it minimises f(x)/μ0 − Σ log x_i itself (no path
  following): Newton until the decrement is negligible. Problems whose
  objective already contains −Σ log x (Nash-MTL, FairGrad) use this.
  ``mu0`` may be traced (a warm start begins low on the central path);
  ``skip`` (a traced bool) returns x0 after 0 iterations.
  """
  dtype = x0.dtype
  k = x0.shape[0]
  tol = default_tol(dtype) if tol is None else tol
  nu = jnp.asarray(k, dtype)

  def objective(x, mu):
    feasible = jnp.all(x > 0)
    value = f(jnp.where(feasible, x, 1.0)) / mu - jnp.sum(jnp.log(jnp.where(feasible, x, 1.0)))
    return jnp.where(feasible & jnp.isfinite(value), value, jnp.inf)

  def newton_step(x, mu):
    grad = jax.grad(f)(x) / mu - 1.0 / x
    hess = jax.hessian(f)(x) / mu
    # Variables scaled by x: the barrier's Hessian becomes I.
    hs = x[:, None] * hess * x[None, :]
    hs = 0.5 * (hs + hs.T) + jnp.eye(k, dtype=dtype)
    gs = x * grad
    chol = jax.scipy.linalg.cho_factor(hs, lower=True)
    y1 = jax.scipy.linalg.cho_solve(chol, gs)
    if simplex:
      y2 = jax.scipy.linalg.cho_solve(chol, x)
      y1 = y1 - (jnp.dot(x, y1) / jnp.dot(x, y2)) * y2
    step = -x * y1
    if simplex:
      # At small μ the two solves are large and nearly cancel, so the step's
      # sum is off zero by far more than rounding of the step itself; remove
      # that drift along x, or the iterates leave Σx = 1 (by 8 % in float32
      # within 5 steps on a warm start).
      step = step - x * (jnp.sum(step) / jnp.sum(x))
    # The decrement of the step actually taken, −∇ᵀstep (= gsᵀy1 without the
    # correction); the uncorrected one is rounding noise at small μ, and the
    # centring test would follow that noise.
    return step, -jnp.dot(grad, step)

  def body(state):
    x, mu = state.x, state.mu
    step, decrement2 = newton_step(x, mu)
    alpha, step, finite = armijo_step(lambda v: objective(v, mu), x, step, decrement2)
    small_mu = (nu * mu <= tol) | centre_only
    centred = decrement2 < jnp.where(centre_only, tol, CENTRED)
    # In Newton's quadratic region Armijo's test is decided by rounding alone;
    # the full step is then still the better point unless it leaves the
    # domain or raises the objective beyond rounding.
    quadratic_region = decrement2 < jnp.where(centre_only, _QUADRATIC, CENTRED)
    f0, f1 = objective(x, mu), objective(x + step, mu)
    full = (quadratic_region & finite & jnp.isfinite(f1)
            & (f1 <= f0 + 16 * jnp.finfo(dtype).eps * (1 + jnp.abs(f0))))
    alpha = jnp.where(full, 1.0, alpha)
    stalled = alpha == 0.0
    # Deep in the quadratic region the decrement² falls at least 4× per
    # step; when it no longer does, it has reached the rounding floor
    # (float32 may not reach a small tol): converged to working precision.
    stagnated = centre_only & (decrement2 < _QUADRATIC) & (4 * decrement2 > state.decrement2)
    new_mu = jnp.where((centred | stalled) & ~small_mu, mu / KAPPA, mu)
    done = (small_mu & (centred | stalled | stagnated)) | ~finite
    converged = small_mu & (centred | stagnated) & finite
    return _State(x + alpha * step, new_mu, state.iterations + 1, done, decrement2, converged)

  def cond(state):
    return (~state.done) & (state.iterations < max_iter)

  final = jax.lax.while_loop(
      cond, body, _State(x0, jnp.asarray(mu0, dtype), jnp.asarray(0, jnp.int32),
                         jnp.asarray(skip), jnp.asarray(jnp.inf, dtype), jnp.asarray(False)))
  return BarrierResult(final.x, final.iterations, nu * final.mu, final.decrement2,
                       final.converged)


def _active_set(x, gap_bound):
  """The barrier's active coordinates, x_i > √(gap bound) (the largest if none is)."""
  active = x > jnp.sqrt(gap_bound)
  return jnp.where(jnp.any(active), active, x >= jnp.max(x))


def _if_feasible_and_no_worse(f, x, candidate, also=True):
  """``candidate`` if it is finite, non-negative, ``also`` holds and f does not rise; else x."""
  dtype = x.dtype
  ok = (jnp.all(candidate >= 0) & jnp.all(jnp.isfinite(candidate)) & also
        & (f(candidate) <= f(x) + 10 * jnp.finfo(dtype).eps * (1 + jnp.abs(f(x)))))
  return jnp.where(ok, candidate, x)


def polish_quadratic(f: Callable[[jax.Array], jax.Array], x: jax.Array,
                     gap_bound: jax.Array, *, simplex: bool) -> tuple[jax.Array, jax.Array]:
  """Active-set steps for a convex quadratic f from the barrier's point x.

  Starts from the barrier's active face, x_i > √(gap bound), and solves the KKT
  system of min f on {x_i = 0 for inactive i (, Σx = 1)} by least squares
  (singular Hessians are fine). A face whose solution has negative weights
  loses them; otherwise the inactive coordinate whose reduced gradient
  ∂f/∂x_i (+ the simplex multiplier) is most negative joins it; the steps end
  at a solution that meets the KKT conditions' signs to rounding (every weight
  ≥ 0, every reduced gradient ≥ 0), or after 2K + 2 faces. The barrier's
  stopping rule is an absolute gap, which leaves a relative error of several
  percent where the optimum is small against the objective's scale (MGDA's
  min norm far below max ‖g_i‖, a nearly vanishing projection in UPGrad), and
  the face it suggests can be wrong there.

  Returns the best point seen, x or a feasible face solution, by the change of
  f from x computed exactly for a quadratic (∇f(x)ᵀd + ½dᵀHd: differences of f
  values are rounding at that scale), so the result is never worse than x;
  and the number of faces solved.
  """
  k = x.shape[0]
  dtype = x.dtype
  eps = jnp.finfo(dtype).eps
  hess = jax.hessian(f)(jnp.zeros_like(x))
  hess = 0.5 * (hess + hess.T)
  lin = jax.grad(f)(jnp.zeros_like(x))
  hess_scale = jnp.max(jnp.abs(hess))
  lin_scale = jnp.max(jnp.abs(lin))
  grad_x = _numeric.matvec(hess, x) + lin

  def face_solution(active):
    mask = active.astype(dtype)
    hess_a = mask[:, None] * hess * mask[None, :] + jnp.diag(1.0 - mask)
    rhs = -lin * mask
    if simplex:
      kkt = jnp.block([[hess_a, mask[:, None]], [mask[None, :], jnp.zeros((1, 1), dtype)]])
      solution = jnp.linalg.lstsq(kkt, jnp.concatenate([rhs, jnp.ones((1,), dtype)]))[0]
      sol, multiplier = solution[:k] * mask, solution[k]
    else:
      sol, multiplier = jnp.linalg.lstsq(hess_a, rhs)[0] * mask, jnp.zeros((), dtype)
    # The reduced gradient: 0 on the face, and ≥ 0 off it at the optimum.
    return sol, _numeric.matvec(hess, sol) + lin + multiplier

  def step(carry):
    index, active, best, best_change, _ = carry
    sol, reduced = face_solution(active)
    size = jnp.sum(jnp.abs(sol))
    negative = active & (sol < -8 * k * eps * size)
    violating = ~active & (reduced < -8 * k * eps * (hess_scale * size + lin_scale))
    finite = jnp.all(jnp.isfinite(sol))
    candidate = jnp.maximum(sol, 0.0)
    if simplex:
      candidate = candidate / jnp.where(jnp.sum(candidate) > 0, jnp.sum(candidate), 1.0)
    move = candidate - x
    change = jnp.dot(grad_x, move) + 0.5 * _numeric.quad(hess, move)
    better = finite & ~jnp.any(negative) & (change < best_change)
    best = jnp.where(better, candidate, best)
    best_change = jnp.where(better, change, best_change)
    optimal = ~jnp.any(negative) & ~jnp.any(violating) & finite
    kept = active & ~negative
    if simplex:   # a face of the simplex keeps at least one coordinate
      kept = jnp.where(jnp.any(kept), kept, active)
    entering = jnp.arange(k) == jnp.argmin(jnp.where(violating, reduced, jnp.inf))
    active = jnp.where(jnp.any(negative), kept, active | (entering & jnp.any(violating)))
    return index + 1, active, best, best_change, optimal | ~finite

  faces, _, best, _, _ = jax.lax.while_loop(
      lambda carry: ~carry[4] & (carry[0] < 2 * k + 2), step,
      (jnp.asarray(0, jnp.int32), _active_set(x, gap_bound), x, jnp.zeros((), dtype),
       jnp.asarray(False)))
  return best, faces


def polish_on_simplex_face(f: Callable[[jax.Array], jax.Array], x: jax.Array,
                           gap_bound: jax.Array, *, steps: int = 3,
                           rounds: int = 3) -> jax.Array:
  """Newton steps for a smooth convex f on the barrier's active face of the simplex.

  Active: x_i > √(gap bound), as in :func:`polish_quadratic`; the inactive
  weights are set to 0 and each step solves the KKT system of the quadratic
  model on {x_i = 0 for inactive i, Σx = 1} by least squares. Newton's method
  converges quadratically there, which the barrier, whose float32 Newton
  systems degrade as μ falls, does not. When the face was guessed too large
  (the Newton point leaves the simplex), the weights it drives negative leave
  the face and the steps are repeated, up to ``rounds`` times. The result is
  kept only if it is feasible and does not increase f.
  """
  k = x.shape[0]
  dtype = x.dtype
  active = _active_set(x, gap_bound)
  y = jnp.where(active, x, 0.0)
  y = y / jnp.sum(y)
  for _ in range(rounds):
    mask = active.astype(dtype)
    for _ in range(steps):
      hess = mask[:, None] * jax.hessian(f)(y) * mask[None, :] + jnp.diag(1.0 - mask)
      kkt = jnp.block([[hess, mask[:, None]], [mask[None, :], jnp.zeros((1, 1), dtype)]])
      rhs = jnp.concatenate([-jax.grad(f)(y) * mask, jnp.zeros((1,), dtype)])
      y = y + jnp.linalg.lstsq(kkt, rhs)[0][:k] * mask
    leaving = active & (y < 0)
    active = jnp.where(jnp.any(active & ~leaving), active & ~leaving, active)
    y = jnp.where(active, jnp.maximum(y, 0.0), 0.0)
    y = y / jnp.where(jnp.sum(y) > 0, jnp.sum(y), 1.0)
  return _if_feasible_and_no_worse(
      f, x, y, jnp.abs(jnp.sum(y) - 1.0) <= jnp.sqrt(jnp.finfo(dtype).eps))


def simplex_gap(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """The Frank–Wolfe gap ∇f(x)ᵀx − min_i ∇f(x)_i, a bound on f(x) − min_Δ f (convex f).

  x is first scaled to sum 1 (the barrier's iterates drift off Σx = 1 by rounding).
  """
  x = x / jnp.sum(x)
  grad = jax.grad(f)(x)
  return jnp.dot(grad, x) - jnp.min(grad)


def orthant_qp_gap(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """A duality gap at x ≥ 0 of min_{x ≥ 0} f(x), f a convex quadratic, nonsingular Hessian H.

  With the multipliers λ = max(∇f(x), 0) and r = ∇f(x) − λ, the Lagrangian
  dual bound gives f(x) − f* ≤ λᵀx + ½ rᵀH⁻¹r.
  """
  grad = jax.grad(f)(x)
  lam = jnp.maximum(grad, 0.0)
  r = grad - lam
  hess = jax.hessian(f)(x)
  return jnp.dot(lam, x) + 0.5 * jnp.dot(r, jnp.linalg.solve(hess, r))


class PreviousSolution(NamedTuple):
  """A solver's last solution, to start the next solve from (the last training step's).

  Attributes:
    x: the solution (its shape is the solver's).
    valid: whether ``x`` holds one (False before the first solve).
  """
  x: jax.Array
  valid: jax.Array


def no_previous_solution(shape, dtype=jnp.float32) -> PreviousSolution:
  """A :class:`PreviousSolution` that holds nothing: the next solve starts from scratch."""
  return PreviousSolution(jnp.zeros(shape, dtype), jnp.asarray(False))


class WarmStartedResult(NamedTuple):
  x: jax.Array
  iterations: jax.Array   # Newton steps over the stages run, and the faces the active-set steps solved
  warm: jax.Array         # whether the answer came from the previous solution


def warm_started_minimize(f: Callable[[jax.Array], jax.Array], x_cold: jax.Array,
                          previous, *, simplex: bool, gap=None, tol=None,
                          max_iter: int = 100, quadratic: bool = False,
                          centre_only: bool = False,
                          smooth_polish: bool = False) -> WarmStartedResult:
  """:func:`barrier_minimize` started from a previous solution, kept only when certified.

  Without ``previous`` (or while it holds nothing) this is the cold solve:
  the barrier from ``x_cold`` at μ = 1 (then, for a ``quadratic`` f, the
  exact active-set solve :func:`polish_quadratic`; with ``smooth_polish``, a
  smooth f on the simplex, Newton steps on the active face,
  :func:`polish_on_simplex_face`). Otherwise, stages that
  each run only when the earlier ones were not certified:

  1. (``quadratic``) the active-set steps from the previous solution's
     support (each face solved counts as one step): one face when the
     support is unchanged;
  2. the barrier from the previous solution moved strictly inside,
     (1 − ε)x_prev + ε·x_cold with ε = √tol, centred once at the final
     μ0 = tol/(10ν) (no path following: from a nearby point the damped
     Newton steps are few: at most 20), then the active-set steps or polish
     as above;
     with ``centre_only``, Newton from x_prev itself;
  3. the cold solve.

  x_prev is ``previous.x`` clipped at 0 (and scaled to sum 1 on the simplex);
  a non-finite one, or one outside the open orthant for ``centre_only``,
  counts as none.

  A warm stage is certified when its barrier converged by the cold solve's
  own rule (``BarrierResult.converged``: centred, Newton decrement² < ¼, at
  ν·μ ≤ tol, the barrier's bound on f(x) − f*; with ``centre_only`` a
  decrement² below tol or at the rounding floor), not stalled nor stopped by
  ``max_iter``, or when ``gap(x)`` ≤ tol, ``gap`` an upper bound on
  f(x) − f* (:func:`simplex_gap`, :func:`orthant_qp_gap`; the only
  certificate of stage 1). Where ``gap`` is given, the barrier's own claim
  also needs gap(x) ≤ 100·tol: started off the central path at a small μ,
  float32 Newton systems can look centred where they are not.
  """
  dtype = x_cold.dtype
  tol = default_tol(dtype) if tol is None else tol
  nu = jnp.asarray(x_cold.shape[0], dtype)

  def finish(res):
    """The polished point and the faces solved (0 without active-set steps)."""
    none = jnp.zeros((), jnp.int32)
    if quadratic:
      return polish_quadratic(f, res.x, res.gap_bound, simplex=simplex)
    if smooth_polish:
      return polish_on_simplex_face(f, res.x, res.gap_bound), none
    return res.x, none

  def certified(x, res):
    # The cold solve's own exit rule (centred, at ν·μ ≤ tol), or the gap bound.
    # Started off the central path at a small μ, float32 Newton systems can look
    # centred where they are not (their decrement is rounding), so where a gap
    # bound exists it must confirm the barrier's claim, to _WARM_CHECK·tol.
    ok = jnp.asarray(False) if res is None else res.converged
    if gap is not None:
      g = gap(x)
      ok = jnp.isfinite(g) & ((g <= tol) | (ok & (g <= _WARM_CHECK * tol)))
    return ok

  if previous is None:
    res = barrier_minimize(f, x_cold, simplex=simplex, tol=tol, max_iter=max_iter,
                           centre_only=centre_only)
    x, faces = finish(res)
    return WarmStartedResult(x, res.iterations + faces, jnp.asarray(False))

  x_prev = jnp.maximum(previous.x.astype(dtype), 0.0)
  usable = jnp.asarray(previous.valid) & jnp.all(jnp.isfinite(x_prev))
  if simplex:
    total = jnp.sum(x_prev)
    usable &= total > 0
    x_prev = x_prev / jnp.where(total > 0, total, 1.0)
  if centre_only:
    usable &= jnp.all(x_prev > 0)
  x_prev = jnp.where(usable, x_prev, x_cold)

  if centre_only:
    mu_warm, start = jnp.asarray(1.0, dtype), x_prev
  else:
    mu_warm = jnp.asarray(_WARM_GAP * tol, dtype) / nu
    eps = min(math.sqrt(tol), 0.5)
    start = (1.0 - eps) * x_prev + eps * x_cold

  # The stages share one barrier loop and one active-set polish (one
  # compilation each): attempt 0 is the active-set steps from x_prev (the
  # barrier skipped), 1 the warm barrier, 2 the cold solve; 0 and 1 must be
  # certified.
  def attempt(carry):
    index, _, iterations, _ = carry
    crossover, cold = index == 0, index == 2
    res = barrier_minimize(f, jnp.where(cold, x_cold, jnp.where(crossover, x_prev, start)),
                           simplex=simplex, tol=tol,
                           max_iter=jnp.where(cold, max_iter, jnp.minimum(max_iter, _WARM_MAX_ITER)),
                           mu0=jnp.where(cold, 1.0, mu_warm), centre_only=centre_only,
                           skip=crossover)
    if quadratic:
      bound = jnp.where(crossover, jnp.asarray(tol * tol, dtype), res.gap_bound)
      x, faces = polish_quadratic(f, res.x, bound, simplex=simplex)
    else:
      x, faces = finish(res)
    ok = cold | (certified(x, res) & ~crossover) | (crossover & certified(x, None))
    return index + 1, x, iterations + res.iterations + faces, ok

  first = jnp.where(usable, 0 if quadratic else 1, 2)
  index, x, iterations, _ = jax.lax.while_loop(
      lambda carry: ~carry[3], attempt,
      (first, x_cold, jnp.asarray(0, jnp.int32), jnp.asarray(False)))
  return WarmStartedResult(x, iterations, index <= 2)
