"""Gramian-only updates: the same Gram matrix and update as the stacked path, unrolled or scanned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax import (conic_weighting, conicgrad, gram_matrix, gramian_value_and_update,
                           value_and_task_grads)


def _model(rng):
  params = {"enc": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
            "heads": {"h0": jnp.asarray(rng.standard_normal(3), jnp.float32),
                      "h1": jnp.asarray(rng.standard_normal(3), jnp.float32),
                      "h2": jnp.asarray(rng.standard_normal(3), jnp.float32)}}
  x = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)

  def losses(p, x):
    z = jnp.tanh(x @ p["enc"])
    return jnp.stack([jnp.mean((z @ p["heads"]["h0"] - 1.0) ** 2),
                      jnp.mean((z @ p["heads"]["h1"] + 1.0) ** 2),
                      jnp.mean((z @ p["heads"]["h2"]) ** 2) + 0.1])
  return params, x, losses


MASK = {"enc": True, "heads": {"h0": False, "h1": False, "h2": False}}


@pytest.mark.parametrize("unroll, log_losses", [
    (True, False), (False, True),
    pytest.param(True, True, marks=pytest.mark.slow),
    pytest.param(False, False, marks=pytest.mark.slow)])
def test_gramian_mode_equals_the_stacked_path(unroll, log_losses):
  """Same G and the same ConicGrad update, from one task gradient at a time."""
  params, x, losses = _model(np.random.default_rng(4))
  l_a, update, gram, info = jax.jit(gramian_value_and_update(
      losses, lambda G: conic_weighting(G, 0.5), shared=MASK, unroll=unroll,
      log_losses=log_losses))(params, x)
  l_b, stacked = value_and_task_grads(losses, log_losses=log_losses)(params, x)
  np.testing.assert_allclose(np.asarray(l_a), np.asarray(l_b), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(gram), np.asarray(gram_matrix(stacked["enc"])),
                             rtol=1e-4, atol=1e-6)
  tx = conicgrad(0.5, shared=MASK)
  expected, _ = jax.jit(tx.update)(stacked, tx.init(params), params)
  for a, b in zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  assert float(info.cosine) >= 0.5 - 1e-4


def _gramian_temp_bytes(k, d=64, h=256, batch=16):
  rng = np.random.default_rng(0)
  params = {"enc": {"w1": jnp.asarray(rng.standard_normal((d, h)) * 0.1, jnp.float32),
                    "w2": jnp.asarray(rng.standard_normal((h, h)) * 0.1, jnp.float32)},
            "heads": jnp.asarray(rng.standard_normal((h, k)) * 0.1, jnp.float32)}
  x = jnp.asarray(rng.standard_normal((batch, d)), jnp.float32)

  def losses(p, x):
    z = jnp.tanh(jnp.tanh(x @ p["enc"]["w1"]) @ p["enc"]["w2"])
    return jnp.mean((z @ p["heads"] - 1.0) ** 2, axis=0)

  shared = {"enc": {"w1": True, "w2": True}, "heads": False}
  fn = gramian_value_and_update(losses, lambda G: conic_weighting(G, 0.5), shared=shared,
                                unroll=True)
  compiled = jax.jit(lambda p, x: fn(p, x)[1]).lower(params, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_unrolled_gramian_memory_does_not_grow_with_k():
  """One task gradient live at a time, under XLA's default scheduler (docs: memory modes)."""
  gradient_bytes = 4 * (64 * 256 + 256 * 256)
  small, large = _gramian_temp_bytes(2), _gramian_temp_bytes(16)
  assert large <= small + 2 * gradient_bytes, (small, large)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)])
def test_gramian_mode_takes_half_precision_parameters(dtype):
  """G is formed in float32 as on the stacked path (half precision has no eigh); the two
  paths then differ by the half-precision rounding of their gradients only."""
  import conicgrad_jax as cg
  params, x, losses = _model(np.random.default_rng(5))
  params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
  x = x.astype(dtype)
  shared = lambda path, leaf: "enc" in jax.tree_util.keystr(path)
  steps = {mode: cg.make_task_update(losses, cg.upgrad(num_tasks=3), mode=mode, shared=shared)
           for mode in ("stacked", "gramian")}
  out = {mode: jax.jit(t.step)(params, t.init(params), x) for mode, t in steps.items()}
  for mode, (_, update, state) in out.items():
    assert state.weights.dtype == jnp.float32, mode
    assert all(u.dtype == dtype for u in jax.tree_util.tree_leaves(update)), mode
  np.testing.assert_allclose(np.asarray(out["gramian"][2].weights),
                             np.asarray(out["stacked"][2].weights), rtol=0.02, atol=0.01)


@pytest.mark.parametrize("bad", ["data", "loss"])
def test_a_nonfinite_step_gives_a_zero_update(bad):
  """NaN data (non-finite G and gradients), or an infinite loss whose gradients are finite:
  every leaf of the update is zero, heads included."""
  params, x, losses = _model(np.random.default_rng(5))
  if bad == "data":
    fun, x = losses, x.at[0, 0].set(jnp.nan)
  else:
    fun = lambda p, x: losses(p, x) + jax.lax.stop_gradient(jnp.array([0.0, jnp.inf, 0.0]))
  out, update, _, _ = jax.jit(gramian_value_and_update(
      fun, lambda G: conic_weighting(G, 0.5), shared=MASK))(params, x)
  assert not np.all(np.isfinite(np.asarray(out)))
  for leaf in jax.tree_util.tree_leaves(update):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)


@pytest.mark.parametrize("case", ["more_tasks_than_parameters",
                                  pytest.param("parallel_gradients", marks=pytest.mark.slow)])
def test_gramian_mode_with_a_singular_gram_matrix_equals_the_stacked_mode(case):
  """K = 3 tasks on 2 shared parameters, or two tasks with parallel gradients: G is
  singular and its computed eigenvalues may be slightly negative."""
  rng = np.random.default_rng(6)
  params = {"enc": jnp.asarray(rng.standard_normal(2), jnp.float32),
            "heads": jnp.asarray(rng.standard_normal(3), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((8, 2)), jnp.float32)
  if case == "parallel_gradients":
    params["enc"] = jnp.asarray(rng.standard_normal(4), jnp.float32)
    x = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)

  def fun(p, x):
    z = x @ p["enc"]
    first = jnp.mean((z - 1.0) ** 2)
    third = (2.0 * first if case == "parallel_gradients"      # task 2 = 2 × task 0
             else jnp.mean(jnp.tanh(z * p["heads"][2]) ** 2) + 0.1)
    return jnp.stack([first, jnp.mean((z * p["heads"][1] + 1.0) ** 2), third])

  mask = lambda path, leaf: "enc" in jax.tree_util.keystr(path)
  out = {}
  for mode in ("stacked", "gramian"):
    task = cg.make_task_update(fun, cg.conicgrad(0.5, num_tasks=3), mode=mode, shared=mask)
    _, update, state = jax.jit(task.step)(params, task.init(params), x)
    assert int(state.method_state.nonfinite_steps) == 0
    out[mode] = update
  assert np.linalg.norm(np.asarray(out["stacked"]["enc"])) > 1e-3
  # A singular G makes the float32 solve sensitive to G's rounding, which differs between
  # the two modes: observed ≤ 2e-4 relative.
  for a, b in zip(jax.tree_util.tree_leaves(out["gramian"]), jax.tree_util.tree_leaves(out["stacked"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-5)
