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


def project_simplex(v):
  """Euclidean projection onto the simplex by bisection on θ in Σ max(v − θ, 0) = 1.

  Independent of the library's sort-based projection, in float64.
  """
  v = np.asarray(v, np.float64)
  lo, hi = v.min() - 1.0, v.max()
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
  return np.maximum(v - 0.5 * (lo + hi), 0)


def x64(fn, *args, **kwargs):
  """Runs fn in float64: array arguments are converted inside the x64 context."""
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64)) if isinstance(a, (np.ndarray, jax.Array))
            else a for a in args]
    out = fn(*args, **kwargs)
    return jax.tree_util.tree_map(np.asarray, out)


def updates_in_float64(tx, Js):
  """The updates of ``tx`` on each Jacobian of ``Js`` (n, K, m), one compilation, in float64.

  The state follows the parameters' dtype, so float64 parameters keep the solve in float64.
  """
  update = jax.jit(jax.vmap(lambda J: tx.update({"w": J}, tx.init({"w": J[0]}))[0]["w"]))
  return x64(update, Js)


def drawn_orders(key, k, split_first=True):
  """The visiting orders PCGrad and GradVac draw from ``key``: an update splits off a
  subkey (``split_first``), splits it into one key per task, and task i visits the tasks
  in the permutation of 0..K−1 drawn from its key (skipping itself).
  Returns (next key, orders)."""
  if split_first:
    key, sub = jax.random.split(key)
  else:
    sub = key
  orders = jax.vmap(lambda task_key: jax.random.permutation(task_key, k))(
      jax.random.split(sub, k))
  return key, np.asarray(orders).tolist()


def check_published(factory, expected, **kwargs):
  """The update on :data:`J_PUBLISHED` matches ``expected`` to 1e-4.

  ``expected`` is torchjd's documented output for the methods torchjd has (printed to
  four decimals, so rounded by up to 5e-5; torchjd's own tests use atol=1e-4), or an
  independent computation (stated at the call) for those it does not.
  """
  tx = factory(**kwargs)
  u, _ = jax.jit(tx.update)({"w": jnp.asarray(J_PUBLISHED, jnp.float32)}, tx.init(None))
  np.testing.assert_allclose(np.asarray(u["w"]), expected, atol=1e-4)


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


def drifting_jacobians(seed, n=3, steps=12, k=4, m=9, drift=0.01, jump_at=7):
  """n sequences of ``steps`` K×m Jacobians J_t = A + drift·t·D (conflicting), each
  replaced from step ``jump_at`` on by an unrelated sequence B + drift·t·D, so that step's
  previous solution belongs to a very different G. Shape (n, steps, k, m)."""
  rng = np.random.default_rng(seed)
  out = np.empty((n, steps, k, m))
  for i in range(n):
    a, b = (random_J(int(rng.integers(1 << 30)), k, m) for _ in range(2))
    d = rng.standard_normal((k, m))
    for t in range(steps):
      out[i, t] = (a if t < jump_at else b) + drift * t * d
  return out


def warm_and_cold_runs(factory, jacobians, **kwargs):
  """Weights and SolverInfo iterations per step, warm-started and cold.

  ``jacobians``: (n, steps, K, m); each sequence is one ``lax.scan`` of ``update``. The
  cold run is the same program with the state's previous solution marked empty before
  every step (what ``warm_start=False`` solves), so both runs share one compilation, under
  ``vmap``. Returns ``(weights (2, n, steps, K), iterations (2, n, steps))``, warm first.
  Jit this once per module (float32 and float64 inputs compile once each).
  """
  tx = factory(num_tasks=jacobians.shape[2], **kwargs)

  def run(seq, warm):
    def body(state, J):
      previous = state.previous._replace(valid=state.previous.valid & warm)
      _, state = tx.update({"w": J}, state._replace(previous=previous))
      return state, (state.weights, state.info.iterations)
    return jax.lax.scan(body, tx.init({"w": seq[0, 0]}), seq)[1]

  both = jax.vmap(jax.vmap(run, in_axes=(0, None)), in_axes=(None, 0))
  return both(jacobians, jnp.array([True, False]))


def check_warm_start(runs, *, rtol32, rtol64, jump_at=7, fewer=0.5):
  """Warm-started weights equal the cold solve's at every step (float32 and float64), also
  right after the jump (a previous solution from a very different G), and the drifting
  steps take at most ``fewer`` × the cold solve's Newton steps.

  ``runs``: a jitted ``warm_and_cold_runs`` for the method (one argument, the Jacobians).
  Returns the cold solve's iterations per dtype.
  """
  jacobians = drifting_jacobians(0, jump_at=jump_at)
  cold_iterations = {}
  for dtype, rtol in ((np.float32, rtol32), (np.float64, rtol64)):
    if dtype == np.float64:
      (w_warm, w_cold), (it_warm, it_cold) = x64(runs, jacobians)
    else:
      out = runs(jnp.asarray(jacobians, jnp.float32))
      (w_warm, w_cold), (it_warm, it_cold) = jax.tree_util.tree_map(np.asarray, out)
    scale = np.max(np.abs(w_cold), axis=-1, keepdims=True)
    np.testing.assert_allclose(w_warm / scale, w_cold / scale, atol=rtol, rtol=0,
                               err_msg=str(dtype))
    np.testing.assert_allclose(w_warm[:, jump_at] / scale[:, jump_at],
                               w_cold[:, jump_at] / scale[:, jump_at], atol=rtol, rtol=0,
                               err_msg=f"{dtype}: after the jump")
    drifting = [t for t in range(1, jacobians.shape[1]) if t != jump_at]
    assert np.all(it_cold[:, drifting] > 0), dtype
    assert it_warm[:, drifting].sum() <= fewer * it_cold[:, drifting].sum(), (
        dtype, it_warm.tolist(), it_cold.tolist())
    cold_iterations[dtype] = it_cold
  return cold_iterations


class TorchStyleAdam:
  """Adam as ``torch.optim.Adam`` with L2 weight decay (g ← g + wd·p), in numpy."""

  def __init__(self, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.weight_decay, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
    self.m = self.v = None
    self.t = 0

  def step(self, p, g):
    g = g + self.weight_decay * p
    if self.m is None:
      self.m, self.v = np.zeros_like(p), np.zeros_like(p)
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * g
    self.v = self.b2 * self.v + (1 - self.b2) * g * g
    m_hat = self.m / (1 - self.b1 ** self.t)
    v_hat = self.v / (1 - self.b2 ** self.t)
    return p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
