"""value_and_task_grads (stacked and chunked) against jax.jacrev, both strategies; log-losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conicgrad_jax import conicgrad, value_and_task_grads
from conicgrad_jax.task_updates import default_strategy, default_unroll


def _model(rng):
  params = {"enc": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
            "heads": {"h0": jnp.asarray(rng.standard_normal(3), jnp.float32),
                      "h1": jnp.asarray(rng.standard_normal(3), jnp.float32)}}
  x = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)

  def losses(p, x):
    z = jnp.tanh(x @ p["enc"])
    return jnp.stack([jnp.mean((z @ p["heads"]["h0"] - 1.0) ** 2),
                      jnp.mean((z @ p["heads"]["h1"] + 1.0) ** 2)])
  return params, x, losses


def _close(a, b, **tol):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_matches_jacrev(strategy):
  params, x, losses = _model(np.random.default_rng(0))
  values, grads = value_and_task_grads(losses, strategy=strategy)(params, x)
  np.testing.assert_allclose(np.asarray(values), np.asarray(losses(params, x)), rtol=1e-6)
  _close(grads, jax.jacrev(losses)(params, x), rtol=1e-5, atol=1e-6)


def test_the_vmap_strategy_runs_one_batched_backward_pass_and_the_loop_k():
  """In the traced program the loop has K copies of the backward pass's products, the
  vmapped VJP one (batched over the tasks)."""
  params, x, losses = _model(np.random.default_rng(0))
  k = losses(params, x).shape[0]
  assert k >= 2

  def products(strategy):
    jaxpr = jax.make_jaxpr(value_and_task_grads(losses, strategy=strategy))(params, x)
    return str(jaxpr).count("dot_general")

  forward = str(jax.make_jaxpr(losses)(params, x)).count("dot_general")
  backward_loop = products("loop") - forward
  backward_vmap = products("vmap") - forward
  assert backward_loop == k * backward_vmap > 0


def test_backend_defaults():
  assert default_strategy() == ("loop" if jax.default_backend() == "cpu" else "vmap")
  assert default_unroll() == (jax.default_backend() == "cpu")
  with pytest.raises(ValueError, match="strategy"):
    value_and_task_grads(lambda p: p, strategy="scan")
  with pytest.raises(ValueError, match="unroll"):
    value_and_task_grads(lambda p: p, unroll="yes")


def test_shared_only_stacks_shared_leaves_and_sums_heads():
  params, x, losses = _model(np.random.default_rng(1))
  mask = {"enc": True, "heads": {"h0": False, "h1": False}}
  values, grads = value_and_task_grads(losses, shared=mask)(params, x)
  jac = jax.jacrev(losses)(params, x)
  np.testing.assert_allclose(np.asarray(grads["enc"]), np.asarray(jac["enc"]), rtol=1e-5, atol=1e-6)
  assert grads["heads"]["h0"].shape == params["heads"]["h0"].shape
  np.testing.assert_allclose(np.asarray(grads["heads"]["h0"]),
                             np.asarray(jac["heads"]["h0"].sum(0)), rtol=1e-5, atol=1e-6)
  # These feed straight into conicgrad with the same mask.
  tx = conicgrad(0.5, shared=mask)
  full = value_and_task_grads(losses)(params, x)[1]
  u_short, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  u_full, _ = jax.jit(tx.update)(full, tx.init(params), params)
  _close(u_short, u_full, rtol=1e-5, atol=1e-6)


def test_has_aux():
  params, x, losses = _model(np.random.default_rng(2))
  f = value_and_task_grads(lambda p, x: (losses(p, x), {"n": x.shape[0]}), has_aux=True)
  (values, aux), grads = f(params, x)
  assert aux["n"] == 8 and values.shape == (2,)
  assert grads["enc"].shape == (2, 4, 3)


def test_log_losses_gives_the_gradients_divided_by_the_losses():
  """∇ log L_k = ∇L_k / L_k; the returned values stay L_k."""
  params, x, losses = _model(np.random.default_rng(5))
  values, grads = value_and_task_grads(losses, log_losses=True)(params, x)
  l = np.asarray(losses(params, x))
  np.testing.assert_allclose(np.asarray(values), l, rtol=1e-6)
  jac = jax.jacrev(losses)(params, x)
  for g, j in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(jac)):
    expected = np.asarray(j) / l.reshape((-1,) + (1,) * (j.ndim - 1))
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unroll", [True, False])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_chunked_backward_passes_give_the_same_gradients(unroll, strategy):
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)
  f = lambda p, x: jnp.mean(jnp.tanh(x @ p["w"]) ** 2, axis=0)        # K = 5 task losses
  _, chunked = jax.jit(value_and_task_grads(f, chunk_size=2, unroll=unroll,
                                            strategy=strategy))(params, x)
  np.testing.assert_allclose(np.asarray(chunked["w"]), np.asarray(jax.jacrev(f)(params, x)["w"]),
                             rtol=1e-5, atol=1e-7)


def _step_temp_bytes(mode, k=8, **options):
  """XLA's temporaries of a step on a net whose backward intermediates dwarf its parameters."""
  from conicgrad_jax import imtl_g, make_task_update
  rng = np.random.default_rng(0)
  params = {"enc": {"w1": jnp.asarray(rng.standard_normal((4, 64)) * 0.3, jnp.float32),
                    "w2": jnp.asarray(rng.standard_normal((64, 64)) * 0.1, jnp.float32)},
            "heads": jnp.asarray(rng.standard_normal((64, k)) * 0.1, jnp.float32)}
  x = jnp.asarray(rng.standard_normal((8192, 4)), jnp.float32)

  def losses(p, x):
    z = jnp.tanh(jnp.tanh(x @ p["enc"]["w1"]) @ p["enc"]["w2"])
    return jnp.mean((z @ p["heads"] - 1.0) ** 2, axis=0)

  task = make_task_update(losses, imtl_g(num_tasks=k), mode=mode,
                          shared={"enc": {"w1": True, "w2": True}, "heads": False}, **options)
  compiled = jax.jit(task.step).lower(params, task.init(params), x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_unrolled_chunks_run_one_after_another():
  """chunk_size=1 holds one task's backward intermediates at a time (2 MiB per layer here),
  not all K = 8 at once as XLA's scheduler would arrange unchained chunks."""
  stacked_bytes = _step_temp_bytes("stacked")
  chunked_bytes = _step_temp_bytes("chunked", chunk_size=1, unroll=True)
  assert chunked_bytes <= 0.5 * stacked_bytes, (chunked_bytes, stacked_bytes)


def test_the_loss_function_and_flags_are_checked_by_name():
  with pytest.raises(ValueError, match="`fun` must be a function"):
    value_and_task_grads("loss")
  with pytest.raises(ValueError, match="`has_aux` must be True or False"):
    value_and_task_grads(lambda p: p, has_aux="yes")
  with pytest.raises(ValueError, match="`log_losses` must be True or False"):
    value_and_task_grads(lambda p: p, log_losses=1)
