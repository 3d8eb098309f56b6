"""Accumulating stacked task gradients over micro-batches equals one large batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg


def _problem(seed=0, n=12, k=3):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.standard_normal((4, k)), jnp.float32),
            "b": jnp.zeros((k,), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((n, 4)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((n, k)), jnp.float32)

  def losses(p, x, y):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2, axis=0)     # K task losses, batch means
  return params, x, y, cg.value_and_task_grads(losses)


@pytest.mark.parametrize("make", [lambda: cg.conicgrad(0.5, num_tasks=3),
                                  lambda: cg.mgda("loss", num_tasks=3)])
def test_accumulated_update_equals_large_batch_update(make):
  params, x, y, grads_fn = _problem()
  big_losses, big_grads = grads_fn(params, x, y)
  inner = make()
  expected, _ = inner.update(big_grads, inner.init(params), params, losses=big_losses)

  tx = cg.accumulate_task_grads(make(), every=3, num_tasks=3)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for i in range(3):                                 # three equal micro-batches of 4
    l, g = grads_fn(params, x[4 * i:4 * i + 4], y[4 * i:4 * i + 4])
    updates, state = step(g, state, params, losses=l)
    if i < 2:
      assert all(np.all(np.asarray(u) == 0) for u in jax.tree_util.tree_leaves(updates))
  for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  assert int(state.count) == 0                       # a new round starts
  assert step._cache_size() == 1


def test_needs_params_and_positive_every():
  with pytest.raises(ValueError, match="every"):
    cg.accumulate_task_grads(cg.conicgrad(0.5), every=0, num_tasks=2)
  with pytest.raises(ValueError, match="`inner` must be an optax transformation"):
    cg.accumulate_task_grads("conicgrad", every=2, num_tasks=2)
  with pytest.raises(ValueError, match="init\\(params\\)"):
    cg.accumulate_task_grads(cg.conicgrad(0.5), every=2, num_tasks=2).init(None)


def test_summed_head_gradients_are_averaged_not_multiplied_by_k():
  # value_and_task_grads(shared=...) returns task-specific leaves summed over tasks,
  # without a task axis; accumulating [1, 1] and [3, 3] must give their mean.
  params = {"enc": jnp.zeros(2), "head": jnp.zeros(2)}
  shared = {"enc": True, "head": False}
  tx = optax.chain(
      cg.accumulate_task_grads(cg.linear_scalarization("sum", num_tasks=2, shared=shared),
                               every=2, num_tasks=2),
      optax.sgd(1.0))
  state = tx.init(params)
  enc = jnp.eye(2)
  u1, state = tx.update({"enc": enc, "head": jnp.array([1.0, 1.0])}, state, params)
  u2, state = tx.update({"enc": 3 * enc, "head": jnp.array([3.0, 3.0])}, state, params)
  np.testing.assert_allclose(np.asarray(u1["head"]), 0.0)
  np.testing.assert_allclose(np.asarray(u2["head"]), [-2.0, -2.0])
  np.testing.assert_allclose(np.asarray(u2["enc"]), [-2.0, -2.0])  # Σ_k of the mean rows 2·I


def test_a_nonfinite_micro_batch_skips_its_round_or_alone_under_skip_nonfinite():
  params, x, y, grads_fn = _problem()
  micro = [grads_fn(params, x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]) for i in range(3)]
  bad_l, bad_g = micro[0][0], jax.tree_util.tree_map(lambda g: g.at[0].set(jnp.nan), micro[0][1])
  inner = cg.mgda(num_tasks=3)
  expected, _ = inner.update(grads_fn(params, x, y)[1], inner.init(params), params)

  tx = cg.accumulate_task_grads(cg.mgda(num_tasks=3), every=3, num_tasks=3)
  step, state = jax.jit(tx.update), tx.init(params)
  for l, g in [(bad_l, bad_g)] + micro[1:]:             # the round with the bad micro-batch
    updates, state = step(g, state, params, losses=l)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree_util.tree_leaves(updates))
  assert int(state.inner_state.nonfinite_steps) == 1 and int(state.count) == 0
  for l, g in micro:                                    # the next round starts afresh
    updates, state = step(g, state, params, losses=l)
  for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

  # Under skip_nonfinite the bad micro-batch alone is dropped: the round goes on with
  # the three finite ones and gives the large batch's update.
  tx = cg.skip_nonfinite(cg.accumulate_task_grads(cg.mgda(num_tasks=3), every=3, num_tasks=3))
  step, state = jax.jit(tx.update), tx.init(params)
  for l, g in [micro[0], (bad_l, bad_g)] + micro[1:]:
    updates, state = step(g, state, params, losses=l)
  for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _shared_problem(seed=1, n=8, k=2):
  rng = np.random.default_rng(seed)
  params = {"enc": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
            "heads": jnp.asarray(rng.standard_normal((4, k)), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((n, 3)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((n, k)), jnp.float32)

  def losses(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["enc"]) @ p["heads"] - y) ** 2, axis=0)
  return params, x, y, losses


@pytest.mark.parametrize("make", [
    # ConicGrad with summed heads also runs in tests/test_contracts.py by default.
    pytest.param(lambda shared: cg.conicgrad(0.5, num_tasks=2, shared=shared),
                 marks=pytest.mark.slow),
    lambda shared: cg.mgda(num_tasks=2, shared=shared),
])
def test_accumulation_with_summed_heads_equals_large_batch_under_sgd(make):
  params, x, y, losses = _shared_problem()
  shared = {"enc": True, "heads": False}
  grads_fn = cg.value_and_task_grads(losses, shared=shared)   # heads come summed
  big = optax.chain(make(shared), optax.sgd(0.5))
  l, g = grads_fn(params, x, y)
  expected, _ = jax.jit(big.update)(g, big.init(params), params, losses=l)

  tx = optax.chain(cg.accumulate_task_grads(make(shared), every=2, num_tasks=2), optax.sgd(0.5))
  state = tx.init(params)
  step = jax.jit(tx.update)
  for i in range(2):
    l, g = grads_fn(params, x[4 * i:4 * i + 4], y[4 * i:4 * i + 4])
    updates, state = step(g, state, params, losses=l)
  for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_inner_method_runs_once_per_round():
  calls = []
  base = cg.conicgrad(0.5, num_tasks=2)

  def update(g, state, params=None, **extra):
    jax.debug.callback(lambda: calls.append(1))      # runs only when the inner update runs
    return base.update(g, state, params, **extra)

  tx = cg.accumulate_task_grads(optax.GradientTransformationExtraArgs(base.init, update),
                                every=3, num_tasks=2)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(6):
    _, state = step({"w": jnp.eye(2)}, state, params)
  jax.effects_barrier()
  assert len(calls) == 2


def test_inner_without_num_tasks_is_named():
  tx = cg.accumulate_task_grads(cg.conicgrad(0.5), every=2, num_tasks=2)
  params = {"w": jnp.zeros(2)}
  with pytest.raises(ValueError, match="num_tasks"):
    tx.update({"w": jnp.eye(2)}, tx.init(params), params)


def test_wrapping_the_whole_chain_steps_adam_once_per_round():
  params = {"w": jnp.zeros(2)}
  tx = cg.accumulate_task_grads(optax.chain(cg.conicgrad(0.5, num_tasks=2), optax.adam(0.1)),
                                every=2, num_tasks=2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  counts = []
  for g in [jnp.eye(2), 3 * jnp.eye(2), jnp.eye(2)]:
    updates, state = step({"w": g}, state, params)
    counts.append(int(state.inner_state[1][0].count))
  assert counts == [0, 1, 1]
  assert np.all(np.asarray(updates["w"]) == 0)     # first call of the second round


def test_bfloat16_micro_batches_are_averaged_in_float32():
  """300 bfloat16 micro-batches: the mean is the float32 mean rounded once to bfloat16,
  not a running sum that rounds every contribution away."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.zeros((1000,), jnp.bfloat16)}
  grads = rng.normal(3.0, 1.0, size=(300, 2, 1000)).astype(np.float32)
  grads_bf16 = jnp.asarray(grads, jnp.bfloat16)
  tx = cg.accumulate_task_grads(cg.linear_scalarization(num_tasks=2), every=300, num_tasks=2)
  state = tx.init(params)
  assert state.mean_task_grads["w"].dtype == jnp.float32

  def body(state, g):
    u, state = tx.update({"w": g}, state, params)
    return state, u["w"]

  _, updates = jax.jit(lambda s: jax.lax.scan(body, s, grads_bf16))(state)
  expected = np.asarray(grads_bf16, np.float32).mean(0).mean(0)   # LS: the mean over tasks
  got = np.asarray(updates[-1], np.float32)
  assert updates.dtype == jnp.bfloat16
  # One bfloat16 rounding of the exact mean (relative 2^-8), not hundreds of them.
  np.testing.assert_allclose(got, expected, rtol=2 ** -7)


