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
import numpy as np

from conicgrad_jax import _numeric
from conicgrad_jax import validation
from conicgrad_jax.solvers.barrier import CENTRED, KAPPA

SCALES = ("g0", "unit", "raw")


def _mv(matrix, vector):
  """``matrix @ vector`` as a multiply and a row sum (cheap to compile on XLA:CPU)."""
  return jnp.sum(matrix * vector[..., None, :], axis=-1)


def _fence(x):
  """Materialises x as one array (``optimization_barrier``).

  XLA:CPU compiles every fused kernel separately, and it does not duplicate
  an expensive elementwise result (a division, a square root) into several
  consumers, so each such value with many users becomes a kernel of its own.
  Stacking the per-candidate scalars of a stage and fencing them makes the
  whole stage one kernel; the compile time of the solver is mostly the
  number of its kernels.
  """
  return jax.lax.optimization_barrier(x)


def _dot(a, b):
  return jnp.sum(a * b, axis=-1)


def _quad(matrix, vector):
  return _dot(vector, _mv(matrix, vector))


_LINE_SEARCH_STEPS = 24
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
  a = _dot(w, q)
  gw2 = jnp.maximum(_quad(gram_n, w), 0.0)
  b = jnp.sqrt(jnp.maximum(gw2 - a * a, 0.0))
  s = _sin(c)
  lam = jnp.maximum(0.0, c * b / jnp.maximum(s, jnp.finfo(gw2.dtype).tiny) - a)
  return lam, a, gw2


def dual_function(gram_n, q, c, w):
  """ψ(w) = min_{λ≥0} ‖g_w + λĝ0‖ − cλ (normalised units)."""
  lam, a, gw2 = _lam_star(gram_n, q, c, w)
  d2 = jnp.maximum(gw2 + 2.0 * lam * a + lam * lam, 0.0)
  return jnp.sqrt(d2) - c * lam


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
  return (2 * k + 1) * eps * _dot(jnp.abs(u), norms) * _dot(p, norms) / n0


