"""imtl_l: the equilibrium e^{s_i} l_i = 1 and the scalarisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import conicgrad_jax as cg
from conicgrad_jax.methods import imtl_l as imtl_l_m
from loss_runs import run_losses


def test_imtl_l_reaches_its_equilibrium():
  l = np.array([0.5, 2.0])
  state = run_losses(cg.imtl_l(lr=0.05, num_tasks=2), [l] * 1500)
  # Observed: exact to float32 rounding after 1,500 steps.
  np.testing.assert_allclose(np.exp(np.asarray(state.log_scales)) * l, 1.0, atol=1e-4)


def test_weights_are_the_loss_gradient_and_s_takes_one_optimiser_step():
  l = jnp.array([0.5, 2.0])
  s = jnp.array([0.3, -0.2])
  opt = optax.sgd(0.1)
  state = imtl_l_m.IMTLLState(jnp.zeros(2), s, opt.init(s), jnp.zeros((), jnp.int32))
  w, new = imtl_l_m.imtl_l_weighting(l, state, opt)
  np.testing.assert_allclose(np.asarray(w), np.asarray(jax.grad(cg.imtl_l_loss)(l, s)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new.log_scales),
                             np.asarray(s) - 0.1 * (np.exp(np.asarray(s)) * np.asarray(l) - 1),
                             rtol=1e-6)