def test_the_inner_method_receives_the_mean_of_the_micro_batch_losses():
  """DWA keeps the losses it is given (its history) and weighs by their ratios: both
  match a DWA given the mean losses and mean gradients of each round; the state's
  running mean is checked after the first two micro-batches of each round too."""
  params, x, y, grads_fn = _problem()
  micro = [grads_fn(params, x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]) for i in range(3)]
  make = lambda: cg.dwa(temperature=1.0, window=1, num_tasks=3)
  tx = cg.accumulate_task_grads(make(), every=3, num_tasks=3)
  inner = make()
  inner_state = inner.init(params)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for round_ in range(3):                         # DWA (window 1) needs two earlier rounds
    scale = jnp.asarray([1.0, 2.0 + round_, 0.5 * (round_ + 1) ** 2], jnp.float32)
    losses = [l * scale for l, _ in micro]
    for i, (l, (_, g)) in enumerate(zip(losses, micro)):
      updates, state = step(g, state, params, losses=l)
      if i < 2:
        np.testing.assert_allclose(np.asarray(state.mean_losses),
                                   np.mean(np.stack(losses[:i + 1]), axis=0), rtol=1e-6)
    mean_grads = jax.tree_util.tree_map(lambda *a: sum(a) / 3, *[g for _, g in micro])
    expected, inner_state = inner.update(mean_grads, inner_state, params,
                                         losses=sum(losses) / 3)
    for a, b in zip(jax.tree_util.tree_leaves(state.inner_state),
                    jax.tree_util.tree_leaves(inner_state)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # The third round's weights are not uniform: the losses reached the method.
  assert np.ptp(np.asarray(inner_state.weights)) > 0.05


def test_misshaped_inputs_are_named():
  params = {"enc": jnp.zeros((2, 3)), "head": jnp.zeros(4)}
  tx = cg.accumulate_task_grads(cg.conicgrad(0.5, num_tasks=2), every=2, num_tasks=2)
  state = tx.init(params)
  good = {"enc": jnp.ones((2, 2, 3)), "head": jnp.ones(4)}
  with pytest.raises(ValueError, match=r"\['head'\] has shape \(1,\); expected \(2, 4\) "
                                       r"\(stacked\) or \(4,\)"):
    tx.update(dict(good, head=jnp.ones(1)), state, params)
  with pytest.raises(ValueError, match=r"\['enc'\] has shape \(3, 2, 3\)"):
    tx.update(dict(good, enc=jnp.ones((3, 2, 3))), state, params)
  with pytest.raises(ValueError, match=r"`losses` has shape \(3,\); expected \(2,\)"):
    tx.update(good, state, params, losses=jnp.ones(3))
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(good, state)
  with pytest.raises(ValueError, match="head"):
    tx.update({"enc": good["enc"]}, state, params)
