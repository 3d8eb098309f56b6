"""The barrier solver's certificates and polishes, each against a hand or numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_solvers as ref
from conicgrad_jax.solvers import barrier


def _x64(fn, *args):
  with jax.enable_x64(True):
    return jax.tree_util.tree_map(np.asarray, fn(*[jnp.asarray(a) for a in args]))


def _psd(seed, k=4, rank=None):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((k, rank or k))
  return a @ a.T


def test_simplex_gap_is_the_frank_wolfe_gap_and_bounds_the_error():
  """∇f(x)ᵀx − min_i ∇f(x)_i for f = ½xᵀGx, by hand; at least f(x) − min_Δ f (the minimum
  by enumerating the faces' KKT solutions)."""
  G = _psd(0)
  f = lambda x: 0.5 * x @ (jnp.asarray(G) @ x)
  rng = np.random.default_rng(1)
  f_star = ref.simplex_qp_minimum(G)
  for _ in range(5):
    x = rng.dirichlet(np.ones(4))
    grad = G @ x
    gap = float(_x64(lambda v: barrier.simplex_gap(f, v), x))
    assert gap == pytest.approx(grad @ x - grad.min(), rel=1e-12)
    assert gap >= 0.5 * x @ G @ x - f_star - 1e-12
  # x is scaled onto the simplex first.
  assert float(_x64(lambda v: barrier.simplex_gap(f, v), 3 * x)) == pytest.approx(gap, rel=1e-12)


def test_orthant_qp_gap_bounds_the_error_of_a_nonnegative_qp():
  """λᵀx + ½rᵀH⁻¹r with λ = max(∇f, 0), r = ∇f − λ, by hand; at least f(x) − min_{x ≥ 0} f
  (the minimum from the exact face enumeration)."""
  rng = np.random.default_rng(2)
  for seed in range(4):
    H = _psd(10 + seed) + 0.1 * np.eye(4)
    u = rng.uniform(0.05, 0.3, 4)
    f = lambda z: (z + u) @ (jnp.asarray(H) @ (z + u))
    z_star = ref.dual_cone_qp_by_enumeration(H, u) - u
    f_star = (z_star + u) @ H @ (z_star + u)
    z = rng.uniform(0.0, 0.5, 4)
    grad = 2 * H @ (z + u)
    lam = np.maximum(grad, 0)
    r = grad - lam
    expected = lam @ z + 0.5 * r @ np.linalg.solve(2 * H, r)
    gap = float(_x64(lambda v: barrier.orthant_qp_gap(f, v), z))
    assert gap == pytest.approx(expected, rel=1e-10)
    assert gap >= (z + u) @ H @ (z + u) - f_star - 1e-12


@pytest.mark.parametrize("simplex", [True, False])
def test_the_polishes_never_return_a_worse_point(simplex):
  """From random points and from faces guessed wrong on purpose (a tiny gap bound marks
  every coordinate active; a huge one only the largest): f never rises, and the simplex
  polishes stay on the simplex."""

  def objective(G, lin):
    return lambda x: 0.5 * x @ (G @ x) + lin @ x

  @jax.jit
  def polished(G, lin, x, bound):
    f = objective(G, lin)
    best, _ = barrier.polish_quadratic(f, x, bound, simplex=simplex)
    smooth = barrier.polish_on_simplex_face(f, x, bound) if simplex else best
    return f(x), f(best), f(smooth), best, smooth

  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    for seed in range(4):
      G = _psd(20 + seed, k=5, rank=3)
      lin = np.zeros(5) if simplex else rng.standard_normal(5)
      x = rng.dirichlet(np.ones(5)) if simplex else rng.uniform(0.0, 1.0, 5)
      for bound in (1e-30, 1e-4, 1e4):
        fx, fb, fs, best, smooth = jax.tree_util.tree_map(
            np.asarray, polished(G, lin, x, jnp.asarray(bound)))
        assert fb <= fx + 1e-12 and fs <= fx + 1e-12 and np.all(best >= 0)
        if simplex:
          assert best.sum() == pytest.approx(1.0, abs=1e-12)
          assert smooth.sum() == pytest.approx(1.0, abs=1e-9) and np.all(smooth >= 0)


def test_polish_quadratic_reaches_the_exact_minimum_from_a_rough_point():
  """min ½xᵀGx on the simplex from a point of the wrong support: the enumerated optimum
  (0.211 for this G: the origin lies outside the hull of its factor's rows)."""
  G = _psd(30, k=5, rank=3)
  assert ref.simplex_qp_minimum(G) > 0.1
  f = lambda x: 0.5 * x @ (jnp.asarray(G) @ x)
  best, _ = _x64(lambda v: barrier.polish_quadratic(f, v, jnp.asarray(1e-3), simplex=True),
                 np.full(5, 0.2))
  assert 0.5 * best @ G @ best == pytest.approx(ref.simplex_qp_minimum(G), rel=1e-9, abs=1e-14)


def test_the_default_tolerances_follow_the_dtype():
  assert barrier.default_tol(jnp.float64) == 1e-10
  assert barrier.default_tol(jnp.float32) == 1e-6


def test_barrier_minimize_stops_within_its_tolerance_of_the_simplex_minimum():
  """The cold barrier alone (no polish) on min ½xᵀGx over the simplex, float64: converged at
  ν·μ ≤ tol = 1e-10, and f(x) within 1e-10 of the enumerated minimum (an optimum on a face,
  where the barrier's error is of the order of ν·μ)."""
  G = _psd(30, k=5, rank=3)
  f_star = ref.simplex_qp_minimum(G)

  def solve(x0):
    f = lambda x: 0.5 * x @ (jnp.asarray(G) @ x)
    res = barrier.barrier_minimize(f, x0, simplex=True)
    return res.x, res.gap_bound, res.converged

  x, gap_bound, converged = _x64(solve, np.full(5, 0.2))
  assert converged and gap_bound <= 1e-10
  x = x / x.sum()
  assert np.all(x > 0) and 0.5 * x @ G @ x - f_star <= 1e-10


def test_polish_quadratic_grows_a_too_small_face_to_the_simplex_minimum():
  """From one vertex (a huge gap bound marks only the largest weight active), the active-set
  steps add the coordinates whose reduced gradient ∂f/∂x_i + multiplier is negative until the
  KKT conditions hold: the enumerated minimum, for QPs whose optimum has several weights."""
  rng = np.random.default_rng(4)
  for seed in (30, 31, 32):
    G = _psd(seed, k=5, rank=3)
    f = lambda x, G=G: 0.5 * x @ (jnp.asarray(G) @ x)
    best, _ = _x64(lambda v: barrier.polish_quadratic(f, v, jnp.asarray(1e4), simplex=True),
                   rng.dirichlet(np.ones(5)))
    assert np.all(best >= 0) and best.sum() == pytest.approx(1.0, abs=1e-12)
    assert 0.5 * best @ G @ best == pytest.approx(ref.simplex_qp_minimum(G), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("bound", [0.06 ** 2, 1e-30])
def test_polish_on_simplex_face_reaches_the_kkt_point_of_a_smooth_objective(bound):
  """f(x) = ½xᵀGx + lin·x + 0.1·Σ exp(x_i) on the simplex, from a point 20 % off its optimum
  (which has zero weights): the right face (x_i > 0.06) or every coordinate (the face guessed
  too large: the weights the Newton point drives negative leave it). The result meets the
  simplex KKT conditions to 1e-9: its Frank–Wolfe gap ∇f(x)ᵀx − min_i ∇f(x)_i, with ∇f by hand."""
  G = _psd(40, k=5, rank=3)
  lin = np.array([0.0, 0.3, 0.2, 0.8, 0.1])
  grad = lambda x: G @ x + lin + 0.1 * np.exp(x)
  fw_gap = lambda x: grad(x) @ x - grad(x).min()

  def objective(x):
    return 0.5 * x @ (jnp.asarray(G) @ x) + jnp.asarray(lin) @ x + 0.1 * jnp.sum(jnp.exp(x))

  # The optimum, by scipy's SLSQP, confirmed by the same KKT check.
  scipy_optimize = pytest.importorskip("scipy.optimize")
  x_opt = scipy_optimize.minimize(
      lambda x: 0.5 * x @ G @ x + lin @ x + 0.1 * np.sum(np.exp(x)), np.full(5, 0.2), jac=grad,
      method="SLSQP", bounds=[(0.0, 1.0)] * 5,
      constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones(5)}],
      options={"ftol": 1e-15, "maxiter": 200}).x
  x_opt = np.maximum(x_opt, 0.0) / np.maximum(x_opt, 0.0).sum()
  # A rough optimum is enough here (it only places the start and shows a zero weight).
  assert fw_gap(x_opt) < 1e-5 and np.sum(x_opt < 1e-4) >= 1 and np.all(x_opt[x_opt > 1e-4] > 0.1)
  rough = 0.8 * x_opt + 0.2 * np.full(5, 0.2)
  assert fw_gap(rough) > 1e-2
  y = _x64(lambda v: barrier.polish_on_simplex_face(objective, v, jnp.asarray(bound)), rough)
  assert np.all(y >= 0) and y.sum() == pytest.approx(1.0, abs=1e-12)
  assert fw_gap(y) < 1e-9
