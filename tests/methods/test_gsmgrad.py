"""gsmgrad: the tracked regularised min-norm problem, the warm start, scale invariance, training."""

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _common
import conicgrad_jax as cg
import reference_solvers as ref


def _J(seed, k=4, m=7):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m))
  J[1:] -= 0.8 * J[0]
  return J


def _regularised_min_norm(J, rho):
  G = J @ J.T
  G = G / np.linalg.norm(G)
  w = cp.Variable(J.shape[0], nonneg=True)
  ref.solve_tight(cp.Problem(cp.Minimize(0.5 * cp.quad_form(w, cp.psd_wrap(G))
                                         + 0.5 * rho * cp.sum_squares(w)), [cp.sum(w) == 1]))
  return w.value


def test_gsmgrad_tracks_the_regularised_min_norm_solution():
  """Repeated single projected steps on a fixed G converge to argmin_Δ ½wᵀĜw + ½ρ‖w‖² (cvxpy)."""
  seeds = range(3)
  tx = cg.gsmgrad(lr=0.5, rho=0.05, warm_start_steps=1, num_tasks=4)

  @jax.jit
  @jax.vmap
  def run(J):                             # 3000 updates per instance, all instances at once
    def body(state, _):
      u, state = tx.update({"w": J}, state)
      return state, u["w"]
    state, us = jax.lax.scan(body, tx.init(None), None, length=3000)
    return state.weights, us[-1]

  weights, updates = run(jnp.asarray(np.stack([_J(seed) for seed in seeds]), jnp.float32))
  for i, seed in enumerate(seeds):
    J = _J(seed)
    w_ref = _regularised_min_norm(J, 0.05)
    np.testing.assert_allclose(np.asarray(weights[i]), w_ref, atol=2e-4)
    np.testing.assert_allclose(np.asarray(updates[i]), J.T @ np.asarray(weights[i]), atol=1e-5)


def test_gsmgrad_warm_start_then_one_step_per_update():
  J = _J(7)
  g = {"w": jnp.asarray(J, jnp.float32)}
  tx = cg.gsmgrad(lr=0.5, rho=0.0, warm_start_steps=20000, num_tasks=4)
  update = jax.jit(tx.update)                                    # one compilation, both calls
  _, state = update(g, tx.init(None))
  mgda = cg.mgda()
  mgda_u, _ = jax.jit(mgda.update)(g, mgda.init(None))           # ρ = 0: the MGDA solution
  np.testing.assert_allclose(J.T @ np.asarray(state.weights), np.asarray(mgda_u["w"]), atol=2e-3)
  # The next update takes exactly one projected step from the stored weights.
  J2 = _J(8)
  _, state2 = update({"w": jnp.asarray(J2, jnp.float32)}, state)
  G = J2 @ J2.T
  G = G / np.linalg.norm(G)
  w = np.asarray(state.weights, np.float64)
  expected = _common.project_simplex(w - 0.5 * (G @ w))
  np.testing.assert_allclose(np.asarray(state2.weights), expected, atol=1e-5)


def test_gsmgrad_is_invariant_to_the_gradient_scale():
  J = jnp.asarray(_J(3), jnp.float32)
  tx = cg.gsmgrad(num_tasks=4)
  run = jax.jit(jax.vmap(lambda c: tx.update({"w": c * J}, tx.init(None))[1].weights))
  # Gradients from 1e-15 to 1e15: G from 1e-30 to 1e30, whose squares over- and
  # underflow float32 (the Frobenius norm must not square G itself).
  scales = [1e-15, 1e-6, 1.0, 1e6, 1e15]
  outs = np.asarray(run(jnp.array(scales, jnp.float32)))
  for out in outs:
    np.testing.assert_allclose(out, outs[2], atol=1e-5)


def test_gsmgrad_options_are_validated():
  with pytest.raises(ValueError, match="lr"):
    cg.gsmgrad(lr=0.0)
  with pytest.raises(ValueError, match="rho"):
    cg.gsmgrad(rho=-1.0)
  with pytest.raises(ValueError, match="warm_start_steps"):
    cg.gsmgrad(warm_start_steps=0)


def test_weighting_is_one_projected_step_after_the_first():
  from conicgrad_jax.methods import gsmgrad as gsmgrad_m
  gram = jnp.asarray(_J(4) @ _J(4).T, jnp.float32)
  state = gsmgrad_m.GSMGradState(jnp.full(4, 0.25), jnp.ones((), jnp.int32), jnp.zeros((), jnp.int32))
  w, new = gsmgrad_m.gsmgrad_weighting(gram, state, lr=0.3, rho=0.1, warm_start_steps=50)
  g_hat = np.asarray(gram) / np.linalg.norm(np.asarray(gram))
  w0 = np.full(4, 0.25)
  expected = _common.project_simplex(w0 - 0.3 * (g_hat @ w0 + 0.1 * w0))
  np.testing.assert_allclose(np.asarray(w), np.asarray(expected), atol=1e-6)
  assert int(new.step) == 2


def test_gsmgrad_chains_with_adam_on_a_two_task_quadratic():
  targets = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  losses = lambda x: jnp.sum((x[None] - targets) ** 2, axis=1)
  opt = optax.chain(cg.gsmgrad(num_tasks=2), optax.adam(0.05))
  x = jnp.array([3.0, -2.0])
  state = opt.init(x)

  def step(carry, _):
    x, state = carry
    u, state = opt.update(jax.jacrev(losses)(x), state, x)
    return (optax.apply_updates(x, u), state), None

  (x, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=300))((x, state))
  # A Pareto-stationary point: on the segment between the two minima.
  assert abs(float(x[0] + x[1]) - 1.0) < 0.05 and -0.05 < float(x[0]) < 1.05
