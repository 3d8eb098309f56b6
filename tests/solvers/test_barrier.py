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
