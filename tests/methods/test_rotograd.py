"""RotoGrad: magnitude homogenisation, the rotation objective, the Flax module."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods import rotograd as rg


def test_magnitudes_are_homogenised_to_the_weighted_mean_norm():
  rng = np.random.default_rng(0)
  J = rng.standard_normal((3, 6)) * np.array([[1.0], [5.0], [0.2]])
  tx = cg.rotograd(burn_in_period=3)
  state, step = tx.init(None), jax.jit(tx.update)
  u, state = step({"w": jnp.asarray(J, jnp.float32)}, state)
  norms = np.linalg.norm(J, axis=1)
  # Step 0: n⁰ = n, ρ = 1, α = 1/K, C = mean norm; every task contributes norm C.
  c = norms.mean()
  np.testing.assert_allclose(np.asarray(state.weights) * norms, c, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(u["w"]), (J / norms[:, None]).sum(0) * c, rtol=1e-4)
  # Later: task 0 has not converged (ratio 1), task 1 has halved: α ∝ (1, 0.5, 1).
  J2 = J * np.array([[1.0], [0.5], [1.0]])
  _, state = step({"w": jnp.asarray(J2, jnp.float32)}, state)
  n2 = np.linalg.norm(J2, axis=1)
  alpha = np.array([1.0, 0.5, 1.0]) / 2.5
  np.testing.assert_allclose(np.asarray(state.weights) * n2, alpha @ n2, rtol=1e-5)
  # At step burn_in_period = 3, and not before, the reference norms are re-recorded.
  _, state = step({"w": jnp.asarray(0.3 * J2, jnp.float32)}, state)
  np.testing.assert_allclose(np.asarray(state.initial_norms), norms, rtol=1e-5)
  _, state = step({"w": jnp.asarray(J2, jnp.float32)}, state)
  np.testing.assert_allclose(np.asarray(state.initial_norms), n2, rtol=1e-5)


def test_rotate_only_variant_sums():
  tx = cg.rotograd(magnitude=False)
  J = jnp.array([[3.0, 0.0], [0.0, 1.0]])
  u, _ = tx.update({"w": J}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), [3.0, 1.0])


def _reference_direction(o):
  """v = mean_k (‖ō‖/‖o_k‖) o_k, ō = mean_k o_k, norms over the batch and features (numpy)."""
  mean_norm = np.linalg.norm(o.mean(0))
  return np.mean([mean_norm / np.linalg.norm(o_k) * o_k for o_k in o], axis=0)


def test_reference_direction_rescales_every_task_to_the_mean_gradients_norm():
  rng = np.random.default_rng(4)
  o = rng.standard_normal((3, 6, 4)) * np.array([0.1, 1.0, 20.0])[:, None, None]
  np.testing.assert_allclose(np.asarray(rg.reference_direction(jnp.asarray(o))),
                             _reference_direction(o), rtol=1e-5, atol=1e-7)


def test_rotation_loss_gradient_matches_its_closed_form_at_the_identity():
  rng = np.random.default_rng(1)
  o = rng.standard_normal((2, 5, 3)) * np.array([1.0, 5.0])[:, None, None]
  gen = jnp.zeros((2, 3, 3))
  grad = jax.jit(jax.grad(rg.rotation_loss))(gen, jnp.asarray(o, jnp.float32))
  v = _reference_direction(o)
  for k in range(2):
    d_r = 2.0 / 5 * (v - np.asarray(o[k])).T @ v          # ∂/∂R of mean_b ‖R v_b − sg(R o_b)‖² at R = I
    # R = exp(L − Lᵀ), L the strictly lower triangle of A: ∂/∂A = tril(∂/∂R − (∂/∂R)ᵀ, −1).
    np.testing.assert_allclose(np.asarray(grad[k]), np.tril(d_r - d_r.T, -1), rtol=1e-4,
                               atol=1e-6)


def test_training_the_rotations_aligns_task_gradients_and_keeps_them_orthogonal():
  """Heads' gradients g_k fixed in their rotated frames; o_k = R_kᵀ g_k aligns with the reference."""
  rng = np.random.default_rng(2)
  base = rng.standard_normal((16, 4))
  g = np.stack([base @ np.linalg.qr(rng.standard_normal((4, 4)))[0] for _ in range(3)])
  g = jnp.asarray(g, jnp.float32)
  gen = jnp.asarray(0.01 * rng.standard_normal((3, 4, 4)), jnp.float32)
  opt = optax.adam(0.05)
  opt_state = opt.init(gen)

  def rep_grads(gen):
    return jnp.einsum("kji,kbj->kbi", rg.rotation_matrices(gen), g)     # o_k = R_kᵀ g_k

  @jax.jit
  def cosines(gen):
    o = rep_grads(gen)
    v = rg.reference_direction(o)
    return jnp.mean(jnp.sum(o * v, axis=(1, 2)) / (jnp.linalg.norm(o, axis=(1, 2)) * jnp.linalg.norm(v)))

  mean_cosine = lambda gen: float(cosines(gen))

  before = mean_cosine(gen)
  def step(carry, _):
    gen, s = carry
    upd, s = opt.update(jax.grad(rg.rotation_loss)(gen, rep_grads(gen)), s)
    return (optax.apply_updates(gen, upd), s), None

  (gen, opt_state), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=300))((gen, opt_state))
  after = mean_cosine(gen)
  assert before < 0.8 and after > 0.999, (before, after)
  r = np.asarray(rg.rotation_matrices(gen))
  np.testing.assert_allclose(np.einsum("kji,kjl->kil", r, r), np.broadcast_to(np.eye(4), r.shape),
                             atol=1e-5)


