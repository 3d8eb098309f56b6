"""skip_nonfinite freezes a whole chain (method state, Adam moments, parameters) on a bad step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg

PARAMS = {"enc": jnp.array([0.5, -1.0, 2.0]), "head": jnp.array([1.0, 1.0])}
SHARED = {"enc": True, "head": False}
GOOD = [{"enc": jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]), "head": jnp.array([0.5, 0.5])},
        {"enc": jnp.array([[2.0, 1.0, 0.0], [-1.0, 1.0, 1.0]]), "head": jnp.array([1.0, -1.0])}]
BAD = {"enc": jnp.array([[1.0, jnp.nan, 2.0], [0.0, 1.0, -1.0]]), "head": jnp.array([0.5, 0.5])}
LOSSES = jnp.array([1.0, 2.0])


def _chain():
  return optax.chain(cg.conicgrad(0.5, num_tasks=2, shared=SHARED), optax.adam(0.1))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _train(tx, grads_seq, losses_seq=None):
  step = jax.jit(tx.update)
  params, state = PARAMS, tx.init(PARAMS)
  history = []
  for i, g in enumerate(grads_seq):
    losses = LOSSES if losses_seq is None else losses_seq[i]
    updates, state = step(g, state, params, losses=losses)
    params = optax.apply_updates(params, updates)
    history.append((params, state, updates))
  assert step._cache_size() == 1
  return history


BAD_HEAD = {"enc": GOOD[1]["enc"], "head": jnp.array([0.5, jnp.inf])}


@pytest.mark.parametrize("bad", [BAD, BAD_HEAD], ids=["shared leaf", "task-specific leaf"])
def test_a_non_finite_step_leaves_params_adam_moments_and_method_state_untouched(bad):
  history = _train(cg.skip_nonfinite(_chain()), [GOOD[0], bad, GOOD[1]])
  (p1, s1, _), (p2, s2, u2), (p3, s3, _) = history
  assert all(np.all(u == 0) for u in _leaves(u2))
  assert jax.tree_util.tree_structure(u2) == jax.tree_util.tree_structure(PARAMS)
  for a, b in zip(_leaves(p1), _leaves(p2)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(s1.inner_state), _leaves(s2.inner_state)):  # ConicGrad + Adam (mu, nu, count)
    np.testing.assert_array_equal(a, b)
  assert int(s2.inner_state[1][0].count) == 1
  assert (int(s2.notfinite_count), bool(s2.last_finite), int(s2.total_notfinite)) == (1, False, 1)
  # Training continues, exactly as if the bad step had never happened.
  assert (int(s3.notfinite_count), bool(s3.last_finite), int(s3.total_notfinite)) == (0, True, 1)
  reference = _train(cg.skip_nonfinite(_chain()), [GOOD[0], GOOD[1]])[-1][0]
  for a, b in zip(_leaves(p3), _leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(_leaves(p2), _leaves(p3)))


def test_without_the_wrapper_adam_moves_by_its_momentum_on_a_nan_step():
  # Why the wrapper exists: the method alone returns a zero update, Adam still steps.
  (p1, _, _), (p2, _, u2) = _train(_chain(), [GOOD[0], BAD])
  assert any(not np.allclose(a, b) for a, b in zip(_leaves(p1), _leaves(p2)))
  assert all(np.all(np.isfinite(u)) for u in _leaves(u2))


def test_nan_losses_are_skipped_too():
  history = _train(cg.skip_nonfinite(optax.chain(cg.famo(num_tasks=2, shared=SHARED),
                                                 optax.sgd(0.1))),
                   [GOOD[0], GOOD[1]], [LOSSES, jnp.array([jnp.nan, 1.0])])
  (p1, s1, _), (p2, s2, _) = history
  for a, b in zip(_leaves((p1, s1.inner_state)), _leaves((p2, s2.inner_state))):
    np.testing.assert_array_equal(a, b)
  assert int(s2.total_notfinite) == 1


def test_after_max_consecutive_errors_the_update_goes_through():
  tx = cg.skip_nonfinite(optax.chain(cg.linear_scalarization("sum", num_tasks=2), optax.sgd(1.0)),
                         max_consecutive_errors=1)
  grads = {"enc": jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, jnp.inf]]),
           "head": jnp.ones((2, 2))}
  history = _train(tx, [grads, grads])
  assert all(np.all(u == 0) for u in _leaves(history[0][2]))           # 1st: skipped
  # 2nd: 2 > 1 consecutive: applied as the chain computed it (the method itself zeroes it).
  assert int(history[1][1].notfinite_count) == 2
  assert int(history[1][1].inner_state[0].nonfinite_steps) == 1


def test_after_max_consecutive_errors_a_nonzero_update_is_applied_and_the_step_still_flagged():
  """NaN losses with finite gradients: linear scalarisation ignores the losses, so its
  update is the gradients' sum, which the wrapper withholds once and then applies."""
  tx = cg.skip_nonfinite(optax.chain(cg.linear_scalarization("sum", num_tasks=2),
                                     optax.sgd(1.0)), max_consecutive_errors=1)
  grads = {"enc": jnp.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]), "head": jnp.ones((2, 2))}
  nan_losses = jnp.array([1.0, jnp.nan])
  history = _train(tx, [grads, grads], [nan_losses, nan_losses])
  assert all(np.all(u == 0) for u in _leaves(history[0][2]))           # 1st: skipped
  assert not bool(history[0][1].last_finite)
  # 2nd: 2 > 1 consecutive: applied as the chain computed it, still counted non-finite.
  for u, g in zip(_leaves(history[1][2]), _leaves(grads)):
    np.testing.assert_allclose(u, -g.sum(0))
  assert not bool(history[1][1].last_finite)
  assert int(history[1][1].notfinite_count) == 2 and int(history[1][1].total_notfinite) == 2


