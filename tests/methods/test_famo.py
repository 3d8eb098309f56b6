"""famo: weights z/(c·l), the logit update from the loss decrease."""

import numpy as np
import pytest

import conicgrad_jax as cg
from loss_runs import at, run_losses


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
