"""CR-MOGM: the EMA of the wrapped method's weights, its recombination, and torchjd."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
import torchjd_reference as tjd

SHARED = {"enc": True, "head": False}
PARAMS = {"enc": jnp.zeros((3, 2)), "head": jnp.zeros(4)}


def _grads(rng):
  return {"enc": jnp.asarray(tjd.random_jacobian(rng, 3, 6).reshape(3, 3, 2), jnp.float32),
          "head": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}


@pytest.mark.parametrize("inner_name", ["mgda", "imtl_g"])
def test_weights_are_the_ema_of_the_inner_weights(inner_name):
  rng = np.random.default_rng(1)
  alpha = 0.7
  inner = cg.methods()[inner_name].factory(shared=SHARED, num_tasks=3)
  tx = cg.cr_mogm(inner, alpha=alpha, shared=SHARED)
  step, inner_step = jax.jit(tx.update), jax.jit(inner.update)
  state, inner_state = tx.init(PARAMS), inner.init(PARAMS)
  lam = None
  for _ in range(4):
    g = _grads(rng)
    u, state = step(g, state, PARAMS)
    _, inner_state = inner_step(g, inner_state, PARAMS)
    raw = np.asarray(inner_state.weights)
    lam = raw if lam is None else alpha * lam + (1 - alpha) * raw
    np.testing.assert_allclose(np.asarray(state.weights), lam, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(u["enc"]).reshape(-1),
                               lam @ np.asarray(g["enc"]).reshape(3, -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(u["head"]), np.asarray(g["head"]).sum(0), rtol=1e-6)


@pytest.mark.parametrize("num_tasks", [3, None])
def test_initial_weights_start_the_ema(num_tasks):
  """Also when K is learnt at the first update (no ``num_tasks`` anywhere)."""
  g = _grads(np.random.default_rng(2))
  inner = cg.imtl_g(shared=SHARED, num_tasks=num_tasks)
  tx = cg.cr_mogm(inner, alpha=0.5, initial_weights=[1.0, 0.0, 0.0], shared=SHARED)
  _, s = jax.jit(tx.update)(g, tx.init(PARAMS), PARAMS)
  _, si = jax.jit(inner.update)(g, inner.init(PARAMS), PARAMS)
  np.testing.assert_allclose(np.asarray(s.weights),
                             0.5 * np.array([1.0, 0, 0]) + 0.5 * np.asarray(si.weights),
                             rtol=1e-5, atol=1e-6)


def test_nonfinite_step_is_skipped_and_weights_kept():
  rng = np.random.default_rng(3)
  tx = cg.cr_mogm(cg.imtl_g(shared=SHARED, num_tasks=3), alpha=0.5, shared=SHARED)
  step = jax.jit(tx.update)
  _, state = step(_grads(rng), tx.init(PARAMS), PARAMS)
  bad = _grads(rng)
  bad["enc"] = bad["enc"].at[0, 0, 0].set(jnp.nan)
  u, new = step(bad, state, PARAMS)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(u))
  np.testing.assert_array_equal(np.asarray(new.weights), np.asarray(state.weights))
  assert int(new.nonfinite_steps) == 1 and int(new.step) == 1


def test_a_recombination_that_overflows_float16_is_skipped():
  """The wrapped method's update of these gradients is finite (about 3e4), but the
  smoothed weights (here starting at 2, 2) recombine them beyond float16's 65,504."""
  g = {"w": jnp.asarray([[30000.0, -1.0], [30000.0, 1.0]], jnp.float16)}
  params = {"w": jnp.zeros(2, jnp.float16)}
  inner = cg.upgrad(num_tasks=2)
  plain, _ = jax.jit(inner.update)(g, inner.init(params), params)
  assert np.all(np.isfinite(np.asarray(plain["w"], np.float32)))
  tx = cg.cr_mogm(cg.upgrad(num_tasks=2), alpha=0.9, initial_weights=[2.0, 2.0], num_tasks=2)
  state = tx.init(params)
  u, new = jax.jit(tx.update)(g, state, params)
  np.testing.assert_array_equal(np.asarray(u["w"], np.float32), 0.0)
  assert int(new.nonfinite_steps) == 1 and int(new.step) == 0
  np.testing.assert_array_equal(np.asarray(new.weights), np.asarray(state.weights))


def test_options_are_validated():
  with pytest.raises(ValueError, match="alpha"):
    cg.cr_mogm(alpha=1.5)
  with pytest.raises(ValueError, match="inner"):
    cg.cr_mogm(lambda g: g)
  with pytest.raises(ValueError, match="initial_weights"):
    cg.cr_mogm(initial_weights=[1.0, 0.0], num_tasks=3)


def test_jacobian_methods_are_refused_and_the_inner_shared_is_taken_over():
  """A Jacobian method's weights do not give its update; heads must keep the inner's split."""
  with pytest.raises(ValueError, match="needs the task gradients themselves"):
    cg.cr_mogm(cg.trimmed_mean(1, num_tasks=3))
  g = _grads(np.random.default_rng(5))
  tx = cg.cr_mogm(cg.upgrad(shared=SHARED))           # no `shared` here: the inner's
  u, _ = jax.jit(tx.update)(g, tx.init(PARAMS), PARAMS)
  np.testing.assert_allclose(np.asarray(u["head"]), np.asarray(g["head"]).sum(0), rtol=1e-6)
  around_diagnostics = cg.cr_mogm(cg.with_diagnostics(cg.upgrad(shared=SHARED)))
  u, _ = jax.jit(around_diagnostics.update)(g, around_diagnostics.init(PARAMS), PARAMS)
  np.testing.assert_allclose(np.asarray(u["head"]), np.asarray(g["head"]).sum(0), rtol=1e-6)
  mixed = cg.cr_mogm(cg.upgrad(shared=SHARED), shared={"enc": True, "head": True})
  with pytest.raises(ValueError, match=r"makes leaf \['head'\] shared.*`inner` was built"):
    mixed.update(g, mixed.init(PARAMS), PARAMS)


def test_matches_torchjd_around_imtl_g():
  torch, torchjd = tjd.require()
  from torchjd.aggregation import CRMOGMWeighting, IMTLGWeighting
  rng = np.random.default_rng(4)
  ref = CRMOGMWeighting(IMTLGWeighting(), alpha=0.8)
  tx = cg.cr_mogm(cg.imtl_g(num_tasks=4), alpha=0.8, num_tasks=4)
  step = jax.jit(tx.update)
  state = tx.init(None)
  for _ in range(5):
    J = tjd.random_jacobian(rng, 4, 9)
    u, state = step({"w": jnp.asarray(J, jnp.float32)}, state)
    w = ref(torch.tensor(J @ J.T)).numpy()
    assert tjd.cosine(u["w"], w @ J) >= 0.999
    np.testing.assert_allclose(np.asarray(state.weights), w, rtol=1e-4, atol=1e-5)