def test_bad_max_consecutive_errors():
  with pytest.raises(ValueError, match="max_consecutive_errors"):
    cg.skip_nonfinite(optax.sgd(1.0), max_consecutive_errors=-1)
  with pytest.raises(ValueError, match="`inner` must be an optax transformation"):
    cg.skip_nonfinite("sgd")


def test_optax_apply_if_finite_cannot_wrap_a_multi_task_chain():
  """optax's wrapper returns zeros shaped like the *stacked* input on its reject branch.

  Documented in README (use skip_nonfinite instead); should optax change, this test
  shows it and README can say so.
  """
  tx = optax.apply_if_finite(_chain(), 5)
  state = tx.init(PARAMS)
  try:
    updates, _ = jax.jit(tx.update)(BAD, state, PARAMS, losses=LOSSES)
  except TypeError as e:
    assert any(w in str(e) for w in ("cond", "branch", "true_fun"))  # wording varies by jax version
  else:  # if it ever works, it must have frozen the parameters
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(PARAMS)
    assert all(np.all(u == 0) for u in _leaves(updates))


def test_nan_in_a_list_of_python_float_losses_is_skipped_too():
  """``losses=[l1, l2]`` has Python floats as leaves (outside ``jit``, where they are not
  traced into arrays); a NaN among them skips the step."""
  tx = cg.skip_nonfinite(optax.chain(cg.famo(num_tasks=2, shared=SHARED), optax.adam(0.1)))
  updates, state_1 = tx.update(GOOD[0], tx.init(PARAMS), PARAMS, losses=[1.0, 2.0])
  params = optax.apply_updates(PARAMS, updates)
  updates, state_2 = tx.update(GOOD[1], state_1, params, losses=[float("nan"), 2.0])
  assert int(state_2.total_notfinite) == 1
  assert all(np.all(u == 0) for u in _leaves(updates))
  for a, b in zip(_leaves(state_1.inner_state), _leaves(state_2.inner_state)):
    np.testing.assert_array_equal(a, b)


def test_a_chain_whose_state_learns_k_at_its_first_update_is_named():
  tx = cg.skip_nonfinite(optax.chain(cg.conicgrad(0.5, shared=SHARED), optax.adam(0.1)))
  with pytest.raises(ValueError, match="num_tasks=K"):
    tx.update(GOOD[0], tx.init(PARAMS), PARAMS)


def test_a_chain_that_makes_finite_gradients_non_finite_is_skipped_too():
  """The updates the chain returns are checked as well as its inputs: here the chain
  itself scales finite updates by NaN."""
  tx = cg.skip_nonfinite(optax.chain(cg.conicgrad(0.5, num_tasks=2, shared=SHARED),
                                     optax.scale(float("nan"))))
  (_, s1, u1), = _train(tx, [GOOD[0]])
  assert all(np.all(u == 0) for u in _leaves(u1))
  assert (int(s1.notfinite_count), bool(s1.last_finite), int(s1.total_notfinite)) == (1, False, 1)
  for a, b in zip(_leaves(s1.inner_state), _leaves(tx.init(PARAMS).inner_state)):
    np.testing.assert_array_equal(a, b)
