"""ExcessMTL: the exponentiated-gradient recursion against numpy, and torchjd with a warm-up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
import torchjd_reference as tjd


def _reference(Js, eta, warmup):
  """The paper's recursion (torchjd's with a warm-up; LibMTL's first step without one)."""
  k = Js[0].shape[0]
  S = np.zeros_like(Js[0])
  alpha = np.full(k, 1 / k)
  acc, base, out = np.zeros(k), None, []
  for t, J in enumerate(Js):
    S = S + J ** 2
    e = (J ** 2 / np.sqrt(S + 1e-7)).sum(1)
    if t < warmup:
      acc += e
    else:
      if base is None:
        base = acc / warmup if warmup else e
        if not warmup:       # LibMTL: the first call only sets the baseline
          out.append((alpha.copy(), alpha @ J))
          continue
      logits = np.log(alpha) + eta * e / (base + 1e-7)
      alpha = np.exp(logits - logits.max())
      alpha /= alpha.sum()
    out.append((alpha.copy(), alpha @ J))
  return out


@pytest.mark.parametrize("warmup", [0, 2])
def test_recursion_matches_numpy(warmup):
  rng = np.random.default_rng(warmup)
  Js = [rng.standard_normal((3, 6)) * np.array([[1.0], [0.3], [2.0]]) / (t + 1)
        for t in range(5)]
  tx = cg.excess_mtl(0.5, n_warmup_steps=warmup, num_tasks=3)
  params = {"w": jnp.zeros(6)}
  step = jax.jit(tx.update)
  state = tx.init(params)
  for t, (J, (alpha, d)) in enumerate(zip(Js, _reference(Js, 0.5, warmup))):
    u, state = step({"w": jnp.asarray(J, jnp.float32)}, state, params)
    np.testing.assert_allclose(np.asarray(state.weights), alpha, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(u["w"]), d, rtol=1e-4, atol=1e-6)
    if t < warmup or t == warmup == 0:
      np.testing.assert_allclose(np.asarray(state.weights), 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_without_warmup_the_first_update_keeps_the_weights_uniform(scale):
  """Ê/(Ê + 1e-7) is not uniform for gradients this small; the first update takes no step."""
  tx = cg.excess_mtl(1.0, num_tasks=2)
  params = {"w": jnp.zeros(4)}
  J = scale * np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.01, 0.01]])
  u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(state.weights), 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u["w"]), J.mean(0), rtol=1e-5)


def test_task_far_from_its_optimum_gains_weight():
  """A task whose gradients stay large (high excess risk) is up-weighted; one that converged is not."""
  tx = cg.excess_mtl(1.0, num_tasks=2)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  for t in range(6):
    J = np.array([[1.0, 0.0], [0.0, 0.5 ** t]])
    _, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, state, params)
  w = np.asarray(state.weights)
  assert w[0] > 0.7 and w.sum() == pytest.approx(1.0)


def test_options_are_validated():
  with pytest.raises(ValueError, match="num_tasks"):
    cg.excess_mtl()
  with pytest.raises(ValueError, match="robust_step_size"):
    cg.excess_mtl(0.0, num_tasks=2)
  with pytest.raises(ValueError, match="n_warmup_steps"):
    cg.excess_mtl(num_tasks=2, n_warmup_steps=-1)


def test_matches_torchjd_with_warmup():
  torch, torchjd = tjd.require()
  from torchjd.aggregation import ExcessMTLWeighting
  rng = np.random.default_rng(5)
  ref = ExcessMTLWeighting(robust_step_size=0.5, n_warmup_steps=2)
  tx = cg.excess_mtl(0.5, n_warmup_steps=2, num_tasks=4)
  params = {"w": jnp.zeros(10)}
  step = jax.jit(tx.update)
  state = tx.init(params)
  for t in range(6):
    J = tjd.random_jacobian(rng, 4, 10) / (1 + t)
    u, state = step({"w": jnp.asarray(J, jnp.float32)}, state, params)
    w = ref(torch.tensor(J)).numpy()
    np.testing.assert_allclose(np.asarray(state.weights), w, rtol=1e-4, atol=1e-6)
    assert tjd.cosine(u["w"], w @ J) >= 0.999


def test_a_task_with_zero_gradient_at_the_baseline_step_waits_for_its_own_baseline():
  """Ê₀ = 0 would divide its later risks by 1e-7 and shut the other task out for good."""
  tx = cg.excess_mtl(1.0, num_tasks=2)
  params = {"w": jnp.zeros(2)}
  step = jax.jit(tx.update)
  state = tx.init(params)
  _, state = step({"w": jnp.array([[0.0, 0.0], [0.0, 1.0]])}, state, params)
  # The first update only sets the baselines (task 0 has no risk yet): α stays uniform.
  first = np.array([0.5, 0.5])
  np.testing.assert_allclose(np.asarray(state.weights), first, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(state.baseline), [0.0, 1.0], rtol=1e-5, atol=1e-6)
  _, state = step({"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}, state, params)
  # Task 0's first positive risk, 1/√(1 + 1e-7), becomes its baseline (ratio 1);
  # task 1's risk 1/√2 against its baseline 1: α ∝ (α₀ e¹, α₁ e^{1/√2}).
  np.testing.assert_allclose(np.asarray(state.baseline), [1.0, 1.0], rtol=1e-5)
  expected = first * np.exp([1.0, 1 / np.sqrt(2)])
  np.testing.assert_allclose(np.asarray(state.weights), expected / expected.sum(), rtol=1e-4)


def test_a_task_whose_gradient_stays_zero_loses_its_weight():
  """Its excess risk is 0, so it must not draw the weight away from the live tasks
  (whose ratios Ê/Ê₀ decay as S accumulates): the update keeps the live tasks' size."""
  live = np.array([[1.0, 2.0, 0.0], [-1.0, 0.5, 1.0]], np.float32)
  params = {"w": jnp.zeros(3)}
  norms = []
  for J in (np.stack([live[0], np.zeros(3, np.float32), live[1]]), live):
    tx = cg.excess_mtl(1.0, num_tasks=len(J))
    step, state = jax.jit(tx.update), tx.init(params)
    for _ in range(200):
      u, state = step({"w": jnp.asarray(J)}, state, params)
    norms.append(float(jnp.linalg.norm(u["w"])))
    if len(J) == 3:
      weights = np.asarray(state.weights)
      assert weights[1] < 1e-3 * min(weights[0], weights[2])
  # Three tasks: the update is (nearly) the two-task one.
  assert norms[0] == pytest.approx(norms[1], rel=1e-2)
