"""ConicGrad as a Gram-level weighting: Gram matrix in, K combination weights out.

The maths (see ``docs/maths.md``): with task gradients g_1..g_K (rows of J),
reference gradient g0 = Σ_k p_k g_k (p the preference, uniform by default) and
cone parameter c = cos(half-angle), ConicGrad solves the convex problem

    maximise_d  min_i ⟨g_i, d⟩   s.t.  ‖d‖ ≤ 1,  ⟨d, ĝ0⟩ ≥ c            (P)

(every feasible d lies in the cone ⟨d, ĝ0⟩ ≥ c‖d‖; on the unit sphere this is
the paper's cone-constrained max–min problem), whose Lagrange dual is

    minimise_{w ∈ Δ_K, λ ≥ 0}  ‖g_w + λ ĝ0‖ − c λ,      g_w = Jᵀw.      (D)

Only G = J Jᵀ enters: ‖g_w + λĝ0‖² = wᵀGw + 2λ wᵀq + λ², q = Gp/‖g0‖. For a
fixed w the optimal λ is λ*(w) = max(0, c·b/s − a) with a = wᵀq,
b = (wᵀGw − a²)^½, s = (1 − c²)^½, and the dual function is
ψ(w) = ‖g_w + λ*ĝ0‖ − cλ*. The update direction is d ∝ g_w* + λ*ĝ0 = Jᵀv,
v = w* + (λ*/‖g0‖) p.

Solver: (P) in the coordinates z = Lᵀu of d = Jᵀu (G = LLᵀ from ``eigh``, no
rank truncation) by a log-barrier method with long-step path following and
Armijo-damped Newton steps (Boyd & Vandenberghe, *Convex Optimization*,
§11.3); dual weights w_i = μ/slack_i; then a Newton crossover on the KKT
system of (P) in task coefficients, on the barrier's active sets, under the
four ball/cap activity hypotheses. Every candidate w is scored by ψ(w) (an
upper bound) and every candidate d, moved exactly into the cap, by
min_i ⟨g_i, d⟩ (a lower bound); the best of each is returned, and their gap
divided by max_i ‖g_i‖ is the reported residual.

References:
  Hassanpour et al., "Fantastic Multi-Task Gradient Updates and How to Find
  Them in a Cone", ICML 2025 (arXiv 2502.00217).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax.solvers import barrier

SCALES = ("g0", "unit", "raw")

_LINE_SEARCH_STEPS = 24
_KAPPA = 10.0          # barrier parameter reduction per centring
_CENTRED = 0.25        # Newton decrement² below which a point counts as centred
_POLISH_STEPS = 4
_FINAL_STEPS = 8       # most Newton steps spent centring at the final μ


class ConicDiagnostics(NamedTuple):
  """What the cone solver found, for logging.

  Attributes:
    simplex_weights: the dual weights w* on the simplex, shape (K,).
    lam: the multiplier λ* of the cone constraint, in gradient units.
    cosine: cos(update, g0); at least ``c`` whenever g0 ≠ 0.
    value: min_i ⟨g_i, d*⟩ at the optimum d* of the cap problem, in gradient
      units: the worst task's directional derivative along the unit update
      (negative when no cone direction improves every task). Only in the
      degenerate case where d* lies on the cap's flat face (‖d*‖ < 1) is it
      the value at d* rather than at the unit update d*/‖d*‖.
    residual: the duality gap ψ(w*) − value divided by max_i ‖g_i‖.
    iterations: Newton steps taken (interior point plus crossover).
    g0_norm: ‖g0‖.
    dual_norm: ‖g_w* + λ*ĝ0‖, the length of the dual's vector.
  """
  simplex_weights: jax.Array
  lam: jax.Array
  cosine: jax.Array
  value: jax.Array
  residual: jax.Array
  iterations: jax.Array
  g0_norm: jax.Array
  dual_norm: jax.Array


def default_tolerance(dtype) -> float:
  """Target relative duality gap: 1e-9 in float64, 1e-5 in float32."""
  return 1e-9 if _numeric.solver_dtype(dtype) == jnp.float64 else 1e-5


def _sin(c):
  return jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0))


def _lam_star(gram_n, q, c, w):
  """Closed-form λ*(w) and the pieces a = wᵀq, ‖g_w‖²."""
  a = jnp.dot(w, q, precision=_numeric.HIGHEST)
  gw2 = jnp.maximum(_numeric.quad(gram_n, w), 0.0)
  b = jnp.sqrt(jnp.maximum(gw2 - a * a, 0.0))
  s = _sin(c)
  lam = jnp.maximum(0.0, c * b / jnp.maximum(s, jnp.finfo(gw2.dtype).tiny) - a)
  return lam, a, gw2


def dual_function(gram_n, q, c, w):
  """ψ(w) = min_{λ≥0} ‖g_w + λĝ0‖ − cλ (normalised units)."""
  lam, a, gw2 = _lam_star(gram_n, q, c, w)
  d2 = jnp.maximum(gw2 + 2.0 * lam * a + lam * lam, 0.0)
  return jnp.sqrt(d2) - c * lam


def _direction_from_weights(gram_n, q, p, n0, c, w):
  """Unit-direction coefficients u (d̂ = Jₙᵀu) from dual weights, and ‖d‖.

  d = g_w + λ*(w) ĝ0; when it vanishes the weights do not determine the
  direction (the primal candidate covers that case) and ``valid`` is False.
  """
  lam, a, gw2 = _lam_star(gram_n, q, c, w)
  d_norm = jnp.sqrt(jnp.maximum(gw2 + 2.0 * lam * a + lam * lam, 0.0))
  valid = d_norm > jnp.sqrt(jnp.finfo(gram_n.dtype).eps)
  u = (w + (lam / n0) * p) / jnp.where(valid, d_norm, 1.0)
  return u, valid


def cap_rounding_bound(norms, p, n0, u):
  """A first-order bound on the rounding error of the cosine the solver enforces.

  The solver keeps qᵀu ≥ c with q = Gp/‖g0‖, computed in its dtype. An entry
  G_ij given in that dtype is off by up to eps·‖g_i‖‖g_j‖, and the products
  Gp and qᵀu add up to K·eps each (the standard dot-product bound), so the
  cosine of the exact gradients can fall short of c by up to
  (2K + 1)·eps·(Σ_i |u_i|‖g_i‖)(Σ_j p_j‖g_j‖)/‖g0‖. For well-spread task
  gradients this is far below 1e-4 in float32; for nearly opposite ones
  (large coefficients |u|) it is what float32 can promise.
  """
  eps = jnp.finfo(u.dtype).eps
  k = u.shape[0]
  return (2 * k + 1) * eps * jnp.dot(jnp.abs(u), norms) * jnp.dot(p, norms) / n0


def _into_cap(gram_n, q, p, n0, c, u):
  """Moves d = Jₙᵀu into the cap {‖d‖ ≤ 1, ⟨d, ĝ0⟩ ≥ c}, exactly up to rounding.

  Scales d into the unit ball, then mixes in ĝ0 (= Jₙᵀp/‖g0‖) just enough to
  meet the cap's plane; both moves stay in the ball by convexity.
  """
  norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram_n, u), 0.0))
  u = u / jnp.maximum(norm, 1.0)
  a = jnp.dot(q, u, precision=_numeric.HIGHEST)
  theta = jnp.clip((c - a) / jnp.maximum(1.0 - a, jnp.finfo(u.dtype).eps),
                   0.0, 1.0)
  return (1.0 - theta) * u + theta * p / n0


class _BarrierState(NamedTuple):
  y: jax.Array        # (z, t)
  mu: jax.Array
  iterations: jax.Array
  final_steps: jax.Array   # Newton steps taken at the final μ
  done: jax.Array


def _primal_barrier(factor, z0, c, tol, max_iter):
  """Barrier method for max t s.t. Lz ≥ t·1, ‖z‖ ≤ 1, z0ᵀz ≥ c.

  z are coordinates of d in the row space of Jₙ (so ‖d‖ = ‖z‖ and
  ⟨g_i, d⟩ = (Lz)_i with G = LLᵀ); every term of the barrier is a logarithm of
  an affine or concave quadratic function, hence self-concordant.
  Returns ((z, t), multipliers, slacks, μ, iterations).
  """
  num_tasks = factor.shape[0]
  dim = factor.shape[1]
  dtype = factor.dtype
  nu = jnp.asarray(num_tasks + 2, dtype)
  # Centre tightly at the last μ in float64; float32 cannot resolve slacks
  # much below √eps, so it stops earlier and leaves the rest to the crossover.
  final_centring = 1e-6 if dtype == jnp.float64 else 1e-2

  def slacks(y):
    z, t = y[:dim], y[dim]
    return (jnp.matmul(factor, z, precision=_numeric.HIGHEST) - t,
            1.0 - jnp.dot(z, z), jnp.dot(z0, z) - c)

  def objective(y, mu):
    s, ball, cap = slacks(y)
    feasible = jnp.all(s > 0) & (ball > 0) & (cap > 0)
    value = (-y[dim] / mu - jnp.sum(jnp.log(jnp.where(s > 0, s, 1.0)))
             - jnp.log(jnp.where(ball > 0, ball, 1.0))
             - jnp.log(jnp.where(cap > 0, cap, 1.0)))
    return jnp.where(feasible, value, jnp.inf)

  def newton_step(y, mu):
    z = y[:dim]
    s, ball, cap = slacks(y)
    inv_s = 1.0 / s
    lt_inv_s = jnp.matmul(factor.T, inv_s, precision=_numeric.HIGHEST)
    grad_z = -lt_inv_s + 2.0 * z / ball - z0 / cap
    grad_t = -1.0 / mu + jnp.sum(inv_s)
    weighted = factor * inv_s[:, None]
    h_zz = (jnp.matmul(weighted.T, weighted, precision=_numeric.HIGHEST)
            + (2.0 / ball) * jnp.eye(dim, dtype=dtype)
            + 4.0 * jnp.outer(z, z) / ball**2 + jnp.outer(z0, z0) / cap**2)
    h_zt = -jnp.matmul(factor.T, inv_s**2, precision=_numeric.HIGHEST)
    h_tt = jnp.sum(inv_s**2)
    hess = jnp.block([[h_zz, h_zt[:, None]], [h_zt[None, :], h_tt[None, None]]])
    grad = jnp.concatenate([grad_z, grad_t[None]])
    # Jacobi scaling keeps the Cholesky factorisation well conditioned.
    scale = 1.0 / jnp.sqrt(jnp.diagonal(hess))
    hess_scaled = scale[:, None] * hess * scale[None, :]
    chol = jax.scipy.linalg.cho_factor(hess_scaled, lower=True)
    step = -scale * jax.scipy.linalg.cho_solve(chol, scale * grad)
    return step, -jnp.dot(grad, step)

  def body(state):
    y, mu = state.y, state.mu
    step, decrement2 = newton_step(y, mu)
    alpha, step, finite = barrier.armijo_step(lambda v: objective(v, mu), y, step, decrement2,
                                              steps=_LINE_SEARCH_STEPS)
    small_mu = nu * mu <= tol
    centred = decrement2 < jnp.where(small_mu, final_centring, _CENTRED)
    stalled = (alpha == 0.0) | ~finite
    new_mu = jnp.where(centred & ~small_mu, mu / _KAPPA, mu)
    final_steps = state.final_steps + small_mu.astype(jnp.int32)
    done = ((small_mu & (centred | stalled | (final_steps >= _FINAL_STEPS)))
            | ~finite)
    return _BarrierState(y + alpha * step, new_mu, state.iterations + 1,
                         final_steps, done)

  def cond(state):
    return (~state.done) & (state.iterations < max_iter)

  z_init = 0.5 * (1.0 + c) * z0
  t_init = jnp.min(jnp.matmul(factor, z_init, precision=_numeric.HIGHEST)) - 1.0
  init = _BarrierState(jnp.concatenate([z_init, t_init[None]]),
                       jnp.asarray(1.0, dtype), jnp.asarray(0, jnp.int32),
                       jnp.asarray(0, jnp.int32), jnp.asarray(False))
  final = jax.lax.while_loop(cond, body, init)
  tiny = jnp.finfo(dtype).tiny
  s, ball, cap = slacks(final.y)
  mu = final.mu
  # Barrier multipliers: μ/slack for each constraint (Σ_i μ/s_i = 1 when centred).
  multipliers = (mu / jnp.maximum(s, tiny), mu / jnp.maximum(ball, tiny),
                 mu / jnp.maximum(cap, tiny))
  slacks_out = (s, ball, cap)
  return final.y, multipliers, slacks_out, mu, final.iterations


RCOND_EXPONENT = 1.0


def _lstsq_rcond(dtype):
  return float(jnp.finfo(dtype).eps) ** RCOND_EXPONENT


def _crossover(gram_n, q, p, n0, c, u, multipliers, slacks, null_basis,
               ball_active, cap_active):
  """Newton steps on the KKT system of the cap problem for given active sets.

  Works in task coefficients u (d = Jₙᵀu) so that every equation uses G itself
  (an eigen-factor of G is too inaccurate in float32 along small eigenvalues).
  Unknowns (u, t, w, β, γ); equations

    w + γ p/‖g0‖ = 2βu                 (stationarity, ball active)
    G(w + γ p/‖g0‖) = 0                (stationarity, ball inactive: flat face)
    (Gu)_i = t (task i active)  or  w_i = 0
    Σ w = 1,  uᵀGu = 1 or β = 0,  qᵀu = c or γ = 0.

  Task i counts as active when its slack is below its multiplier (slack < √μ
  at a centred point); the ball and cap activities are given, because at the
  float32 floor of μ they can be ambiguous and the caller tries each. Steps
  are least-squares solutions, so rank-deficient G (K > m, duplicated tasks)
  is fine; ``null_basis`` (columns spanning G's numerical null space, zero
  columns elsewhere) is projected out of u after each step, since those
  components do not change d but would grow without bound. Returns the
  iterates' (u, w), starting point first.
  """
  num_tasks = gram_n.shape[0]
  k = num_tasks
  s, _, _ = slacks
  w, beta, gamma = multipliers
  task_active = s < w
  task_active = jnp.where(jnp.any(task_active), task_active, s <= jnp.min(s))
  w = jnp.where(task_active, w, 0.0)
  w = w / jnp.sum(w)
  beta = jnp.where(ball_active, beta, 0.0)
  gamma = jnp.where(cap_active, gamma, 0.0)
  t = jnp.min(jnp.where(task_active, _numeric.matvec(gram_n, u), jnp.inf))

  def drop_null(v):
    return v - _numeric.matvec(null_basis, _numeric.matvec(null_basis.T, v))

  def residual(x):
    u, t, w, beta, gamma = x[:k], x[k], x[k + 1:2 * k + 1], x[-2], x[-1]
    gu = _numeric.matvec(gram_n, u)
    combo = w + gamma * p / n0
    stationarity = jnp.where(ball_active, combo - 2.0 * beta * u,
                             _numeric.matvec(gram_n, combo))
    complementarity = jnp.where(task_active, gu - t, w)
    ball_eq = jnp.where(ball_active, jnp.dot(u, gu) - 1.0, beta)
    cap_eq = jnp.where(cap_active, jnp.dot(q, u) - c, gamma)
    return jnp.concatenate([stationarity, complementarity,
                            (jnp.sum(w) - 1.0)[None], ball_eq[None],
                            cap_eq[None]])

  def newton(x, _):
    jac = jax.jacfwd(residual)(x)
    step = jnp.linalg.lstsq(jac, -residual(x), rcond=_lstsq_rcond(jac.dtype))[0]
    x = x + jnp.where(jnp.isfinite(step), step, 0.0)
    x = x.at[:k].set(drop_null(x[:k]))
    return x, x

  x0 = jnp.concatenate([u, t[None], w, beta[None], gamma[None]])
  _, x = jax.lax.scan(newton, x0, None, length=_POLISH_STEPS)
  return x[:, :k], x[:, k + 1:2 * k + 1]


class WarmStart(NamedTuple):
  """A previous solution to start from (e.g. the last training step's).

  Attributes:
    unit_coefficients: the previous ``unit_coefficients`` (d̂ = Jᵀu), shape (K,).
    simplex_weights: the previous dual weights w*, shape (K,).
    valid: whether the two hold a solution (False before the first solve).
  """
  unit_coefficients: jax.Array
  simplex_weights: jax.Array
  valid: jax.Array


def cold_start(num_tasks: int, dtype=jnp.float32) -> WarmStart:
  """A :class:`WarmStart` that holds nothing: the solver starts from scratch."""
  zeros = jnp.zeros((num_tasks,), dtype)
  return WarmStart(zeros, zeros, jnp.asarray(False))


class _Attempt(NamedTuple):
  u: jax.Array
  w: jax.Array
  value: jax.Array
  upper: jax.Array
  norm2: jax.Array


def solve_cone_dual(gram, c, preference=None, *, tol=None, max_iter=200,
                    warm_start=None):
  """Solves the ConicGrad dual from the Gram matrix alone.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ of the task gradients.
    c: cosine of the cone half-angle, 0 ≤ c < 1 (may be a traced scalar).
    preference: simplex weights p defining g0 = Jᵀp; uniform when ``None``.
    tol: target relative duality gap of the interior-point phase
      (default 1e-9 in float64, 1e-5 in float32; the polish usually goes
      well below it).
    max_iter: cap on interior-point Newton steps (each O(K³)).
    warm_start: an optional :class:`WarmStart` (a previous solution). The
      crossover's Newton steps then start from it, on its active set; the
      answer is kept only if its certified gap (``residual``) is at most
      ``tol``, otherwise the solver starts from scratch as without it. In
      training, where consecutive Gram matrices are close, that skips the
      interior-point phase on most steps.

  Returns:
    ``(unit_coefficients, diagnostics)`` where ``Jᵀ unit_coefficients`` is the
    unit update direction d̂ (zero when g0 = 0) and ``diagnostics`` is a
    :class:`ConicDiagnostics`.
  """
  gram_n, sigma = _numeric.normalized_gram(gram)
  dtype = gram_n.dtype
  num_tasks = gram_n.shape[0]
  if tol is None:
    tol = default_tolerance(dtype)
  c = jnp.asarray(c, dtype)
  p = _numeric.as_preference(preference, num_tasks, dtype)
  eps = jnp.finfo(dtype).eps
  n0_2 = _numeric.quad(gram_n, p)
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram_n), 0.0))
  g0_vanishes = n0_2 <= num_tasks * eps * jnp.dot(p, norms) ** 2
  n0 = jnp.sqrt(jnp.where(g0_vanishes, 1.0, n0_2))
  q = _numeric.matvec(gram_n, p) / n0
  root_sigma = jnp.sqrt(sigma)

  eigvals, eigvecs = jnp.linalg.eigh(gram_n)
  root_eig = jnp.sqrt(jnp.maximum(eigvals, 0.0))
  null_basis = eigvecs * (eigvals <= num_tasks * eps * jnp.max(eigvals))[None, :]

  def from_barrier():
    factor = eigvecs * root_eig[None, :]                  # G = L Lᵀ
    z0 = jnp.matmul(factor.T, p, precision=_numeric.HIGHEST) / n0
    y, multipliers, slacks, _, iterations = _primal_barrier(factor, z0, c, tol, max_iter)
    # The barrier's z mapped back to task coefficients u (d = Jₙᵀu = Vᵀ-coords z).
    cutoff = jnp.sqrt(eps) * jnp.max(root_eig)
    inv_root = jnp.where(root_eig > cutoff,
                         1.0 / jnp.where(root_eig > cutoff, root_eig, 1.0), 0.0)
    u_ipm = _numeric.matvec(eigvecs, inv_root * y[:num_tasks])
    return u_ipm, multipliers, slacks, iterations

  def from_previous():
    # The previous direction in this G's normalised units, and its active set:
    # tasks with positive weight are active (zero slack), the others not.
    u_prev = warm_start.unit_coefficients.astype(dtype) * root_sigma
    w_prev = jnp.maximum(warm_start.simplex_weights.astype(dtype), 0.0)
    active = w_prev > jnp.sqrt(eps) * jnp.max(w_prev)
    zero = jnp.zeros((), dtype)
    multipliers = (jnp.where(active, w_prev, 0.0), zero, zero)
    slacks = (jnp.where(active, 0.0, 1.0).astype(dtype), zero, zero)
    return u_prev, multipliers, slacks, jnp.asarray(0, jnp.int32)

  def attempt(u_start, multipliers, slacks):
    return _candidates(gram_n, q, p, n0, c, norms, null_basis, u_start, multipliers, slacks)

  if warm_start is None:
    u_start, multipliers, slacks, iterations = from_barrier()
    best = attempt(u_start, multipliers, slacks)
    iterations = iterations + _POLISH_STEPS
  else:
    def body(carry):
      index, _, _, iterations = carry
      use_previous = index == 0
      u_start, multipliers, slacks, its = jax.lax.cond(use_previous, from_previous,
                                                       from_barrier)
      found = attempt(u_start, multipliers, slacks)
      certified = (jnp.isfinite(found.value) & jnp.isfinite(found.upper)
                   & (found.upper - found.value <= tol))
      return index + 1, certified | ~use_previous, found, iterations + its + _POLISH_STEPS

    def cond(carry):
      return ~carry[1]

    empty = _Attempt(jnp.zeros((num_tasks,), dtype), p, jnp.zeros((), dtype),
                     jnp.zeros((), dtype), jnp.zeros((), dtype))
    first = jnp.where(jnp.asarray(warm_start.valid) & jnp.all(
        jnp.isfinite(warm_start.unit_coefficients)), 0, 1)
    _, _, best, iterations = jax.lax.while_loop(
        cond, body, (first, jnp.asarray(False), empty, jnp.asarray(0, jnp.int32)))

  u, w, value, upper = best.u, best.w, best.value, best.upper
  d_norm = jnp.sqrt(jnp.maximum(best.norm2, 0.0))
  # d* = 0 happens only for c = 0 at a Pareto-stationary point (any c > 0 keeps
  # ‖d*‖ ≥ c); a length at rounding level is that zero.
  u = jnp.where(d_norm > eps, u / jnp.where(d_norm > eps, d_norm, 1.0), 0.0)
  # An exactly zero task gradient takes no part in d: its coefficient is 0
  # (any value gives the same update; solvers leave rounding noise there).
  u = jnp.where(norms > 0, u, 0.0)
  residual = jnp.maximum(upper - value, 0.0)
  cosine = jnp.dot(q, u, precision=_numeric.HIGHEST)
  lam, _, _ = _lam_star(gram_n, q, c, w)
  dual_norm = upper + c * lam

  zero = jnp.zeros((), dtype)
  diagnostics = ConicDiagnostics(
      simplex_weights=jnp.where(g0_vanishes, p, w),
      lam=jnp.where(g0_vanishes, zero, lam * root_sigma),
      cosine=jnp.where(g0_vanishes, zero, cosine),
      value=jnp.where(g0_vanishes, zero, value * root_sigma),
      residual=jnp.where(g0_vanishes, zero, residual),
      iterations=iterations,
      g0_norm=jnp.where(g0_vanishes, zero, n0 * root_sigma),
      dual_norm=jnp.where(g0_vanishes, zero, dual_norm * root_sigma),
  )
  unit_coefficients = jnp.where(g0_vanishes, jnp.zeros_like(u), u / root_sigma)
  return unit_coefficients, diagnostics


def _candidates(gram_n, q, p, n0, c, norms, null_basis, u_start, multipliers, slacks):
  """Crossover from a start point, then the best dual and primal candidates (an :class:`_Attempt`)."""
  num_tasks = gram_n.shape[0]
  dtype = gram_n.dtype
  eps = jnp.finfo(dtype).eps
  hypotheses = jnp.array(list(itertools.product([False, True], repeat=2)))
  u_cross, w_cross = jax.vmap(
      lambda h: _crossover(gram_n, q, p, n0, c, u_start, multipliers, slacks,
                           null_basis, h[0], h[1]))(hypotheses)
  u_primal = jnp.concatenate([u_start[None], u_cross.reshape(-1, num_tasks)])
  w_candidates = jnp.concatenate([(multipliers[0] / jnp.sum(multipliers[0]))[None],
                                  w_cross.reshape(-1, num_tasks)])
  w_candidates = jnp.maximum(jnp.where(jnp.isfinite(w_candidates),
                                       w_candidates, 0.0), 0.0)
  w_candidates = w_candidates / jnp.maximum(
      jnp.sum(w_candidates, axis=1, keepdims=True), jnp.finfo(dtype).tiny)

  # Dual candidates: any simplex w gives the upper bound ψ(w).
  psi = jax.vmap(lambda w: dual_function(gram_n, q, c, w))(w_candidates)
  psi = jnp.where(jnp.isfinite(psi) & (jnp.sum(w_candidates, axis=1) > 0.5),
                  psi, jnp.inf)
  upper = jnp.min(psi)
  w = jnp.where(jnp.isfinite(upper), w_candidates[jnp.argmin(psi)], p)

  # Primal candidates: any d in the cap gives the lower bound min_i ⟨g_i, d⟩:
  # the start point's and crossover's points, and the direction d(w) of each
  # dual candidate.
  u_dual, valid = jax.vmap(
      lambda v: _direction_from_weights(gram_n, q, p, n0, c, v))(w_candidates)
  u_all = jnp.concatenate([u_primal, u_dual])
  u_all = jax.vmap(lambda u: _into_cap(gram_n, q, p, n0, c, u))(u_all)
  # Large coefficients along G's (numerical) null space leave d = Jₙᵀu unchanged
  # in exact arithmetic but make uᵀGu and Jₙᵀu disagree by rounding (K > m,
  # rank-deficient G); drop them when they exceed O(1), where that error starts
  # to matter (small ones are kept: they may carry directions of tiny eigenvalues).
  # float64 only: in float32 the numerical null space is wide enough to hold real
  # directions, and the float32 tests (certified in float64) are better without.
  if dtype == jnp.float64:
    u_null = jnp.matmul(jnp.matmul(u_all, null_basis, precision=_numeric.HIGHEST),
                        null_basis.T, precision=_numeric.HIGHEST)
    u_all = jnp.where(jnp.sum(jnp.abs(u_null), axis=1, keepdims=True) > 1.0,
                      u_all - u_null, u_all)
  valid = jnp.concatenate([jnp.ones((u_primal.shape[0],), bool), valid])
  norms2 = jax.vmap(lambda u: _numeric.quad(gram_n, u))(u_all)
  cos_all = jnp.matmul(u_all, q, precision=_numeric.HIGHEST)
  slack = 100 * eps
  # Coefficients this large would make Σ_k u_k g_k mostly cancellation error.
  trusted = jnp.sum(jnp.abs(u_all), axis=1) <= eps ** -0.5
  feasible = (valid & trusted & (norms2 <= 1.0 + slack) & (cos_all >= c - slack))
  lower_all = jnp.min(jnp.matmul(u_all, gram_n, precision=_numeric.HIGHEST),
                      axis=1)
  lower_all = jnp.where(feasible & jnp.isfinite(lower_all), lower_all, -jnp.inf)
  best = jnp.argmax(lower_all)
  return _Attempt(u_all[best], w, lower_all[best], upper, norms2[best])


def conic_weighting(gram, c=0.5, *, preference=None, scale="g0", tol=None,
                    max_iter=200, warm_start=None):
  r"""ConicGrad weights from the Gram matrix: ``update = Σ_k weights_k g_k``.

  The update is the solution direction d̂ of the cone-constrained max–min
  problem (module docstring) with length

  * ``"g0"`` (default): ‖g0‖, the length of the reference gradient;
  * ``"unit"``: 1;
  * ``"raw"``: ‖g_w* + λ*ĝ0‖, the length of the dual's vector.

  Args:
    gram: K×K Gram matrix of the task gradients (any float dtype; solved in at
      least float32).
    c: cosine of the cone half-angle, ``0 <= c < 1``.
    preference: optional simplex weights p; g0 = Σ_k p_k g_k.
    scale: one of ``"g0"``, ``"unit"``, ``"raw"``.
    tol: interior-point target gap (see :func:`solve_cone_dual`).
    max_iter: cap on interior-point iterations.
    warm_start: an optional :class:`WarmStart` (see :func:`solve_cone_dual`).

  Returns:
    ``(weights, diagnostics)``: K weights in the solver dtype, and a
    :class:`ConicDiagnostics`.

  Example:
    >>> import jax.numpy as jnp
    >>> J = jnp.array([[1.0, 0.0], [-0.5, 1.0]])
    >>> w, diag = conic_weighting(J @ J.T, c=0.5)
    >>> bool(diag.cosine >= 0.5 - 1e-5)
    True
  """
  if scale not in SCALES:
    raise ValueError(f"`scale` must be one of {SCALES}, got {scale!r}.")
  unit, diagnostics = solve_cone_dual(gram, c, preference, tol=tol,
                                      max_iter=max_iter, warm_start=warm_start)
  return unit * update_length(diagnostics, scale).astype(unit.dtype), diagnostics


def update_length(diagnostics: ConicDiagnostics, scale: str) -> jax.Array:
  """The update's length for ``scale`` (see :func:`conic_weighting`)."""
  if scale == "g0":
    return diagnostics.g0_norm
  if scale == "unit":
    return (diagnostics.g0_norm > 0).astype(diagnostics.g0_norm.dtype)
  return diagnostics.dual_norm
