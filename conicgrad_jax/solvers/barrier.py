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

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

_LINE_SEARCH_STEPS = 30
_KAPPA = 10.0
_CENTRED = 0.25


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


class _State(NamedTuple):
  x: jax.Array
  mu: jax.Array
  iterations: jax.Array
  done: jax.Array


def default_tol(dtype) -> float:
  return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def barrier_minimize(f: Callable[[jax.Array], jax.Array], x0: jax.Array, *,
                     simplex: bool, tol=None, max_iter: int = 100,
                     mu0: float = 1.0, centre_only: bool = False) -> BarrierResult:
  """Minimises f over {x > 0} (and Σx = 1 if ``simplex``) from a strictly feasible x0.

  With ``centre_only`` it minimises f(x)/μ0 − Σ log x_i itself (no path
  following): Newton until the decrement is negligible. Problems whose
  objective already contains −Σ log x (Nash-MTL, FairGrad) use this.
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
    return step, jnp.dot(gs, y1)

  def body(state):
    x, mu = state.x, state.mu
    step, decrement2 = newton_step(x, mu)
    alpha, step, finite = armijo_step(lambda v: objective(v, mu), x, step, decrement2)
    small_mu = (nu * mu <= tol) | centre_only
    centred = decrement2 < jnp.where(centre_only, tol, _CENTRED)
    stalled = alpha == 0.0
    new_mu = jnp.where((centred | stalled) & ~small_mu, mu / _KAPPA, mu)
    done = (small_mu & (centred | stalled)) | ~finite
    return _State(x + alpha * step, new_mu, state.iterations + 1, done)

  def cond(state):
    return (~state.done) & (state.iterations < max_iter)

  final = jax.lax.while_loop(
      cond, body, _State(x0, jnp.asarray(mu0, dtype), jnp.asarray(0, jnp.int32),
                         jnp.asarray(False)))
  return BarrierResult(final.x, final.iterations, nu * final.mu)


def polish_quadratic(f: Callable[[jax.Array], jax.Array], x: jax.Array,
                     gap_bound: jax.Array, *, simplex: bool) -> jax.Array:
  """One exact solve of a convex quadratic f on the barrier's active face.

  Active: x_i > √(gap bound). Solves the KKT system of min f on
  {x_i = 0 for inactive i (, Σx = 1)} by least squares (singular Hessians are
  fine) and keeps the result only if it is feasible and does not increase f.
  """
  k = x.shape[0]
  dtype = x.dtype
  active = x > jnp.sqrt(gap_bound)
  active = jnp.where(jnp.any(active), active, x >= jnp.max(x))
  mask = active.astype(dtype)
  hess = jax.hessian(f)(jnp.zeros_like(x))
  lin = jax.grad(f)(jnp.zeros_like(x))
  hess_a = mask[:, None] * hess * mask[None, :] + jnp.diag(1.0 - mask)
  rhs = -lin * mask
  if simplex:
    kkt = jnp.block([[hess_a, mask[:, None]], [mask[None, :], jnp.zeros((1, 1), dtype)]])
    sol = jnp.linalg.lstsq(kkt, jnp.concatenate([rhs, jnp.ones((1,), dtype)]))[0][:k]
  else:
    sol = jnp.linalg.lstsq(hess_a, rhs)[0]
  sol = sol * mask
  ok = (jnp.all(sol >= 0) & jnp.all(jnp.isfinite(sol))
        & (f(sol) <= f(x) + 10 * jnp.finfo(dtype).eps * (1 + jnp.abs(f(x)))))
  return jnp.where(ok, sol, x)