def test_rotation_loss_shape_errors():
  with pytest.raises(ValueError, match="rep_grads"):
    rg.rotation_loss(jnp.zeros((2, 3, 3)), jnp.zeros((3, 4, 3)))


def test_flax_rotation_module():
  nn = pytest.importorskip("conicgrad_jax.nn")
  rot = nn.RotoGradRotations(num_tasks=2, latent_size=5, rotation_size=3)
  z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
  out = rot(z)
  np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(z), (2, 4, 5)))  # R = I
  rot.generators[...] = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 3)))
  out = rot(z)
  np.testing.assert_allclose(np.asarray(out[..., 3:]), np.broadcast_to(np.asarray(z[:, 3:]),
                                                                         (2, 4, 2)))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=-1),
                             np.broadcast_to(np.linalg.norm(np.asarray(z), axis=-1), (2, 4)),
                             rtol=1e-5)
  from flax import nnx
  grads = nnx.grad(lambda m: jnp.sum(m(z) ** 3))(rot)     # task losses do not train R
  assert np.all(np.asarray(grads.generators[...]) == 0.0)
  with pytest.raises(ValueError, match="rotation_size"):
    nn.RotoGradRotations(num_tasks=2, latent_size=3, rotation_size=4)
  with pytest.raises(ValueError, match="features"):
    rot(jnp.zeros((4, 6)))


@pytest.mark.parametrize("options, named", [
    ({"num_tasks": 0, "latent_size": 3}, "num_tasks"),
    ({"num_tasks": 2.0, "latent_size": 3}, "num_tasks"),
    ({"num_tasks": 2, "latent_size": 0}, "latent_size"),
    ({"num_tasks": 2, "latent_size": 3, "rotation_size": True}, "rotation_size"),
    ({"num_tasks": 2, "latent_size": 3, "rotation_size": 0}, "rotation_size"),
])
def test_flax_rotation_module_refuses_bad_sizes(options, named):
  nn = pytest.importorskip("conicgrad_jax.nn")
  with pytest.raises(ValueError, match=f"`{named}`"):
    nn.RotoGradRotations(**options)


def test_flax_rotation_module_checks_the_loss_input_and_keeps_a_chosen_dtype():
  nn = pytest.importorskip("conicgrad_jax.nn")
  rot = nn.RotoGradRotations(num_tasks=2, latent_size=4)
  with pytest.raises(ValueError, match="4 features"):
    rot.loss(jnp.zeros((2, 3, 7)))
  z = jnp.ones((3, 4), jnp.bfloat16)
  assert rot(z).dtype == jnp.float32                      # promoted, as nnx.Linear does
  assert nn.RotoGradRotations(num_tasks=2, latent_size=4, dtype=jnp.bfloat16)(z).dtype == jnp.bfloat16


def test_a_burn_in_beyond_the_int32_step_counter_is_refused():
  with pytest.raises(ValueError, match="`burn_in_period` must be at most"):
    cg.rotograd(burn_in_period=2**40)


def test_flax_rotation_module_applies_r_not_its_transpose():
  """rot(z)[k] = R_k z on the first r features, R_k = expm(L_k − L_kᵀ), L_k = tril(A_k, −1)
  (scipy's expm), not its inverse."""
  scipy_linalg = pytest.importorskip("scipy.linalg")
  nn = pytest.importorskip("conicgrad_jax.nn")
  rng = np.random.default_rng(5)
  rot = nn.RotoGradRotations(num_tasks=2, latent_size=4, rotation_size=3)
  gen = rng.standard_normal((2, 3, 3))
  rot.generators[...] = jnp.asarray(gen, jnp.float32)
  z = rng.standard_normal((5, 4))
  out = np.asarray(rot(jnp.asarray(z, jnp.float32)))
  for k in range(2):
    lower = np.tril(gen[k], -1)
    r = scipy_linalg.expm(lower - lower.T)
    np.testing.assert_allclose(out[k, :, :3], z[:, :3] @ r.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[k, :, 3], z[:, 3], rtol=1e-6)
