"""Independent references for the tests: cvxpy SOCP/QP solves and float64 numpy checks.

Nothing here uses the library's solver or its Gram matrix: quantities are
computed from the task-gradient matrix J itself, in float64.
"""

from __future__ import annotations

import itertools
import warnings

import cvxpy as cp
import numpy as np

_CLARABEL = dict(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                 tol_feas=1e-12, max_iter=200)


def solve_tight(problem: cp.Problem) -> float:
  """Solves a cvxpy problem with Clarabel at tight tolerances; returns its value.

  Clarabel at these tolerances sometimes ends "optimal_inaccurate" (accurate to about
  1e-9 on the problems here); any other status (infeasible, unbounded, stopped) fails.
  """
  with warnings.catch_warnings():
    # cvxpy warns "Solution may be inaccurate" for that status; the callers' tolerances
    # are set for it, so the warning says nothing the status does not.
    warnings.filterwarnings("ignore", message="Solution may be inaccurate")
    problem.solve(**_CLARABEL)
  assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE), problem.status
  return float(problem.value)


def _row_scale(J: np.ndarray) -> float:
  """The largest row norm of J (1 for a zero J).

  The references solve J/scale and scale the answers back: every problem here is
  homogeneous in J, and Clarabel's tolerances are absolute, so gradients of 1e-9
  would otherwise be solved to a relative accuracy of 1e-3.
  """
  scale = float(np.sqrt(np.max(np.sum(np.asarray(J, float) ** 2, axis=1))))
  return scale if scale > 0 else 1.0


def cap_primal(J: np.ndarray, c: float, p: np.ndarray | None = None):
  """max_d min_i ⟨g_i, d⟩ s.t. ‖d‖ ≤ 1, ⟨d, ĝ0⟩ ≥ c, solved by Clarabel.

  Returns (d, value). d is unique when value > 0.
  """
  scale = _row_scale(J)
  J = np.asarray(J, float) / scale
  K, m = J.shape
  p = np.full(K, 1.0 / K) if p is None else np.asarray(p, float) / np.sum(p)
  g0 = J.T @ p
  g0_hat = g0 / np.linalg.norm(g0)
  d = cp.Variable(m)
  t = cp.Variable()
  prob = cp.Problem(cp.Maximize(t),
                    [J @ d >= t, cp.norm(d) <= 1, g0_hat @ d >= c])
  solve_tight(prob)
  return np.asarray(d.value), float(prob.value) * scale


def joint_dual(J: np.ndarray, c: float, p: np.ndarray | None = None):
  """min_{w∈Δ, λ≥0} ‖Jᵀw + λĝ0‖ − cλ, solved by Clarabel. Returns (w, λ, value)."""
  scale = _row_scale(J)
  J = np.asarray(J, float) / scale
  K, _ = J.shape
  p = np.full(K, 1.0 / K) if p is None else np.asarray(p, float) / np.sum(p)
  g0 = J.T @ p
  g0_hat = g0 / np.linalg.norm(g0)
  w = cp.Variable(K, nonneg=True)
  lam = cp.Variable(nonneg=True)
  prob = cp.Problem(cp.Minimize(cp.norm(J.T @ w + lam * g0_hat) - c * lam),
                    [cp.sum(w) == 1])
  solve_tight(prob)
  return np.asarray(w.value), float(lam.value) * scale, float(prob.value) * scale


def mgda_direction(J: np.ndarray) -> np.ndarray:
  """The min-norm point of the convex hull of the rows of J (MGDA), by cvxpy."""
  J = np.asarray(J, float)
  K, _ = J.shape
  w = cp.Variable(K, nonneg=True)
  prob = cp.Problem(cp.Minimize(cp.sum_squares(J.T @ w / _row_scale(J))), [cp.sum(w) == 1])
  solve_tight(prob)
  return J.T @ np.asarray(w.value)


def lam_star(J, c, w, p=None):
  """λ*(w) = max(0, c·b/s − a) for simplex weights w, with g_w and ĝ0 (float64, from J).

  a = ⟨g_w, ĝ0⟩, b = ‖g_w − aĝ0‖, s = (1 − c²)^½. Returns (λ*, g_w, ĝ0).
  """
  K = J.shape[0]
  p = np.full(K, 1.0 / K) if p is None else np.asarray(p, float) / np.sum(p)
  g0 = np.asarray(J, float).T @ p
  g0_hat = g0 / np.linalg.norm(g0)
  g_w = np.asarray(J, float).T @ np.asarray(w, float)
  a = g_w @ g0_hat
  b = np.linalg.norm(g_w - a * g0_hat)
  return max(0.0, c * b / np.sqrt(1 - c * c) - a), g_w, g0_hat


