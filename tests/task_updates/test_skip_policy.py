"""make_task_update skips a step as a method on its own does: the whole update is zero (heads
included) and the method's state is the old one with ``nonfinite_steps`` + 1, in every mode,
whether the method rejected the step or a head gradient or a loss was not finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg

K = 3
MODES = [
    pytest.param({"mode": "stacked"}, id="stacked"),
    pytest.param({"mode": "gramian"}, id="gramian"),
    pytest.param({"mode": "chunked", "chunk_size": 2}, id="chunked", marks=pytest.mark.slow),
    pytest.param({"mode": "representation"}, id="representation", marks=pytest.mark.slow),
]


def _problem():
  rng = np.random.default_rng(0)
  params = {"enc": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
            "heads": jnp.asarray(rng.standard_normal((K, 4)), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
  return params, x


def encode(p, x):
  return jnp.tanh(x @ p["enc"])


def heads(p, z, x, shift):
  # √ of a head entry: at 0 its gradient is infinite while every loss stays finite.
  return (jnp.mean((z @ p["heads"].T - x[:, :K]) ** 2, axis=0) + 0.05 + shift
          + jnp.sqrt(jnp.abs(p["heads"][0, 0])))


def shared(path, leaf):
  del leaf
  return "enc" in jax.tree_util.keystr(path)


def _task(method, options, shift):
  options = dict(options)
  if options["mode"] == "representation":
    return cg.make_task_update(lambda p, z, x: heads(p, z, x, shift), method, encode=encode,
                               **options)
  return cg.make_task_update(lambda p, x: heads(p, encode(p, x), x, shift), method,
                             shared=shared, **options)


def _assert_skipped(update, state, before):
  assert all(np.all(np.asarray(l) == 0.0) for l in jax.tree_util.tree_leaves(update))
  assert int(state.method_state.nonfinite_steps) == int(before.method_state.nonfinite_steps) + 1
  kept = before.method_state._replace(nonfinite_steps=state.method_state.nonfinite_steps)
  for a, b in zip(jax.tree_util.tree_leaves(state.method_state), jax.tree_util.tree_leaves(kept)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(state.weights), np.asarray(before.weights))


@pytest.mark.parametrize("options", MODES)
def test_a_step_the_method_rejects_moves_nothing(options):
  """GLS takes log L_k: a negative loss (finite gradients) is a step it rejects. Applying
  its previous weights to the encoder, or Σ_k ∇L_k to the heads, would still move them."""
  params, x = _problem()
  params = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  shift = jnp.array([0.0, -100.0, 0.0])
  task = _task(cg.gls(num_tasks=K), options, shift)
  state = task.init(params)
  _, update, new_state = jax.jit(task.step)(params, state, x)
  _assert_skipped(update, new_state, state)


@pytest.mark.parametrize("options", MODES)
def test_a_nonfinite_head_gradient_skips_the_step_and_keeps_the_method_state(options):
  """Finite losses and shared gradients, an infinite head gradient: FAMO (whose state
  changes every step) must neither advance nor leave the step uncounted."""
  params, x = _problem()
  params = {**params, "heads": params["heads"].at[0, 0].set(0.0)}
  task = _task(cg.famo(num_tasks=K), options, jnp.zeros(K))
  state = task.init(params)
  losses, update, new_state = jax.jit(task.step)(params, state, x)
  assert np.all(np.isfinite(np.asarray(losses)))
  _assert_skipped(update, new_state, state)
  # The same step with a finite head gradient is taken.
  params = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  _, update, taken = jax.jit(task.step)(params, state, x)
  assert int(taken.method_state.nonfinite_steps) == 0
  assert np.any(np.asarray(update["heads"]) != 0.0)


@pytest.mark.parametrize("mode", ["stacked", pytest.param("representation",
                                                          marks=pytest.mark.slow)])
def test_a_reuse_step_with_a_nonfinite_head_gradient_is_counted(mode):
  params, x = _problem()
  options = {"mode": mode, "every": 2}
  task = _task(cg.conicgrad(0.5, num_tasks=K), options, jnp.zeros(K))
  step = jax.jit(task.step)
  good = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  _, _, state = step(good, task.init(params), x)          # recomputes
  bad = {**params, "heads": params["heads"].at[0, 0].set(0.0)}
  _, update, reused = step(bad, state, x)                 # reuses the weights
  assert int(reused.step) == 2
  _assert_skipped(update, reused, state)
