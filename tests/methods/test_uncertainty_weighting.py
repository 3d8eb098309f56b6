"""uncertainty_weighting: the equilibrium e^s = l, the scalarisation, option checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods import uncertainty_weighting as uw_m
from loss_runs import run_losses


def test_uncertainty_weighting_reaches_its_equilibrium():
  l = np.array([0.5, 2.0])
  state = run_losses(cg.uncertainty_weighting(lr=0.05, num_tasks=2), [l] * 1500)
  # Observed after 1,500 steps: log-scales within 2e-9, weights exact to rounding.
  np.testing.assert_allclose(np.asarray(state.log_scales), np.log(l), atol=1e-4)
  np.testing.assert_allclose(np.asarray(state.weights), 0.5 / l, rtol=1e-4)


def test_weights_are_the_loss_gradient_and_s_takes_one_optimiser_step():
  l = jnp.array([0.5, 2.0])
  s = jnp.array([0.3, -0.2])
  opt = optax.sgd(0.1)
  state = uw_m.UncertaintyWeightingState(jnp.zeros(2), s, opt.init(s), jnp.zeros((), jnp.int32))
  w, new = uw_m.uw_weighting(l, state, opt)
  np.testing.assert_allclose(np.asarray(w), np.asarray(jax.grad(cg.uncertainty_weighting_loss)(l, s)),
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new.log_scales),
                             np.asarray(s) - 0.1 * 0.5 * (1 - np.exp(-np.asarray(s)) * np.asarray(l)),
                             rtol=1e-6)


def test_options_are_validated():
  with pytest.raises(ValueError, match="lr"):
    cg.uncertainty_weighting(lr=0.0)
  with pytest.raises(ValueError, match="init_log_scale"):
    cg.uncertainty_weighting(init_log_scale="zero")


def test_init_log_scale_sets_the_first_weights():
  """s₀ = init_log_scale: the first update's weights are ½e^{−s₀}, and s then moves by
  the optimiser's step on ½(1 − e^{−s}l) (Adam's first step: −lr·sign)."""
  l = np.array([0.5, 4.0])                   # 1 − e^{−0.7}l: +0.75 and −0.99
  state = run_losses(cg.uncertainty_weighting(lr=0.05, init_log_scale=0.7, num_tasks=2), [l])
  np.testing.assert_allclose(np.asarray(state.weights), 0.5 * np.exp(-0.7) * np.ones(2),
                             rtol=1e-6)
  step = np.sign(1.0 - np.exp(-0.7) * l)
  np.testing.assert_allclose(np.asarray(state.log_scales), 0.7 - 0.05 * step, rtol=1e-5)
