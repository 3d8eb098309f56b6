"""stch: 1/l during the warm-up, then the smooth Tchebycheff weights around the nadir."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from loss_runs import at, run_losses


def test_stch_warmup_then_smooth_tchebycheff():
  warm = 4
  seq = [np.array([1.0, 4.0]), np.array([1.0, 4.0]), np.array([2.0, 2.0]), np.array([4.0, 2.0])]
  l = np.array([1.5, 3.0])
  states = run_losses(cg.stch(warmup_steps=warm, mu=0.5, num_tasks=2), seq + [l], history=True)
  state = at(states, 0)
  np.testing.assert_allclose(np.asarray(state.weights), 1.0 / seq[0], rtol=1e-6)
  state = at(states, len(seq))
  nadir = (seq[2] + seq[3]) / 2                       # mean over the warm-up's second half
  x = np.log(l / nadir)
  soft = np.exp(x / 0.5) / np.exp(x / 0.5).sum()
  np.testing.assert_allclose(np.asarray(state.weights), 2 * soft / l, rtol=1e-5)


def test_an_odd_warm_up_collects_the_nadir_over_its_larger_second_half():
  """warmup_steps = 5: the nadir is the mean of the last 3 warm-up losses (5 − ⌊5/2⌋)."""
  seq = [np.array([8.0, 1.0]), np.array([1.0, 4.0]), np.array([2.0, 6.0]),
         np.array([4.0, 2.0]), np.array([3.0, 5.0])]
  l = np.array([1.5, 3.0])
  states = run_losses(cg.stch(warmup_steps=5, mu=0.5, num_tasks=2), seq + [l], history=True)
  nadir = (seq[2] + seq[3] + seq[4]) / 3
  x = np.log(l / nadir)
  soft = np.exp(x / 0.5) / np.exp(x / 0.5).sum()
  np.testing.assert_allclose(np.asarray(at(states, len(seq)).weights), 2 * soft / l, rtol=1e-5)


def test_reference_epoch_schedule_with_one_step_per_epoch():
  """LibMTL/Xi-L with warmup_epoch = 4: log losses for epochs 0-4, the nadir from epoch 4,
  STCH from epoch 5 (warmup_steps = 5, nadir_steps = 1 at one update per epoch)."""
  rng = np.random.default_rng(0)
  seq = [rng.uniform(0.5, 3.0, size=2) for _ in range(8)]
  states = run_losses(cg.stch(warmup_steps=5, nadir_steps=1, num_tasks=2), seq, history=True)
  for epoch, l in enumerate(seq):
    if epoch <= 4:
      expected = 1.0 / l
    else:
      x = np.log(l / seq[4])
      expected = 2 * np.exp(x) / np.exp(x).sum() / l
    np.testing.assert_allclose(np.asarray(at(states, epoch).weights), expected, rtol=1e-5)


def test_weights_are_the_gradient_of_stch_loss():
  l, nadir = jnp.array([1.5, 3.0]), jnp.array([2.0, 1.0])
  x = np.log(np.asarray(l) / np.asarray(nadir))
  soft = np.exp(x) / np.exp(x).sum()
  np.testing.assert_allclose(np.asarray(jax.grad(cg.stch_loss)(l, nadir)), 2 * soft / l,
                             rtol=1e-5)


def test_options_are_validated():
  with pytest.raises(ValueError, match="mu"):
    cg.stch(mu=-1.0)
  with pytest.raises(ValueError, match="warmup_steps"):
    cg.stch(warmup_steps=0)
  with pytest.raises(ValueError, match="nadir_steps"):
    cg.stch(warmup_steps=4, nadir_steps=5)


def test_the_default_warm_up_is_100_steps_with_the_nadir_over_its_last_50():
  """Defaults (warmup_steps=100, mu=1): 1/l through step 99; from step 100 on, the smooth
  Tchebycheff weights around the mean loss of warm-up steps 50..99 (its second half)."""
  rng = np.random.default_rng(3)
  seq = rng.uniform(0.5, 3.0, size=(102, 3))
  states = run_losses(cg.stch(num_tasks=3), seq, grads={"w": jnp.eye(3)}, history=True)
  for step in (0, 49, 98, 99):
    np.testing.assert_allclose(np.asarray(at(states, step).weights), 1.0 / seq[step], rtol=1e-5)
  nadir = seq[50:100].mean(axis=0)
  for step in (100, 101):
    l = seq[step]
    x = np.log(l / nadir)
    expected = 3 * np.exp(x) / np.exp(x).sum() / l
    np.testing.assert_allclose(np.asarray(at(states, step).weights), expected, rtol=1e-4)
    # The post-warm-up weights are not the warm-up rule's (the check tells the two apart).
    assert np.abs(expected - 1.0 / l).max() > 1e-2 * np.abs(expected).max()
