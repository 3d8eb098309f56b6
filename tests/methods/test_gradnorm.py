"""gradnorm: weights that equalise the weighted gradient norms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods import gradnorm as gradnorm_m
from loss_runs import at, run_losses


def test_gradnorm_equalises_weighted_gradient_norms():
  J = np.array([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0]])      # norms 1 and 4
  g = {"w": jnp.asarray(J, jnp.float32)}
  states = run_losses(cg.gradnorm(alpha=1.5, lr=0.05, num_tasks=2), [[1.0, 1.0]] * 401, grads=g,
                      history=True)
  np.testing.assert_allclose(np.asarray(at(states, 0).weights), 1.0)   # first step: plain sum
  w = np.asarray(at(states, -1).weights)                 # equal training rates: r = 1
  assert w.sum() == pytest.approx(2.0, rel=1e-5)         # K·softmax
  # Observed 4.6% off after 400 steps: Adam's steps of about lr keep the weights moving
  # about the equilibrium w_1·1 = w_2·4 instead of settling on it.
  assert w[0] * 1.0 == pytest.approx(w[1] * 4.0, rel=0.1)


def test_weighting_step_is_adam_on_the_balance_loss():
  gram = jnp.diag(jnp.array([1.0, 16.0]))
  opt = optax.sgd(0.1)
  s = jnp.array([0.2, -0.1])
  state = gradnorm_m.GradNormState(jnp.ones(2), s, opt.init(s), jnp.array([2.0, 1.0]),
                                   jnp.ones((), jnp.int32), jnp.zeros((), jnp.int32))
  losses = jnp.array([1.0, 1.0])
  w, new = gradnorm_m.gradnorm_weighting(gram, losses, state, opt, alpha=1.0)
  np.testing.assert_allclose(np.asarray(w), 2 * np.asarray(jax.nn.softmax(s)), rtol=1e-6)
  ratio = np.array([0.5, 1.0]) / 0.75                    # (l/l⁰)/mean(l/l⁰)
  # ∂/∂s Σ|G_i − t_i| with the target t held constant (the paper's stop-gradient):
  # K·(diag(σ) − σσᵀ)(sign(G − t) ⊙ ‖g‖), σ = softmax(s), written out in numpy.
  norms = np.array([1.0, 4.0])
  sigma = np.exp(np.asarray(s, np.float64)) / np.exp(np.asarray(s, np.float64)).sum()
  big_g = 2 * sigma * norms
  target = big_g.mean() * ratio
  grad = 2 * (np.diag(sigma) - np.outer(sigma, sigma)) @ (np.sign(big_g - target) * norms)
  np.testing.assert_allclose(np.asarray(new.logits), np.asarray(s) - 0.1 * grad, rtol=1e-5)
  # The balance loss's minimum: G_i = Ḡ r_i^α.
  gw = 2 * np.asarray(jax.nn.softmax(s)) * np.array([1.0, 4.0])
  value = float(gradnorm_m.gradnorm_balance_loss(s, jnp.array([1.0, 4.0]), jnp.asarray(ratio), 1.0))
  assert value == pytest.approx(np.abs(gw - gw.mean() * ratio).sum(), rel=1e-5)


def test_the_target_raises_the_loss_ratio_to_the_power_alpha():
  # s = 0, K = 2, norms (1, 3): G = (1, 3), Ḡ = 2; r = (0.5, 1.5), α = 2:
  # targets 2·(0.25, 2.25) = (0.5, 4.5), loss |1 − 0.5| + |3 − 4.5| = 2.
  value = gradnorm_m.gradnorm_balance_loss(jnp.zeros(2), jnp.array([1.0, 3.0]),
                                           jnp.array([0.5, 1.5]), 2.0)
  assert float(value) == pytest.approx(2.0, rel=1e-6)


def test_steps_without_positive_losses_are_skipped_and_l0_is_recorded_later():
  g = {"w": jnp.eye(2)}
  seq = [[0.0, 1.0], [0.5, 0.5], [-1.0, 0.5], [0.25, 0.5]]
  states = run_losses(cg.gradnorm(alpha=1.5, lr=0.05, num_tasks=2), seq, grads=g, history=True)
  assert [int(at(states, i).nonfinite_steps) for i in range(4)] == [1, 1, 2, 2]
  # l⁰ comes from the first step with positive losses, and the last step is a
  # GradNorm step from it: finite weights that sum to K.
  np.testing.assert_allclose(np.asarray(at(states, 3).initial_losses), [0.5, 0.5])
  assert int(at(states, 3).step) == 2
  w = np.asarray(at(states, 3).weights)
  assert np.all(np.isfinite(w)) and w.sum() == pytest.approx(2.0, rel=1e-5)


def test_an_exact_tie_contributes_no_gradient_as_torch_abs():
  """Norms (1, 2, 3), equal loss ratios, s = 0: G = (1, 2, 3) and the target is Ḡ = 2, so task 1
  sits exactly on it; LibMTL's torch.abs gives that term derivative 0 (jnp.abs would give 1)."""
  norms, k = np.array([1.0, 2.0, 3.0]), 3
  grad = jax.grad(gradnorm_m.gradnorm_balance_loss)(jnp.zeros(k), jnp.asarray(norms, jnp.float32),
                                                    jnp.ones(k), 1.5)
  sigma = np.full(k, 1.0 / k)
  dL_dG = np.sign(norms - norms.mean())                 # (−1, 0, 1)
  dG_ds = k * norms[:, None] * (np.diag(sigma) - np.outer(sigma, sigma))
  np.testing.assert_allclose(np.asarray(grad), dG_ds.T @ dL_dG, rtol=1e-6, atol=1e-7)


def test_training_rates_move_the_weights_through_the_transformation():
  """Equal gradient norms, unequal training rates: only r_i = (l_i/l⁰_i)/mean(l/l⁰) can
  move the weights. With α > 0 the task whose loss fell least gains weight, by Adam's
  first step on s (−lr·g/(|g| + ε)) on ∂/∂s_j Σ_i |G_i − Ḡ r_i^α|, written out here."""
  k, lr, alpha = 3, 0.1, 1.5
  tx = cg.gradnorm(alpha=alpha, lr=lr)
  grads = {"w": jnp.eye(k)}                      # ‖g_i‖ = 1
  l0 = np.array([1.0, 2.0, 4.0])
  l1 = l0 * np.array([2.0, 1.0, 0.5])            # training rates 2, 1, 0.5
  state = tx.init(None)
  _, state = tx.update(grads, state, losses=jnp.asarray(l0))   # records l⁰
  u, state = tx.update(grads, state, losses=jnp.asarray(l1))   # w = 1; s takes its step
  np.testing.assert_allclose(np.asarray(u["w"]), np.ones(k), rtol=1e-6)
  u, state = tx.update(grads, state, losses=jnp.asarray(l1))
  r = np.array([2.0, 1.0, 0.5])
  r /= r.mean()
  sign = np.sign(1.0 - r ** alpha)               # G_i = 1 = Ḡ at s = 0; |1 − r_i^α| ≥ 0.2
  grad = sign - sign.sum() / k                   # K n_j σ_j sign_j − K σ_j Σ_i sign_i n_i σ_i
  s1 = -lr * grad / (np.abs(grad) + 1e-8)
  expected = k * np.exp(s1) / np.exp(s1).sum()
  np.testing.assert_allclose(np.asarray(u["w"]), expected, rtol=1e-5)
  assert expected[0] > 1.0 > expected[1]