def psi(J, c, w, p=None) -> float:
  """The dual function ψ(w) = min_λ≥0 ‖g_w + λĝ0‖ − cλ, in float64 from J."""
  lam, g_w, g0_hat = lam_star(J, c, w, p)
  return float(np.linalg.norm(g_w + lam * g0_hat) - c * lam)


def certified_gap(J, c, w, direction, p=None) -> float:
  """ψ(w) − best cap value along ``direction``, relative to max_i ‖g_i‖.

  The direction is scaled to the point of the cap {‖d‖ ≤ 1, ⟨d,ĝ0⟩ ≥ c} on its
  ray with the best worst-task value. Weak duality makes this ≥ 0 (up to
  rounding); it is the true sub-optimality certificate of (w, direction).
  """
  K = J.shape[0]
  p = np.full(K, 1.0 / K) if p is None else np.asarray(p, float) / np.sum(p)
  g0 = J.T @ p
  g0_hat = g0 / np.linalg.norm(g0)
  d = np.asarray(direction, float)
  d = d / np.linalg.norm(d)
  cos = d @ g0_hat
  value = np.min(J @ d)
  lower = value if value >= 0 else value * c / cos
  return (psi(J, c, w, p) - lower) / np.sqrt(np.max(np.sum(J * J, axis=1)))


def random_instance(rng, *, conflict: bool, k_choices=(2, 3, 5, 8, 11),
                    m_range=(2, 30)):
  """A random task-gradient matrix; with ``conflict`` the tasks oppose task 0.

  K comes from a few values (the solver compiles once per K; m never matters
  to it since only the Gram matrix enters), m from a range that straddles K.
  """
  K = int(rng.choice(k_choices))
  m = int(rng.integers(*m_range))
  J = rng.standard_normal((K, m)) * np.exp(rng.uniform(-2, 2, (K, 1)))
  if conflict:
    J[1:] -= 1.5 * J[0]
  return J


DUAL_CONE_REG_EPS = 1e-4   # the documented default ridge of P̂ = G/trace(G) + reg_eps·I (torchjd's)


def dual_cone_regularized_gram(G, reg_eps=DUAL_CONE_REG_EPS, norm_eps=0.0):
  """P̂ = G/trace(G) + reg_eps·I, in numpy (UPGrad's and DualProj's documented formula, not the library's).

  As torchjd, G/trace(G) is replaced by 0 when trace(G) < norm_eps.
  """
  normalized = G / np.trace(G) if np.trace(G) >= norm_eps else np.zeros_like(G)
  return normalized + reg_eps * np.eye(len(G))


def dual_cone_qp_by_enumeration(p_hat, lower):
  """argmin vᵀP̂v s.t. v ≥ lower, exactly: the face whose KKT conditions hold (2^K candidates).

  With the free set F fixed, v_F solves P̂_FF v_F = −P̂_FA lower_A; P̂ is positive definite,
  so exactly one face gives v_F ≥ lower_F and (P̂v)_A ≥ 0, and that v is the minimiser.
  """
  k = len(lower)
  for size in range(k + 1):
    for free in itertools.combinations(range(k), size):
      free = list(free)
      fixed = [i for i in range(k) if i not in free]
      v = np.array(lower, np.float64)
      if free:
        v[free] = np.linalg.solve(p_hat[np.ix_(free, free)], -p_hat[np.ix_(free, fixed)] @ v[fixed])
      if np.all(v[free] >= lower[free]) and np.all((p_hat @ v)[fixed] >= 0):
        return v
  raise AssertionError("no face satisfies the KKT conditions")


def simplex_qp_minimum(G) -> float:
  """min ½xᵀGx over the simplex, exactly: the least value of the faces' feasible minimisers.

  On the face of support S the minimiser of the affine hull solves [G_SS 1; 1ᵀ 0] by least
  squares; a feasible one (x_S ≥ 0) is a point of the simplex, and the optimal face's is the
  minimum (2^K − 1 faces).
  """
  k = len(G)
  best = np.inf
  for size in range(1, k + 1):
    for support in itertools.combinations(range(k), size):
      s = list(support)
      kkt = np.block([[G[np.ix_(s, s)], np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
      x_s = np.linalg.lstsq(kkt, np.concatenate([np.zeros(size), [1.0]]), rcond=None)[0][:size]
      if np.all(x_s >= -1e-12) and abs(x_s.sum() - 1.0) < 1e-9:
        best = min(best, 0.5 * x_s @ G[np.ix_(s, s)] @ x_s)
  return float(best)