def _primal_barrier(factor, z0, c, tol, max_iter):
  """Barrier method for max t s.t. Lz ≥ t·1, ‖z‖ ≤ 1, z0ᵀz ≥ c.

  z are coordinates of d in the row space of Jₙ (so ‖d‖ = ‖z‖ and
  ⟨g_i, d⟩ = (Lz)_i with G = LLᵀ); every term of the barrier is a logarithm of
  an affine or concave quadratic function, hence self-concordant. With
  y = (z, t) the K + 1 affine constraints are Ay ≥ b (rows (L_i, −1) and
  (z0, 0)); one row sum over [A ⊙ y; z ⊙ z] gives every slack, also for all
  line-search points at once. The loop carries one vector (y, μ, steps,
  steps at the final μ, done), so that an iteration compiles to few kernels.
  Returns ((z, t), multipliers, slacks, μ, iterations).
  """
  num_tasks = factor.shape[0]
  dim = factor.shape[1]
  n = dim + 1
  dtype = factor.dtype
  nu = num_tasks + 2
  # Centre tightly at the last μ in float64; float32 cannot resolve slacks
  # much below √eps, so it stops earlier and leaves the rest to the crossover.
  final_centring = 1e-6 if dtype == jnp.float64 else 1e-2
  cons = jnp.concatenate([
      jnp.concatenate([factor, -jnp.ones((num_tasks, 1), dtype)], axis=1),
      jnp.concatenate([z0, jnp.zeros((1,), dtype)])[None, :]])
  offset = jnp.concatenate([jnp.zeros((num_tasks,), dtype), c[None]])
  in_z = (np.arange(n) < dim).astype(np.dtype(dtype))   # the coordinates of z in y
  e_t = 1.0 - in_z
  eye_z = np.diag(in_z)
  ridge = (n * np.finfo(np.dtype(dtype)).eps * np.eye(n)).astype(np.dtype(dtype))
  alphas = np.concatenate([[0.0], 0.5 ** np.arange(_LINE_SEARCH_STEPS)]).astype(
      np.dtype(dtype))

  def slacks(y):
    """The K + 1 affine slacks and the ball's 1 − ‖z‖², last (y may be a batch)."""
    # One row sum gives Ay and ‖z‖².
    zz = y * in_z
    sums = jnp.sum(jnp.concatenate([cons * y[..., None, :], (zz * zz)[..., None, :]],
                                   axis=-2), axis=-1)
    return jnp.concatenate([sums[..., :-1] - offset, 1.0 - sums[..., -1:]], axis=-1)

  def body(carry):
    y, mu, iterations, final_steps = carry[:n], carry[n], carry[n + 1], carry[n + 2]
    zz = y * in_z
    # 1/slack of every constraint and 1/μ, in one kernel.
    recip = _fence(1.0 / jnp.concatenate([slacks(y), mu[None]]))
    inv_s, inv_ball, inv_mu = recip[:-2], recip[-2], recip[-1]
    weighted = _fence(cons * inv_s[:, None])
    # Column sums: Aᵀ(1/s) and the diagonal of Aᵀdiag(1/s²)A.
    cols = jnp.sum(jnp.stack([weighted, weighted * weighted]), axis=1)
    grad = -e_t * inv_mu - cols[0] + 2.0 * zz * inv_ball
    # Jacobi scaling keeps the Cholesky factorisation well conditioned.
    scale = jax.lax.rsqrt(cols[1] + 2.0 * in_z * inv_ball + 4.0 * zz * zz * inv_ball**2)
    hess = (jnp.matmul(weighted.T, weighted, precision=_numeric.HIGHEST)
            + (2.0 * inv_ball) * eye_z + 4.0 * zz[:, None] * zz[None, :] * inv_ball**2)
    # A ridge at rounding level (the scaled diagonal is 1) keeps the factorisation
    # defined when one constraint's 1/s² dwarfs the rest (a nearly active task).
    chol = jax.lax.linalg.cholesky(scale[:, None] * hess * scale[None, :] + ridge,
                                   symmetrize_input=False)
    half = jax.lax.linalg.triangular_solve(chol, (scale * grad)[:, None],
                                           left_side=True, lower=True)
    step = -scale * jax.lax.linalg.triangular_solve(
        chol, half, left_side=True, lower=True, transpose_a=True)[:, 0]
    # The decrement, and a finiteness probe (0, or NaN if the step is not finite).
    sums = jnp.sum(jnp.stack([-grad * step, 0.0 * step]), axis=1)
    decrement2 = sums[0]
    finite = jnp.isfinite(decrement2) & jnp.isfinite(sums[1])
    step = jnp.where(finite, step, 0.0)
    # Armijo backtracking over 1, ½, ¼, ... at once (α = 0 is the current point),
    # every trial point's slacks computed afresh; log(0) = −∞ makes the value
    # +∞ outside the domain.
    trial_y = y[None, :] + alphas[:, None] * step[None, :]
    trial = slacks(trial_y)
    value = (-trial_y[:, dim] * inv_mu
             - jnp.sum(jnp.log(jnp.maximum(trial, 0.0)), axis=1))
    ok = (value[1:] <= value[0] - 0.25 * alphas[1:] * decrement2) & finite
    alpha = jnp.max(jnp.where(ok, alphas[1:], 0.0))   # the longest accepted step
    small_mu = nu * mu <= tol
    centred = decrement2 < jnp.where(small_mu, final_centring, CENTRED)
    stalled = (alpha == 0.0) | ~finite
    final_steps = final_steps + small_mu
    done = ((small_mu & (centred | stalled | (final_steps >= _FINAL_STEPS)))
            | ~finite)
    return jnp.concatenate([
        y + alpha * jnp.where(finite, step, 0.0),
        jnp.stack([jnp.where(centred & ~small_mu, mu / KAPPA, mu), iterations + 1.0,
                   final_steps, done.astype(dtype)])])

  def cond(carry):
    return (carry[n + 3] == 0) & (carry[n + 1] < max_iter)

  z_init = 0.5 * (1.0 + c) * z0
  t_init = jnp.min(_mv(factor, z_init)) - 1.0
  init = jnp.concatenate([z_init, t_init[None], jnp.array([1.0, 0.0, 0.0, 0.0], dtype)])
  final = jax.lax.while_loop(cond, body, init)
  y, mu = final[:n], final[n]
  tiny = jnp.finfo(dtype).tiny
  s_all = slacks(y)
  s, ball = s_all[:-1], s_all[-1]
  # Barrier multipliers: μ/slack for each constraint (Σ_i μ/s_i = 1 when centred).
  multipliers = (mu / jnp.maximum(s[:num_tasks], tiny), mu / jnp.maximum(ball, tiny),
                 mu / jnp.maximum(s[num_tasks], tiny))
  slacks_out = (s[:num_tasks], ball, s[num_tasks])
  return y, multipliers, slacks_out, mu, final[n + 1].astype(jnp.int32)


