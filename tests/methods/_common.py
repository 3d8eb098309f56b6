"""What the per-method tests share: instances, float64 runs, degenerate inputs, the optax contract.

Each check compiles as little as it can: instances with the same number of
tasks K share one jitted function (batched with ``jax.vmap`` where the tests
call a weighting directly).
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax

J_PUBLISHED = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
"""The Jacobian of torchjd's documented aggregator examples."""


def random_J(seed, k=4, m=7, conflict=True):
  """A random K×m task-gradient matrix; with ``conflict`` tasks 1.. oppose task 0."""
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m))
  if conflict:
    J[1:] -= 0.8 * J[0]
  return J


def x64(fn, *args, **kwargs):
  """Runs fn in float64: array arguments are converted inside the x64 context."""
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64)) if isinstance(a, (np.ndarray, jax.Array))
            else a for a in args]
    out = fn(*args, **kwargs)
    return jax.tree_util.tree_map(np.asarray, out)


def check_published(factory, expected, **kwargs):
  """The update on :data:`J_PUBLISHED` matches torchjd's documented output."""
  tx = factory(**kwargs)
  u, _ = jax.jit(tx.update)({"w": jnp.asarray(J_PUBLISHED, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), expected, atol=1e-3)


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


def pad_columns(J, m=5):
  """Zero columns change neither G nor any method's weights, and share one compilation per K."""
  return np.pad(J, ((0, 0), (0, m - J.shape[1])))


def check_degenerate_inputs(factory, needs_losses=False):
  """Every :data:`DEGENERATE` case gives a finite update and counts no non-finite step.

  The cases with the same K share one transformation and one compilation.
  """
  params = {"w": jnp.zeros(5)}
  by_k = {}
  for case, J in DEGENERATE.items():
    by_k.setdefault(J.shape[0], []).append(case)
  for k, cases in sorted(by_k.items()):
    tx = factory(num_tasks=k)
    update = jax.jit(tx.update)
    extra = {"losses": jnp.ones(k)} if needs_losses else {}
    for case in cases:
      g = {"w": jnp.asarray(pad_columns(DEGENERATE[case]), jnp.float32)}
      u, state = update(g, tx.init(params), params, **extra)
      assert np.all(np.isfinite(np.asarray(u["w"]))), case
      assert int(state.nonfinite_steps) == 0, case
    assert update._cache_size() == 1


def check_optax_contract(factory):
  """Chain with Adam under jit (one compilation), lax.scan-able state, checkpoint round trip."""
  rng = np.random.default_rng(5)
  params = {"a": jnp.zeros((3, 2)), "b": jnp.zeros(())}
  opt = optax.chain(factory(num_tasks=3), optax.adam(1e-2))
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


def check_state_dtypes_follow_params(factory):
  """Under x64 with float64 parameters the state keeps float64 weights (and other floats)."""
  with jax.enable_x64(True):
    params = {"w": jnp.zeros(3, jnp.float64)}
    tx = factory(num_tasks=2)
    state = tx.init(params)
    g = {"w": jnp.asarray(J_PUBLISHED, jnp.float64)}
    _, new_state = jax.jit(tx.update)(g, state, params)
    for before, after in zip(jax.tree_util.tree_leaves(state),
                             jax.tree_util.tree_leaves(new_state)):
      assert before.dtype == after.dtype
    assert new_state.weights.dtype == jnp.float64
    floats = [x for x in jax.tree_util.tree_leaves(new_state)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert all(x.dtype == jnp.float64 for x in floats)
    return new_state
