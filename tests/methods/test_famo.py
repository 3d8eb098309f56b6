"""famo: weights z/(c·l), the logit update from the loss decrease."""

import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from loss_runs import at, run_losses
from methods._common import TorchStyleAdam


def test_famo_weights_and_logit_update():
  l0, l1 = np.array([2.0, 1.0]), np.array([1.0, 1.0])   # task 0 improved, task 1 did not
  states = run_losses(cg.famo(w_lr=0.1, gamma=0.0, num_tasks=2), [l0, l1], history=True)
  s0, s1 = at(states, 0), at(states, 1)
  np.testing.assert_allclose(np.asarray(s0.weights), (0.5 / l0) / np.sum(0.5 / l0), rtol=1e-5)
  # δ = log l_prev − log l_now = (log 2, 0); grad ξ = z ⊙ (δ − z·δ); Adam's first step is −lr·sign.
  delta = np.log(l0) - np.log(l1)
  grad = 0.5 * (delta - 0.5 * delta.sum())
  np.testing.assert_allclose(np.asarray(s1.logits), -0.1 * np.sign(grad), atol=1e-4)
  z = np.exp(s1.logits) / np.exp(s1.logits).sum()
  w = z / l1 / np.sum(z / l1)
  np.testing.assert_allclose(np.asarray(s1.weights), w, rtol=1e-5)
  assert float(np.sum(s1.weights)) == pytest.approx(1.0, rel=1e-5)


def test_options_are_validated():
  with pytest.raises(ValueError, match="w_lr"):
    cg.famo(w_lr=0.0)
  with pytest.raises(ValueError, match="gamma"):
    cg.famo(gamma=-1.0)


def test_weight_decay_and_min_losses_match_a_numpy_reference():
  """Eight steps of FAMO against numpy: Adam with L2 decay on ξ, the bound in every log."""
  rng = np.random.default_rng(0)
  min_losses = np.array([0.0, -1.0, 0.1])   # below every loss of seq
  seq = [rng.uniform(0.5, 2.0, 3) / (1 + 0.3 * t) for t in range(8)]
  tx = cg.famo(w_lr=0.05, gamma=0.01, min_losses=jnp.asarray(min_losses, jnp.float32),
               num_tasks=3)
  states = run_losses(tx, seq, grads={"w": jnp.eye(3)}, history=True)
  xi, adam, prev = np.zeros(3), TorchStyleAdam(0.05, weight_decay=0.01), None
  for t, losses in enumerate(np.asarray(seq, np.float32).astype(np.float64)):
    if prev is not None:
      delta = np.log(prev - min_losses + 1e-8) - np.log(losses - min_losses + 1e-8)
      z = np.exp(xi) / np.exp(xi).sum()
      xi = adam.step(xi, z * (delta - z @ delta))
    z = np.exp(xi) / np.exp(xi).sum()
    gap = losses - min_losses + 1e-8
    weights = z / gap / np.sum(z / gap)
    prev = losses
    np.testing.assert_allclose(np.asarray(at(states, t).logits), xi, atol=1e-5)
    np.testing.assert_allclose(np.asarray(at(states, t).weights), weights, rtol=1e-5)


def test_a_first_step_below_min_losses_is_skipped_and_training_goes_on():
  seq = [[-1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
  states = run_losses(cg.famo(num_tasks=2), seq, history=True)
  first, second = at(states, 0), at(states, 1)
  assert int(first.nonfinite_steps) == 1 and int(first.step) == 0
  # The second call is FAMO's first step: z uniform, w ∝ 1/l, ξ not moved.
  assert int(second.nonfinite_steps) == 1 and int(second.step) == 1
  np.testing.assert_allclose(np.asarray(second.weights), [2 / 3, 1 / 3], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(second.prev_losses), [1.0, 2.0])
  assert int(at(states, 2).nonfinite_steps) == 1


def test_min_losses_must_be_a_scalar_or_one_per_task():
  with pytest.raises(ValueError, match="min_losses"):
    cg.famo(min_losses=jnp.zeros(3), num_tasks=2)
  with pytest.raises(ValueError, match="min_losses"):
    cg.famo(min_losses=jnp.zeros((2, 1)))
  tx = cg.famo(min_losses=jnp.zeros(3))     # K unknown until the first update
  with pytest.raises(ValueError, match="min_losses"):
    tx.update({"w": jnp.eye(2)}, tx.init(None), losses=jnp.ones(2))


@pytest.mark.parametrize("min_losses", [1.0, -2.0, np.array([1.0, 0.0], np.float32)])
def test_a_loss_equal_to_its_bound_is_inside_the_domain(min_losses):
  """log(l − min + 10⁻⁸) is finite at l = min, whatever float32 makes of min − 10⁻⁸."""
  tx = cg.famo(min_losses=min_losses)
  losses = jnp.asarray(np.broadcast_to(min_losses, (2,)) + np.array([0.0, 3.0]), jnp.float32)
  u, state = tx.update({"w": jnp.eye(2)}, tx.init(None), losses=losses)
  assert int(state.nonfinite_steps) == 0 and np.all(np.isfinite(np.asarray(u["w"])))
  assert float(state.weights[0]) > 0.99          # the task at its bound weighs the most


@pytest.mark.parametrize("as_given", [list, tuple, np.asarray])
def test_min_losses_as_a_list_or_tuple_weigh_as_the_array(as_given):
  losses = jnp.array([1.0, 2.0])
  reference = cg.famo(min_losses=jnp.array([0.5, 0.0]))
  tx = cg.famo(min_losses=as_given([0.5, 0.0]))
  expected = reference.update({"w": jnp.eye(2)}, reference.init(None), losses=losses)[1].weights
  got = tx.update({"w": jnp.eye(2)}, tx.init(None), losses=losses)[1].weights
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got), [0.8, 0.2], rtol=1e-5)   # ∝ 1/(l − min)
  loss = cg.famo_loss(losses, jnp.zeros(2), as_given([0.5, 0.0]))
  assert np.isfinite(float(loss))