def _kkt_system(gram_n, q, p_n0, c, task_active, ball_active, cap_active, x):
  """The crossover's KKT residual at x = (u, t, w, β, γ) and its Jacobian, written out.

  Equations (see :func:`_crossover`), in this order: stationarity (K),
  complementarity (K), Σw = 1, the ball's and the cap's equation.
  """
  k = gram_n.shape[0]
  dtype = gram_n.dtype
  u, t, w, beta, gamma = x[:k], x[k], x[k + 1:2 * k + 1], x[-2], x[-1]
  combo = w + gamma * p_n0
  # One row sum gives Gu, G(w + γp/‖g0‖), uᵀGu, qᵀu and Σw.
  prods = jnp.sum(jnp.concatenate([
      gram_n * u[None, :], gram_n * combo[None, :],
      jnp.stack([u * _mv(gram_n, u), q * u, w])]), axis=1)
  gu, g_combo, ugu, qu, sum_w = (prods[:k], prods[k:2 * k], prods[-3],
                                 prods[-2], prods[-1])
  residual = jnp.concatenate([
      jnp.where(ball_active, combo - 2.0 * beta * u, g_combo),
      jnp.where(task_active, gu - t, w),
      jnp.stack([sum_w - 1.0, jnp.where(ball_active, ugu - 1.0, beta),
                 jnp.where(cap_active, qu - c, gamma)])])
  eye = jnp.eye(k, dtype=dtype)
  ta = task_active.astype(dtype)
  col = jnp.zeros((k, 1), dtype)
  zero = jnp.zeros((1,), dtype)
  jac = jnp.concatenate([
      jnp.concatenate([jnp.where(ball_active, -2.0 * beta, 0.0) * eye, col,
                       jnp.where(ball_active, eye, gram_n),
                       jnp.where(ball_active, -2.0 * u, 0.0)[:, None],
                       jnp.where(ball_active, p_n0, q)[:, None]], axis=1),
      jnp.concatenate([ta[:, None] * gram_n, -ta[:, None], jnp.diag(1.0 - ta), col, col],
                      axis=1),
      jnp.concatenate([jnp.zeros((k + 1,), dtype), jnp.ones((k,), dtype),
                       jnp.zeros((2,), dtype)])[None, :],
      jnp.concatenate([jnp.where(ball_active, 2.0 * gu, 0.0), zero, jnp.zeros((k,), dtype),
                       jnp.where(ball_active, 0.0, 1.0).astype(dtype)[None], zero])[None, :],
      jnp.concatenate([jnp.where(cap_active, q, 0.0), zero, jnp.zeros((k,), dtype), zero,
                       jnp.where(cap_active, 0.0, 1.0).astype(dtype)[None]])[None, :]])
  return residual, jac


