"""dwa: softmax of the windowed loss ratios, uniform before the first full window."""

import numpy as np
import pytest

import conicgrad_jax as cg
from loss_runs import at, run_losses


def test_dwa_ratio_softmax():
  window, T = 3, 2.0
  seq = [np.array([1.0, 1.0])] * window + [np.array([0.5, 2.0])] * window
  state = run_losses(cg.dwa(temperature=T, window=window, num_tasks=2), seq)
  r = np.array([0.5, 2.0]) / np.array([1.0, 1.0])
  expected = np.exp(r / T) / np.exp(r / T).sum()
  np.testing.assert_allclose(np.asarray(state.weights), expected, rtol=1e-5)
  early = at(run_losses(cg.dwa(window=window, num_tasks=2), seq, history=True), 1)
  np.testing.assert_allclose(np.asarray(early.weights), 0.5)


def test_first_non_uniform_weights_at_call_window_plus_one():
  """The Nash-MTL code checks running_iterations > iteration_window before counting the
  call: calls 0..window are uniform, call window + 1 (0-based) is the first softmax."""
  window, T = 3, 2.0
  rng = np.random.default_rng(0)
  seq = [rng.uniform(0.5, 2.0, size=2) for _ in range(2 * window + 2)]
  states = run_losses(cg.dwa(temperature=T, window=window, num_tasks=2), seq, history=True)
  history = np.ones((2 * window, 2))                    # the reference's FIFO, ones at first
  for call, losses in enumerate(seq):
    history = np.concatenate([history[1:], losses[None]])
    if call > window:
      r = history[window:].mean(0) / history[:window].mean(0)
      expected = np.exp(r / T) / np.exp(r / T).sum()
    else:
      expected = np.full(2, 0.5)
    np.testing.assert_allclose(np.asarray(at(states, call).weights), expected, rtol=1e-5)


def test_options_are_validated():
  with pytest.raises(ValueError, match="temperature"):
    cg.dwa(temperature=0.0)
  with pytest.raises(ValueError, match="window"):
    cg.dwa(window=0)
