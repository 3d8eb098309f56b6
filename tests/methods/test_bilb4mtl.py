"""bilb4mtl: the weights are the gradient of its scalarisation, the router moves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from loss_runs import run_losses


def test_weights_loss_and_router_step_by_hand():
  """l = (1, 3), uniform router σ = (½, ½), λ = 0.1, worked out by hand.

  L = σ·l/Σσ + λ|σ₁l₁ − σ₂l₂| = 2 + 0.1·1 = 2.1. The weights ∂L/∂l are
  σ/Σσ + λ·sign(σ₁l₁ − σ₂l₂)·(σ₁, −σ₂) = (0.45, 0.55). With Σσ held constant,
  ∂L/∂σ = l + λ·sign(·)·(l₁, −l₂) = (0.9, 3.3) and, through the softmax's
  Jacobian diag(σ) − σσᵀ, ∂L/∂logits = (−0.6, 0.6): the router's first Adam
  step moves the logits by (+lr, −lr).
  """
  l = jnp.array([1.0, 3.0])
  assert float(cg.bilb4mtl_loss(l, jnp.zeros(2), l, 0.1)) == pytest.approx(2.1, rel=1e-6)
  np.testing.assert_allclose(
      np.asarray(jax.grad(cg.bilb4mtl_loss, argnums=1)(l, jnp.zeros(2), l, 0.1)),
      [-0.6, 0.6], rtol=1e-5)
  state = run_losses(cg.bilb4mtl(lamb=0.1, lr=0.01, num_tasks=2), [l])
  np.testing.assert_allclose(np.asarray(state.weights), [0.45, 0.55], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(state.logits), [0.01, -0.01], rtol=1e-4)


def test_loss_normalisations():
  l, l0 = jnp.array([1.0, 3.0]), jnp.array([2.0, 4.0])
  sigma = np.full(2, 0.5)
  for normalization, norm in [("identity", np.asarray(l)),
                              ("rescaled", np.asarray(l) / (np.asarray(l0) / 2.0)),
                              ("log", np.log(np.asarray(l) / np.asarray(l0)))]:
    value = cg.bilb4mtl_loss(l, jnp.zeros(2), l0, 0.0, normalization)
    assert float(value) == pytest.approx(float(sigma @ norm), rel=1e-6), normalization


def test_options_are_validated():
  with pytest.raises(ValueError, match="normalization"):
    cg.bilb4mtl(normalization="z-score")
  with pytest.raises(ValueError, match="lamb"):
    cg.bilb4mtl(lamb=-0.1)


def test_the_initial_losses_are_the_first_steps_and_normalise_the_next():
  l0, l1 = np.array([2.0, 4.0]), np.array([1.0, 3.0])
  states = run_losses(cg.bilb4mtl(lamb=0.0, normalization="rescaled", num_tasks=2), [l0, l1],
                      history=True)
  np.testing.assert_allclose(np.asarray(states.initial_losses[1]), l0)
  # λ = 0: w_i = σ_i/Σσ · min l⁰/l⁰_i, the gradient of σ·l̃/Σσ with l̃ = l/(l⁰/min l⁰).
  sigma = np.exp(np.asarray(states.logits[0])) / np.exp(np.asarray(states.logits[0])).sum()
  np.testing.assert_allclose(np.asarray(states.weights[1]), sigma * 2.0 / l0, rtol=1e-5)


def test_weight_bounds_clip_the_router_and_keep_every_task_in():
  """Unbounded, σ collapses on the smallest loss; (0.2, 0.8) is the reference's NYUv2 clamp."""
  seq = [[1.0, 2.0, 4.0]] * 3000
  free = run_losses(cg.bilb4mtl(lamb=0.0, lr=0.01, num_tasks=3), seq, grads={"w": jnp.eye(3)})
  bounded = run_losses(cg.bilb4mtl(lamb=0.0, lr=0.01, weight_bounds=(0.2, 0.8), num_tasks=3),
                       seq, grads={"w": jnp.eye(3)}, history=True)
  assert float(free.weights.min()) < 1e-3
  # λ = 0: the weights are σ/Σσ of the router before its step, σ clipped.
  sigma = np.clip(np.asarray(jax.nn.softmax(bounded.logits[-2])), 0.2, 0.8)
  np.testing.assert_allclose(np.asarray(bounded.weights[-1]), sigma / sigma.sum(), rtol=1e-5)
  assert float(bounded.weights[-1].min()) >= 0.2 / (0.8 + 0.2 + 0.2) - 1e-6
  for bad in [(0.8, 0.2), (-0.1, 0.5), (0.2,), "wide"]:
    with pytest.raises(ValueError, match="weight_bounds"):
      cg.bilb4mtl(weight_bounds=bad)


