"""cagrad: the worst-task improvement within a ball around g0 (cvxpy reference), contract."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
import reference_solvers as ref
from conicgrad_jax.methods import cagrad as cagrad_m

SEEDS = range(4)
C = 0.5


def test_published_values():
  _common.check_published(cg.cagrad, [0.1835, 1.2041, 1.2041], c=0.5, rescale=0)


def test_cagrad_solves_its_ball_problem():
  Js = [_common.random_J(seed) for seed in SEEDS]
  weigh = jax.jit(jax.vmap(lambda G: cagrad_m.cagrad_weighting(G, C, rescale=0)))
  ws, _ = _common.x64(weigh, np.stack([J @ J.T for J in Js]))
  for J, w in zip(Js, ws):
    d = J.T @ w
    g0 = J.mean(0)
    x = cp.Variable(J.shape[1])
    t = cp.Variable()
    ref.solve_tight(cp.Problem(cp.Maximize(t), [J @ x >= t,
                                                cp.norm(x - g0) <= C * np.linalg.norm(g0)]))
    np.testing.assert_allclose(d, x.value, atol=1e-4 * np.linalg.norm(g0))


@pytest.mark.slow
def test_rescale_divides_the_ball_solution():
  """The official code returns d, d/(1 + c²) (its default) or d/(1 + c) for rescale 0, 1, 2."""
  J = _common.random_J(0)
  G = J @ J.T
  weights = {r: _common.x64(jax.jit(lambda G, r=r: cagrad_m.cagrad_weighting(G, C, rescale=r)),
                            G)[0] for r in (0, 1, 2)}
  np.testing.assert_allclose(weights[1], weights[0] / (1 + C * C), rtol=1e-10)
  np.testing.assert_allclose(weights[2], weights[0] / (1 + C), rtol=1e-10)
  tx = cg.cagrad(C)                      # the factory's default is the official one
  update, _ = _common.x64(tx.update, {"w": J}, tx.init(None))
  np.testing.assert_allclose(update["w"], J.T @ weights[1], rtol=1e-6)


@pytest.mark.slow   # four compilations of a vmapped solver: about 6 s
def test_float32_warm_and_cold_solves_match_float64_also_from_an_unrelated_start():
  """Float32 weights, cold and started from the answer of an unrelated Gram matrix
  (400 problems, K = 3, random gradients: many optima on an edge or a vertex of the
  simplex), against the float64 solve, to 1e-5. A warm barrier started far from the
  central path once claimed convergence after a few steps with weights 16 % off, and the
  float32 barrier alone stopped percents off on edge and vertex optima; Newton steps on
  the active face, and a Frank–Wolfe gap that must confirm a warm barrier's claim, fix both."""
  from conicgrad_jax.solvers import barrier
  rng = np.random.default_rng(1)
  grams = np.stack([(lambda J: J @ J.T)(rng.standard_normal((3, 25))) for _ in range(800)])
  solve = lambda G, previous: cagrad_m._solve(G, 0.4, rescale=1, tol=None, max_iter=100,
                                              previous=previous)[0]
  cold = jax.jit(jax.vmap(lambda G: solve(G, None)))
  w_ref = _common.x64(cold, grams[1::2])
  _, _, first = jax.jit(jax.vmap(lambda G: cagrad_m._solve(G, 0.4, rescale=1, tol=None,
                                                            max_iter=100, previous=None)))(
      jnp.asarray(grams[::2], jnp.float32))
  warm = jax.jit(jax.vmap(lambda G, w: solve(G, barrier.PreviousSolution(w, jnp.asarray(True)))))
  w_warm = np.asarray(warm(jnp.asarray(grams[1::2], jnp.float32), first))
  w_cold = np.asarray(cold(jnp.asarray(grams[1::2], jnp.float32)))
  scale = np.max(np.abs(w_ref), axis=1, keepdims=True)
  np.testing.assert_allclose(w_cold / scale, w_ref / scale, atol=1e-5)
  np.testing.assert_allclose(w_warm / scale, w_ref / scale, atol=1e-5)


def test_options_are_validated():
  with pytest.raises(ValueError, match="warm_start"):
    cg.cagrad(warm_start="yes")
  with pytest.raises(ValueError, match="rescale"):
    cg.cagrad(rescale=3)
  with pytest.raises(ValueError, match="`c`"):
    cg.cagrad(1.5)


@pytest.mark.slow   # by value, and its default subset: test_degenerate_values.py
def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.cagrad)


def test_optax_contract():
  _common.check_optax_contract(cg.cagrad)


_warm_and_cold = jax.jit(lambda Js: _common.warm_and_cold_runs(cg.cagrad, Js))


@pytest.mark.slow
def test_warm_start_agrees_with_cold_solve_in_fewer_newton_steps():
  """In float32 the warm and cold weights differ by up to about 1e-4 of the largest
  (8.9e-5 with XLA's default code generation, 1.2e-4 after a change of kernel fusion
  that is exact in real arithmetic), so the float32 bound is 1e-3: other machines
  round differently."""
  _common.check_warm_start(_warm_and_cold, rtol32=1e-3, rtol64=1e-8)