def _crossover_start(gram_n, u, w, s, beta, gamma):
  """The crossover's starting point x0 = (u, t, w, β, γ) and active tasks.

  ``w``, ``s``: the tasks' multipliers and slacks; ``beta``, ``gamma``: the
  ball's and the cap's multipliers.
  """
  # Active: slack below multiplier; if none is, the tasks of least slack.
  # One min over rows gives min(s − w) and min(s).
  least = jnp.min(jnp.stack([s - w, s]), axis=1)
  task_active = jnp.where(least[0] < 0, s < w, s <= least[1])
  w = jnp.where(task_active, w, 0.0)
  t = jnp.min(jnp.where(task_active, _mv(gram_n, u), jnp.inf))
  x0 = _fence(jnp.concatenate([u, t[None], w / jnp.sum(w), beta[None], gamma[None]]))
  return x0, task_active


def _crossover(gram_n, q, p, n0, c, x0, task_active, null_projector, ball_active,
               cap_active):
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
  is fine; G's numerical null space is projected out of u after each step
  (``null_projector`` is the projector onto its complement), since those
  components do not change d but would grow without bound. ``x0`` and
  ``task_active`` come from :func:`_crossover_start`. Returns the iterates'
  (u, w) after each step.
  """
  k = gram_n.shape[0]
  keep = jnp.concatenate([jnp.ones((2 * k + 1,), bool), jnp.stack([ball_active, cap_active])])
  x0 = jnp.where(keep, x0, 0.0)     # β = 0, γ = 0 for an inactive ball, cap

  def newton(x, _):
    residual, jac = _kkt_system(gram_n, q, p / n0, c, task_active, ball_active,
                                cap_active, x)
    step = jnp.linalg.lstsq(jac, -residual, rcond=float(jnp.finfo(jac.dtype).eps))[0]
    x = x + jnp.where(jnp.isfinite(step), step, 0.0)
    x = x.at[:k].set(_mv(null_projector, x[:k]))
    return x, x

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
  u: jax.Array        # the best primal candidate (in the cap)
  w: jax.Array        # the best dual candidate (on the simplex)
  value: jax.Array    # min_i ⟨g_i, d⟩ at u: the lower bound
  upper: jax.Array    # ψ(w): the upper bound
  norm2: jax.Array    # uᵀGu
  cos: jax.Array      # qᵀu
  lam: jax.Array      # λ*(w)


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
  gram = jnp.asarray(gram)
  if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
    raise ValueError(f"`gram` must be a square K×K matrix, got shape {jnp.shape(gram)}.")
  validation.check_unit_interval("c", c)
  validation.check_preference(preference)
  if preference is not None and jnp.shape(preference) != (jnp.shape(gram)[0],):
    raise ValueError(f"`preference` has shape {jnp.shape(preference)}; expected "
                     f"({jnp.shape(gram)[0]},) for this Gram matrix.")
  if tol is not None:
    validation.check_positive("tol", tol)
  validation.check_positive_int("max_iter", max_iter)
  gram_n, sigma = _numeric.normalized_gram(gram)
  dtype = gram_n.dtype
  num_tasks = gram_n.shape[0]
  if tol is None:
    tol = default_tolerance(dtype)
  c = jnp.asarray(c, dtype)
  p = _numeric.as_preference(preference, num_tasks, dtype)
  eps = jnp.finfo(dtype).eps
  norms = _numeric.gradient_norms(gram_n)
  gp = _mv(gram_n, p)
  n0_2, p_norms = jnp.sum(jnp.stack([p * gp, p * norms]), axis=1)
  g0_vanishes = n0_2 <= num_tasks * eps * p_norms ** 2
  n0 = jnp.sqrt(jnp.where(g0_vanishes, 1.0, n0_2))
  scalars = _fence(jnp.concatenate([gp / n0, jnp.stack([n0, jnp.sqrt(sigma)])]))
  q, n0, root_sigma = scalars[:num_tasks], scalars[-2], scalars[-1]

  # Ascending eigenvalues. gram_n is symmetric to the bit, so it needs no
  # symmetrising, and its transpose is the column-major operand LAPACK reads.
  eigvals, eigvecs = jnp.linalg.eigh(gram_n.T, symmetrize_input=False)
  root_eig = jnp.sqrt(jnp.maximum(eigvals, 0.0))
  null_basis = eigvecs * (eigvals <= num_tasks * eps * eigvals[-1])[None, :]
  null_projector = jnp.asarray(np.eye(num_tasks), dtype) - jnp.matmul(
      null_basis, null_basis.T, precision=_numeric.HIGHEST)

  def from_barrier(limit=max_iter):
    factor = eigvecs * root_eig[None, :]                  # G = L Lᵀ
    z0 = _mv(factor.T, p) / n0
    y, multipliers, slacks, _, iterations = _primal_barrier(factor, z0, c, tol, limit)
    # The barrier's z mapped back to task coefficients u (d = Jₙᵀu = Vᵀ-coords z).
    cutoff = jnp.sqrt(eps) * root_eig[-1]
    inv_root = jnp.where(root_eig > cutoff,
                         1.0 / jnp.where(root_eig > cutoff, root_eig, 1.0), 0.0)
    u_ipm = _mv(eigvecs, inv_root * y[:num_tasks])
    return _pack_start(u_ipm, multipliers[0], slacks[0], multipliers[1], multipliers[2],
                       iterations.astype(dtype))

  def from_previous():
    # The previous direction in this G's normalised units, and its active set:
    # tasks with positive weight are active (zero slack), the others not.
    u_prev = warm_start.unit_coefficients.astype(dtype) * root_sigma
    w_prev = jnp.maximum(warm_start.simplex_weights.astype(dtype), 0.0)
    active = w_prev > jnp.sqrt(eps) * jnp.max(w_prev)
    zero = jnp.zeros((), dtype)
    return _pack_start(u_prev, jnp.where(active, w_prev, 0.0),
                       jnp.where(active, 0.0, 1.0).astype(dtype), zero, zero, zero)

  def attempt(start):
    return _candidates(gram_n, q, p, n0, c, null_basis, null_projector, start)

  if warm_start is None:
    start = from_barrier()
    best = attempt(start)
    iterations = start[-1].astype(jnp.int32) + _POLISH_STEPS
  else:
    def body(carry):
      index, _, _, iterations = carry
      use_previous = index == 0
      # The barrier takes no step on the pass that starts from the previous solution.
      start = jnp.where(use_previous, from_previous(),
                        from_barrier(jnp.where(use_previous, 0, max_iter)))
      found = attempt(start)
      value, upper = found[2 * num_tasks], found[2 * num_tasks + 3]
      certified = jnp.isfinite(value) & jnp.isfinite(upper) & (upper - value <= tol)
      return (index + 1, certified | ~use_previous, found,
              iterations + start[-1].astype(jnp.int32) + _POLISH_STEPS)

    def cond(carry):
      return ~carry[1]

    empty = jnp.concatenate([jnp.zeros((num_tasks,), dtype), p, jnp.zeros((5,), dtype)])
    first = jnp.where(jnp.asarray(warm_start.valid) & jnp.all(
        jnp.isfinite(warm_start.unit_coefficients)), 0, 1)
    _, _, best, iterations = jax.lax.while_loop(
        cond, body, (first, jnp.asarray(False), empty, jnp.asarray(0, jnp.int32)))

  best = _unpack_attempt(best, num_tasks)
  u, w = best.u, best.w
  d_norm = jnp.sqrt(jnp.maximum(best.norm2, 0.0))
  # d* = 0 happens only for c = 0 at a Pareto-stationary point (any c > 0 keeps
  # ‖d*‖ ≥ c); a length at rounding level is that zero.
  inv_d = jnp.where(d_norm > eps, 1.0 / jnp.where(d_norm > eps, d_norm, 1.0), 0.0)
  residual = jnp.maximum(best.upper - best.value, 0.0)
  # Every reported number in one kernel (all zero when g0 = 0).
  out = _fence(jnp.where(g0_vanishes, 0.0, jnp.stack([
      best.lam * root_sigma, best.cos * inv_d, best.value * root_sigma, residual,
      n0 * root_sigma, (best.upper + c * best.lam) * root_sigma, inv_d / root_sigma])))
  diagnostics = ConicDiagnostics(
      simplex_weights=jnp.where(g0_vanishes, p, w),
      lam=out[0], cosine=out[1], value=out[2], residual=out[3],
      iterations=iterations, g0_norm=out[4], dual_norm=out[5])
  # An exactly zero task gradient takes no part in d: its coefficient is 0
  # (any value gives the same update; solvers leave rounding noise there).
  unit_coefficients = jnp.where(norms > 0, u * out[6], 0.0)
  return unit_coefficients, diagnostics


def _candidates(gram_n, q, p, n0, c, null_basis, null_projector, start):
  """Crossover from a start point, then the best dual and primal candidates.

  ``start`` packs (u, w, s, β, γ) (see :func:`_pack_start`); the result packs
  an attempt (see :func:`_unpack_attempt`).

  All candidates are scored together, as rows of matrices, so that the
  program stays small: each row sum below serves every candidate at once.
  """
  num_tasks = gram_n.shape[0]
  dtype = gram_n.dtype
  eps = jnp.finfo(dtype).eps
  tiny = jnp.finfo(dtype).tiny
  hypotheses = jnp.array(list(itertools.product([False, True], repeat=2)))
  u_start, w_start, slacks, beta, gamma = _unpack_start(start, num_tasks)
  x0, task_active = _crossover_start(gram_n, u_start, w_start, slacks, beta, gamma)
  u_cross, w_cross = jax.vmap(
      lambda h: _crossover(gram_n, q, p, n0, c, x0, task_active, null_projector,
                           h[0], h[1]))(hypotheses)
  u_primal = jnp.concatenate([u_start[None], u_cross.reshape(-1, num_tasks)])
  # The preference p itself is a dual candidate too (a fallback bound).
  w_raw = jnp.concatenate([w_start[None], w_cross.reshape(-1, num_tasks), p[None]])
  w_raw = jnp.maximum(jnp.where(jnp.isfinite(w_raw), w_raw, 0.0), 0.0)

  w_candidates = _fence(w_raw / jnp.maximum(jnp.sum(w_raw, axis=1, keepdims=True), tiny))

  # Dual candidates: any simplex w gives the upper bound ψ(w); one row sum
  # gives Σw, wᵀq and wᵀGw of every candidate.
  wg = jnp.matmul(w_candidates, gram_n, precision=_numeric.HIGHEST)
  sums = jnp.sum(jnp.stack([w_candidates, w_candidates * q[None, :],
                            w_candidates * wg]), axis=2)
  a, gw2 = sums[1], jnp.maximum(sums[2], 0.0)
  lam = jnp.maximum(0.0, c * jnp.sqrt(jnp.maximum(gw2 - a * a, 0.0))
                    / jnp.maximum(_sin(c), tiny) - a)
  d_norm = jnp.sqrt(jnp.maximum(gw2 + 2.0 * lam * a + lam * lam, 0.0))
  psi = jnp.where(jnp.isfinite(d_norm - c * lam) & (sums[0] > 0.5), d_norm - c * lam,
                  jnp.inf)
  # The direction d(w) = g_w + λ*ĝ0 of each dual candidate, as coefficients
  # u = (w + λ* p/‖g0‖)/‖d‖; when d vanishes w does not determine it (invalid).
  valid_dual = d_norm > jnp.sqrt(eps)
  inv_d = 1.0 / jnp.where(valid_dual, d_norm, 1.0)
  psi, w_scale, p_scale, valid_dual, lam = _fence(
      jnp.stack([psi, inv_d, lam * inv_d / n0, valid_dual.astype(dtype), lam]))
  # The best dual candidate: (w, ψ, λ*) as one row.
  dual = jnp.concatenate([w_candidates, psi[:, None], lam[:, None]], axis=1)[jnp.argmin(psi)]

  # Primal candidates: any d in the cap gives the lower bound min_i ⟨g_i, d⟩:
  # the start point's and crossover's points, and the directions d(w).
  u_dual = w_scale[:, None] * w_candidates + p_scale[:, None] * p[None, :]
  u_all = jnp.concatenate([u_primal, u_dual])
  # Into the cap {‖d‖ ≤ 1, ⟨d, ĝ0⟩ ≥ c}: scale into the ball, then mix in
  # ĝ0 (= Jₙᵀp/‖g0‖) just enough to meet the cap's plane.
  ug = jnp.matmul(u_all, gram_n, precision=_numeric.HIGHEST)
  sums = jnp.sum(jnp.stack([u_all * ug, u_all * q[None, :]]), axis=2)
  inv_shrink = 1.0 / jnp.maximum(jnp.sqrt(jnp.maximum(sums[0], 0.0)), 1.0)
  cos_in = sums[1] * inv_shrink
  theta = jnp.clip((c - cos_in) / jnp.maximum(1.0 - cos_in, eps), 0.0, 1.0)
  u_scale, p_scale = _fence(jnp.stack([(1.0 - theta) * inv_shrink, theta / n0]))
  u_all = u_scale[:, None] * u_all + p_scale[:, None] * p[None, :]
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
  u_all = _fence(u_all)
  valid = jnp.concatenate([jnp.ones((u_primal.shape[0],), bool), valid_dual > 0.5])
  ug = jnp.matmul(u_all, gram_n, precision=_numeric.HIGHEST)
  sums = jnp.sum(jnp.stack([u_all * ug, u_all * q[None, :], jnp.abs(u_all)]), axis=2)
  norms2, cos_all = sums[0], sums[1]
  slack = 100 * eps
  # Coefficients this large would make Σ_k u_k g_k mostly cancellation error.
  trusted = sums[2] <= eps ** -0.5
  feasible = (valid & trusted & (norms2 <= 1.0 + slack) & (cos_all >= c - slack))
  lower_all = jnp.min(ug, axis=1)
  lower_all = jnp.where(feasible & jnp.isfinite(lower_all), lower_all, -jnp.inf)
  # The best primal candidate: (u, min_i ⟨g_i, d⟩, uᵀGu, qᵀu) as one row.
  primal = jnp.concatenate([u_all, lower_all[:, None], norms2[:, None], cos_all[:, None]],
                           axis=1)[jnp.argmax(lower_all)]
  upper = dual[num_tasks]
  found = jnp.isfinite(upper)
  return jnp.concatenate([primal[:num_tasks], jnp.where(found, dual[:num_tasks], p),
                          primal[num_tasks:], jnp.stack([upper, jnp.where(found, dual[-1], 0.0)])])


def _pack_start(u, w, slacks, beta, gamma, iterations):
  """A crossover start point as one vector (one select picks between two of them)."""
  return jnp.concatenate([u, w, slacks, jnp.stack([beta, gamma, iterations])])


def _unpack_start(start, k):
  """(u, w, task slacks, β, γ) of :func:`_pack_start` (iterations are the last entry)."""
  return start[:k], start[k:2 * k], start[2 * k:3 * k], start[3 * k], start[3 * k + 1]


def _unpack_attempt(attempt, k):
  """An attempt of :func:`_candidates`: the best primal candidate u with its lower
  bound min_i ⟨g_i, d⟩, uᵀGu and qᵀu, and the best dual candidate w with its
  upper bound ψ(w) and λ*(w)."""
  return _Attempt(u=attempt[:k], w=attempt[k:2 * k], value=attempt[2 * k],
                  norm2=attempt[2 * k + 1], cos=attempt[2 * k + 2], upper=attempt[2 * k + 3],
                  lam=attempt[2 * k + 4])


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
    >>> import jax
    >>> import jax.numpy as jnp
    >>> J = jnp.array([[1.0, 0.0], [-0.5, 1.0]])
    >>> w, diag = jax.jit(conic_weighting)(J @ J.T, c=0.5)
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