def test_rescaled_losses_need_positive_initial_losses_only():
  seq = [[1.0, 2.0], [0.0, 1.5], [-0.5, 1.5]]
  states = run_losses(cg.bilb4mtl(normalization="rescaled", num_tasks=2), seq, history=True)
  assert int(states.nonfinite_steps[-1]) == 0      # l̃ divides by l⁰ only, never by l
  assert np.all(np.isfinite(np.asarray(states.weights)))
  states = run_losses(cg.bilb4mtl(normalization="rescaled", num_tasks=2), [[0.0, 2.0], [1.0, 2.0]],
                      history=True)
  assert [int(n) for n in states.nonfinite_steps] == [1, 1]
  np.testing.assert_allclose(np.asarray(states.initial_losses[-1]), [1.0, 2.0])


def test_huge_losses_keep_the_routers_adam_finite():
  """A loss of 1e20 squares to Inf in Adam's second moment unless its gradient is clipped."""
  states = run_losses(cg.bilb4mtl(num_tasks=2), [[1.0, 2.0], [1e20, 2.0], [1.0, 2.0]],
                      history=True)
  assert int(states.nonfinite_steps[-1]) == 0
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(states))


@pytest.mark.parametrize("normalization", ["rescaled", "log"])
def test_a_penalty_at_its_kink_adds_nothing_as_torch_abs(normalization):
  """At the first step every σ_i l̃_i is equal ("rescaled": l̃_i = min l⁰, σ uniform;
  "log": l̃ = 0), so each |σ_i l̃_i − σ_{i+1} l̃_{i+1}| sits at 0, where the reference's
  torch.abs has derivative 0: the weights are σ_i ∂l̃_i/∂l_i alone and the router does
  not move."""
  losses = np.array([1.0, 2.0, 4.0])
  tx = cg.bilb4mtl(lamb=0.05, normalization=normalization, lr=1e-3)
  _, state = tx.update({"w": jnp.eye(3)}, tx.init(None), losses=jnp.asarray(losses, jnp.float32))
  dnorm = 1.0 / (losses / losses.min()) if normalization == "rescaled" else 1.0 / losses
  np.testing.assert_allclose(np.asarray(state.weights), dnorm / 3.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state.logits), np.zeros(3))


def test_with_bounds_the_sum_of_the_clipped_router_is_differentiated():
  """σ clipped to [0.2, 0.8] no longer sums to 1: L = σ·l/Σσ is differentiated through Σσ, as
  the reference's NYUv2 script (λ = 0; softmax (0.1, 0.3, 0.6), so σ_0 is clipped to 0.2)."""
  from conicgrad_jax.methods import bilb4mtl as bilb
  soft = np.array([0.1, 0.3, 0.6])
  losses = jnp.array([1.0, 2.0, 3.0])
  grad = jax.grad(bilb.bilb4mtl_loss, argnums=1)(losses, jnp.log(jnp.asarray(soft)), losses,
                                                 0.0, "identity", (0.2, 0.8))
  sigma, l = np.clip(soft, 0.2, 0.8), np.asarray(losses)
  dL_dsigma = l / sigma.sum() - (sigma @ l) / sigma.sum() ** 2
  inside = (soft > 0.2) & (soft < 0.8)                # the clip passes no gradient outside
  expected = (np.diag(soft) - np.outer(soft, soft)) @ (inside * dL_dsigma)
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-7)


def test_the_penalty_chains_every_neighbouring_pair_at_three_tasks():
  """K = 3, λ = 0.2, a non-uniform router, away from every kink: the loss and the weights
  ∂L/∂l written out in numpy (penalty λ(|σ₁l₁ − σ₂l₂| + |σ₂l₂ − σ₃l₃|))."""
  l = np.array([1.0, 4.0, 0.5])
  logits = np.array([0.3, -0.2, 0.1])
  sigma = np.exp(logits) / np.exp(logits).sum()
  weighted = sigma * l
  diffs = weighted[:-1] - weighted[1:]
  assert np.all(np.abs(diffs) > 0.1)
  value = weighted.sum() + 0.2 * np.abs(diffs).sum()
  signs = np.sign(diffs)
  grad_l = sigma * (1.0 + 0.2 * (np.append(signs, 0.0) - np.insert(signs, 0, 0.0)))
  args = (jnp.asarray(l), jnp.asarray(logits), jnp.asarray(l), 0.2)
  assert float(cg.bilb4mtl_loss(*args)) == pytest.approx(value, rel=1e-6)
  np.testing.assert_allclose(np.asarray(jax.grad(cg.bilb4mtl_loss)(*args)), grad_l, rtol=1e-5)
