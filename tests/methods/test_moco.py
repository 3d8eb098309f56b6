"""moco: the tracked Jacobian and weights against a NumPy transcription of the update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg


def _numpy_moco(Js, losses, beta=0.5, bs=0.5, gamma=0.1, gs=0.5, rho=0.0, return_weights=False):
  """MoCo's documented update in numpy: the last update yᵀλ (and λ with ``return_weights``)."""
  y = np.zeros_like(Js[0])
  lam = np.full(Js[0].shape[0], 1.0 / Js[0].shape[0])
  for t, (J, l) in enumerate(zip(Js, losses), start=1):
    g_hat = J / (np.linalg.norm(J, axis=1, keepdims=True) + 1e-8) * l[:, None]
    y = y - beta / t ** bs * (y - g_hat)
    lam = lam - gamma / t ** gs * (y @ y.T + rho * np.eye(len(lam))) @ lam
    lam = np.exp(lam) / np.exp(lam).sum()
  return (y.T @ lam, lam) if return_weights else y.T @ lam


@pytest.mark.parametrize("options", [{}, dict(beta=0.7, beta_sigma=0.9, gamma=0.3,
                                                 gamma_sigma=0.2)])
def test_moco_matches_the_numpy_reference(options):
  rng = np.random.default_rng(7)
  Js = [rng.standard_normal((3, 2, 4)) for _ in range(3)]
  losses = [rng.uniform(0.5, 2.0, 3) for _ in range(3)]
  params = {"w": jnp.zeros((2, 4))}
  tx = cg.moco(num_tasks=3, **options)
  state = tx.init(params)
  for J, l in zip(Js, losses):
    u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, state, params,
                         losses=jnp.asarray(l, jnp.float32))
  names = dict(beta="beta", beta_sigma="bs", gamma="gamma", gamma_sigma="gs")
  expected = _numpy_moco([J.reshape(3, -1) for J in Js], losses,
                         **{names[key]: value for key, value in options.items()})
  np.testing.assert_allclose(np.asarray(u["w"]).ravel(), expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="num_tasks"):
    cg.moco()


def test_rho_regularises_the_weight_step():
  """cg.moco(rho=ρ) steps λ along (y yᵀ + ρI)λ: float64 run against the numpy reference."""
  # λ starts uniform and the softmax ignores a common shift, so ρ acts only through
  # λ's spread: γ = 1 and ρ = 5 make it move λ by ~3e-2 within four steps.
  gamma, rho = 1.0, 5.0
  rng = np.random.default_rng(11)
  Js = rng.standard_normal((4, 3, 8))
  losses = rng.uniform(0.5, 2.0, (4, 3))
  tx = cg.moco(gamma=gamma, rho=rho, num_tasks=3)

  @jax.jit
  def run(Js, losses):
    params = {"w": jnp.zeros(Js.shape[2:], Js.dtype)}
    def step(state, batch):
      u, state = tx.update({"w": batch[0]}, state, params, losses=batch[1])
      return state, u["w"]
    state, updates = jax.lax.scan(step, tx.init(params), (Js, losses))
    return updates[-1], state.weights

  update, weights = _common.x64(run, Js, losses)
  expected, expected_weights = _numpy_moco(Js, losses, gamma=gamma, rho=rho,
                                           return_weights=True)
  without_rho, weights_without_rho = _numpy_moco(Js, losses, gamma=gamma, return_weights=True)
  # Observed ≤ 3e-15 (float64); ρ moves λ by 3e-2 and the update by 8 %.
  np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=1e-10)
  np.testing.assert_allclose(update, expected, rtol=1e-9, atol=1e-12)
  assert np.max(np.abs(expected_weights - weights_without_rho)) > 3e-3
  assert np.max(np.abs(expected - without_rho)) > 1e-2 * np.max(np.abs(expected))


def test_options_are_validated():
  with pytest.raises(ValueError, match="gamma"):
    cg.moco(gamma=0.0, num_tasks=2)
  with pytest.raises(ValueError, match="rho"):
    cg.moco(rho=-1.0, num_tasks=2)
  with pytest.raises(ValueError, match="init"):
    cg.moco(num_tasks=2).init(None)


def test_gradients_whose_squares_overflow_float32_give_the_same_update():
  """MoCo normalises each g_i: entries beyond about 1.8e19 overflow Σg² in float32,
  and l·g/‖g‖ would then be a silent zero. Every quantity of the definition is O(1)."""
  J = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]], np.float32)
  params = {"w": jnp.zeros(3)}
  tx = cg.moco(num_tasks=2)
  step = jax.jit(tx.update)
  out = []
  for scale in (1.0, 1e20):
    u, state = step({"w": jnp.asarray(J * scale)}, tx.init(params), params, losses=jnp.ones(2))
    assert int(state.nonfinite_steps) == 0
    out.append(np.asarray(u["w"]))
  np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-7)
  assert np.linalg.norm(out[0]) > 0.1


def test_an_empty_shared_leaf_adds_nothing():
  """A (K, 0) leaf has no entries: the norms, and so the update, are those without it."""
  params = {"a": jnp.zeros(3), "b": jnp.zeros(0)}
  g = {"a": jnp.asarray([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]], jnp.float32),
       "b": jnp.zeros((2, 0), jnp.float32)}
  tx = cg.moco(num_tasks=2)
  u, _ = jax.jit(tx.update)(g, tx.init(params), params, losses=jnp.ones(2))
  alone = cg.moco(num_tasks=2)
  v, _ = jax.jit(alone.update)({"a": g["a"]}, alone.init({"a": params["a"]}), {"a": params["a"]},
                               losses=jnp.ones(2))
  np.testing.assert_allclose(np.asarray(u["a"]), np.asarray(v["a"]), rtol=1e-6)


def test_a_negative_loss_skips_the_step_instead_of_reversing_its_task():
  """MoCo rescales g_k to length L_k; L_k < 0 would turn the task's gradient around."""
  params = {"w": jnp.zeros(2)}
  tx = cg.moco(num_tasks=2)
  grads = {"w": jnp.eye(2, dtype=jnp.float32)}
  u, state = jax.jit(tx.update)(grads, tx.init(params), params, losses=jnp.array([-1.0, 1.0]))
  assert int(state.nonfinite_steps) == 1
  np.testing.assert_array_equal(np.asarray(u["w"]), np.zeros(2))
  u, state = jax.jit(tx.update)(grads, tx.init(params), params, losses=jnp.array([0.0, 1.0]))
  assert int(state.nonfinite_steps) == 0     # a zero loss is a valid loss
