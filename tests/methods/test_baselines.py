"""The methods without a test module of their own: published values, references, degenerate inputs, optax contract.

The Gram-weighting methods (mgda, cagrad, upgrad, dualproj, nash_mtl,
fairgrad, imtl_g, aligned_mtl, config, pcgrad, gradvac) are tested in
tests/methods/test_<name>.py with the checks of ``_common``.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg

J_PUBLISHED = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

# torchjd's documented outputs on J_PUBLISHED; our settings that reproduce its conventions.
PUBLISHED = {
    "linear_scalarization": (dict(), [1.0, 1.0, 1.0]),
}

# Methods whose own module (tests/methods/test_<name>.py) runs the checks below.
OWN_TEST_MODULE = ("mgda", "cagrad", "upgrad", "dualproj", "nash_mtl", "fairgrad", "imtl_g",
                   "aligned_mtl", "config", "pcgrad", "gradvac")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_values(name):
  kwargs, expected = PUBLISHED[name]
  tx = cg.methods()[name].factory(**kwargs)
  u, _ = jax.jit(tx.update)({"w": jnp.asarray(J_PUBLISHED, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), expected, atol=1e-3)


def _random_J(seed, k=4, m=7, conflict=True):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m))
  if conflict:
    J[1:] -= 0.8 * J[0]
  return J


DEGENERATE = {
    "zero": np.zeros((3, 4)),
    "one_zero_task": np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 1.0]]),
    "opposite": np.array([[1.0, 2.0], [-1.0, -2.0]]),
    "duplicated": np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0], [-1.0, 1.0, 0.0]]),
    "single_task": np.array([[1.0, -2.0, 3.0]]),
    "k_gt_m": np.random.default_rng(0).standard_normal((6, 2)),
    "huge": 1e15 * np.random.default_rng(1).standard_normal((3, 5)),
    "tiny": 1e-15 * np.random.default_rng(2).standard_normal((3, 5)),
}


def _pad_columns(J, m=5):
  """Zero columns change neither G nor any method's weights, and share one compilation per K."""
  return np.pad(J, ((0, 0), (0, m - J.shape[1])))


@pytest.mark.parametrize("name", sorted(set(cg.methods()) - set(OWN_TEST_MODULE)))
def test_degenerate_inputs_give_finite_updates(name):
  info = cg.methods()[name]
  params = {"w": jnp.zeros(5)}
  for case, J in DEGENERATE.items():
    tx = info.factory(num_tasks=J.shape[0])
    g = {"w": jnp.asarray(_pad_columns(J), jnp.float32)}
    extra = {"losses": jnp.ones(J.shape[0])} if info.needs_losses else {}
    u, state = jax.jit(tx.update)(g, tx.init(params), params, **extra)
    assert np.all(np.isfinite(np.asarray(u["w"]))), (name, case)
    assert int(state.nonfinite_steps) == 0, (name, case)


@pytest.mark.parametrize("name", sorted(set(cg.methods()) - set(OWN_TEST_MODULE)))
def test_optax_contract(name):
  """Chain with Adam under jit (one compilation), lax.scan-able state, checkpoint round trip."""
  info = cg.methods()[name]
  rng = np.random.default_rng(5)
  params = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(())}
  opt = optax.chain(info.factory(num_tasks=3), optax.adam(1e-2))
  state = opt.init(params)
  step = jax.jit(opt.update)
  for _ in range(3):
    g = {"a": jnp.asarray(rng.standard_normal((3, 3, 2)), jnp.float32),
         "b": jnp.asarray(rng.standard_normal(3), jnp.float32)}
    u, state = step(g, state, params, losses=jnp.ones(3))
    params = optax.apply_updates(params, u)
  assert step._cache_size() == 1
  restored = pickle.loads(pickle.dumps(jax.device_get(state)))
  u1, _ = step(g, state, params, losses=jnp.ones(3))
  u2, _ = step(jax.device_put(g), jax.device_put(restored), params, losses=jnp.ones(3))
  for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_registry_kinds():
  registry = cg.methods()
  assert "conicgrad" in registry and registry["conicgrad"].gram_weighting
  assert registry["rlw"].random and registry["pcgrad"].random
  assert not registry["mgda"].needs_losses and registry["nash_mtl"].stateful
  assert not registry["linear_scalarization"].gram_weighting
  assert registry["gsmgrad"].gram_weighting and registry["gsmgrad"].stateful
  assert registry["gsmgrad_fa"].needs_losses and not registry["gsmgrad_fa"].gram_weighting
  assert registry["rotograd"].gram_weighting and registry["rotograd"].stateful
  assert len(registry) == 37
  assert registry["krum"].gram_weighting and registry["modo"].stateful
  assert registry["cr_mogm"].gram_weighting and registry["cr_mogm"].stateful
  assert registry["excess_mtl"].needs_jacobian and registry["trimmed_mean"].needs_jacobian
  assert all(registry[n].loss_only for n in ("cosmos", "pbi", "scale_invariant_ls"))
  assert registry["famo"].loss_only and registry["rlw"].loss_only
  assert not registry["gradnorm"].loss_only and not registry["graddrop"].loss_only
