"""make_task_update: modes against the stacked path, representation against its own definition,
amortised weighting, `shared`/`num_tasks` said once, log-losses, errors."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from jaxprs import equations

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

K = 3


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"enc": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
            "heads": jnp.asarray(rng.standard_normal((K, 4)), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
  return params, x


def encode(p, x):
  return jnp.tanh(x @ p["enc"])


def heads(p, z, x):
  return jnp.mean((z @ p["heads"].T - x[:, :K]) ** 2, axis=0) + 0.05


def fun(p, x):
  return heads(p, encode(p, x), x)


def shared(path, leaf):
  del leaf
  return "enc" in jax.tree_util.keystr(path)


def _stacked(method_factory, params, x, log_losses=False, **extra):
  """The reference: stacked task gradients into the method built with `shared`."""
  tx = method_factory(shared=shared)

  @jax.jit
  def reference(params, x):
    losses, grads = cg.value_and_task_grads(fun, shared=shared, log_losses=log_losses)(params, x)
    return tx.update(grads, tx.init(params), params, losses=losses, **extra)

  return reference(params, x)


def _close(a, b, **tol):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


@pytest.mark.parametrize("name, mode", [
    *[("conicgrad", m) for m in ("stacked", "chunked", "gramian")], ("upgrad", "gramian"),
    *[pytest.param(n, m, marks=pytest.mark.slow) for n in ("upgrad", "mgda", "nash_mtl", "famo",
                                                          "gsmgrad", "mtac_fc")
      for m in ("stacked", "chunked", "gramian") if (n, m) != ("upgrad", "gramian")]])
def test_modes_equal_the_stacked_path(name, mode):
  params, x = _problem(1)
  factory = cg.methods()[name].factory
  expected, expected_state = _stacked(factory, params, x)
  task = cg.make_task_update(fun, factory(num_tasks=K), mode=mode, shared=shared,
                             chunk_size=2 if mode == "chunked" else None)
  losses, update, state = jax.jit(task.step)(params, task.init(params), x)
  _close(update, expected, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.asarray(state.method_state.weights),
                             np.asarray(expected_state.weights), rtol=2e-4, atol=2e-5)
  # `weights` is the method's last weights with every = 1 too.
  np.testing.assert_allclose(np.asarray(state.weights), np.asarray(expected_state.weights),
                             rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("mode", ["stacked", "chunked",
                                  pytest.param("gramian", marks=pytest.mark.slow)])
def test_log_losses_weighs_the_log_loss_gradients(mode):
  """log-ConicGrad: the method on ∇ log L_k = ∇L_k / L_k; heads get Σ_k ∇ log L_k."""
  params, x = _problem(8)
  expected, _ = _stacked(lambda **kw: cg.conicgrad(0.5, **kw), params, x, log_losses=True)
  task = cg.make_task_update(fun, cg.conicgrad(0.5, num_tasks=K), mode=mode, shared=shared,
                             log_losses=True, chunk_size=2 if mode == "chunked" else None)
  losses, update, _ = jax.jit(task.step)(params, task.init(params), x)
  _close(update, expected, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.asarray(losses), np.asarray(fun(params, x)), rtol=1e-6)
  l = np.asarray(fun(params, x))
  jac_heads = np.asarray(jax.jacrev(fun)(params, x)["heads"])
  np.testing.assert_allclose(np.asarray(update["heads"]),
                             (jac_heads / l[:, None, None]).sum(0), rtol=1e-4, atol=1e-6)


def test_log_losses_skip_a_step_whose_loss_is_not_positive():
  """∇ log L = ∇L / L would ascend a negative loss: the step's task gradients are NaN, it is skipped."""
  params, x = _problem(9)
  shifted = lambda p, x: fun(p, x) - jnp.array([0.0, 10.0, 0.0])    # task 1's loss < 0
  _, task_grads = cg.value_and_task_grads(shifted, shared=shared, log_losses=True)(params, x)
  assert np.all(np.isnan(np.asarray(task_grads["enc"])))
  # Just below zero too (task 1's loss = -0.1): no logarithm, however small the loss.
  below = float(fun(params, x)[1]) + 0.1
  barely = lambda p, x: fun(p, x) - jnp.array([0.0, below, 0.0])
  _, task_grads = cg.value_and_task_grads(barely, shared=shared, log_losses=True)(params, x)
  assert np.all(np.isnan(np.asarray(task_grads["enc"])))
  _, positive = cg.value_and_task_grads(fun, shared=shared, log_losses=True)(params, x)
  assert np.all(np.isfinite(np.asarray(positive["enc"])))
  task = cg.make_task_update(shifted, cg.conicgrad(0.5, num_tasks=K), shared=shared,
                             log_losses=True)
  _, update, state = jax.jit(task.step)(params, task.init(params), x)
  assert int(state.method_state.nonfinite_steps) == 1
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree_util.tree_leaves(update))


def _representation_reference(params, x):
  """MGDA-UB by hand: weights from the Gram matrix of ∂L_k/∂z, then Σ_k w_k ∇_θ L_k."""
  z = encode(params, x)
  rep = np.asarray(jax.jacrev(lambda zz: heads(params, zz, x))(z), np.float64)   # (K, B, d)
  gram = np.einsum("kbd,lbd->kl", rep, rep)
  w, _ = jax.jit(cg.conic_weighting)(jnp.asarray(gram, jnp.float32), 0.5)
  enc = jax.grad(lambda p: jnp.dot(w, fun(p, x)))(params)["enc"]
  head = jax.grad(lambda p: jnp.sum(fun(p, x)))(params)["heads"]
  return w, {"enc": enc, "heads": head}


def test_representation_mode_is_the_mgda_ub_approximation():
  """Equal to the hand-built representation-level reference, and not to the stacked update."""
  params, x = _problem(2)
  task = cg.make_task_update(heads, cg.conicgrad(0.5, num_tasks=K), mode="representation",
                             encode=encode)
  losses, update, state = jax.jit(task.step)(params, task.init(params), x)
  w, expected = _representation_reference(params, x)
  # The reference's Gram matrix is summed in float64, the library's in float32, and the
  # float32 solve is certified to a relative gap of 1e-5: the tolerances of this file.
  np.testing.assert_allclose(np.asarray(state.method_state.weights), np.asarray(w), rtol=2e-4,
                             atol=2e-5)
  _close(update, expected, rtol=2e-4, atol=2e-5)
  stacked, _ = _stacked(lambda **kw: cg.conicgrad(0.5, **kw), params, x)
  diff = np.max(np.abs(np.asarray(update["enc"]) - np.asarray(stacked["enc"])))
  assert diff > 1e-2 * np.max(np.abs(np.asarray(stacked["enc"]))), diff


def test_representation_mode_with_rotograd_matches_its_formula():
  params, x = _problem(3)
  task = cg.make_task_update(heads, cg.rotograd(), mode="representation", encode=encode)
  _, update, _ = jax.jit(task.step)(params, task.init(params), x)
  z = encode(params, x)
  rep = np.asarray(jax.jacrev(lambda zz: heads(params, zz, x))(z))
  norms = np.linalg.norm(rep.reshape(K, -1), axis=1)
  combined = (rep / norms[:, None, None]).sum(0) * norms.mean()           # step 0: C = mean norm
  _, enc_vjp = jax.vjp(lambda p: encode(p, x), params)
  np.testing.assert_allclose(np.asarray(update["enc"]),
                             np.asarray(enc_vjp(jnp.asarray(combined))[0]["enc"]),
                             rtol=1e-4, atol=1e-6)


def test_representation_mode_with_rotograd_follows_the_reference_over_its_burn_in():
  """Five steps with burn_in_period=2 against the reference package's rule, in numpy:
  n_k = ‖o_k‖ (clamped at 1e-15), n⁰ recorded at steps 0 and 2, ρ = n/n⁰, α = ρ/Σρ,
  update of z = Σ_k (Σ_j α_j n_j / n_k) o_k (observed: 4e-7 of the largest entry)."""
  task = cg.make_task_update(heads, cg.rotograd(burn_in_period=2, num_tasks=K),
                             mode="representation", encode=encode)
  step = jax.jit(task.step)
  state, initial = None, None
  for t in range(5):
    params, x = _problem(10 + t)
    state = task.init(params) if state is None else state
    _, update, state = step(params, state, x)
    z = encode(params, x)
    rep = np.asarray(jax.jacrev(lambda zz: heads(params, zz, x))(z), np.float64)
    norms = np.maximum(np.linalg.norm(rep.reshape(K, -1), axis=1), 1e-15)
    if t in (0, 2):
      initial = norms
    alpha = (norms / initial) / np.sum(norms / initial)
    combined = (alpha @ norms) * np.sum(rep / norms[:, None, None], axis=0)
    expected = jax.vjp(lambda p: encode(p, x), params)[1](jnp.asarray(combined, jnp.float32))[0]
    scale = float(np.max(np.abs(np.asarray(expected["enc"]))))
    np.testing.assert_allclose(np.asarray(update["enc"]), np.asarray(expected["enc"]),
                               atol=1e-5 * scale, rtol=0)


def test_amortised_weighting_reuses_the_last_weights():
  params, x = _problem(4)
  task = cg.make_task_update(fun, cg.conicgrad(0.5, num_tasks=K), shared=shared, every=3)
  step = jax.jit(task.step)
  state = task.init(params)
  expected0, s0 = _stacked(lambda **kw: cg.conicgrad(0.5, **kw), params, x)
  _, u0, state = step(params, state, x)
  _close(u0, expected0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state.weights), np.asarray(s0.weights), rtol=1e-4)
  params2, x2 = _problem(5)                       # new data: the weights are not recomputed
  w = np.asarray(state.weights)
  _, u1, state = step(params2, state, x2)
  enc = jax.grad(lambda p: jnp.dot(jnp.asarray(w), fun(p, x2)))(params2)["enc"]
  hd = jax.grad(lambda p: jnp.sum(fun(p, x2)))(params2)["heads"]
  np.testing.assert_allclose(np.asarray(u1["enc"]), np.asarray(enc), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(u1["heads"]), np.asarray(hd), rtol=1e-5, atol=1e-6)
  _, u1_host, _ = jax.jit(task.reuse)(params2, state._replace(step=state.step - 1), x2)
  _close(u1_host, u1, rtol=1e-6, atol=1e-7)
  _, u2, state = step(params2, state, x2)          # step 2: still the step-0 weights
  _close(u2, u1, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(state.weights), w)
  _, u3, state = step(params2, state, x2)          # step 3: recomputed on the new data
  expected3, _ = _stacked(lambda **kw: cg.conicgrad(0.5, **kw), params2, x2)
  _close(u3, expected3, rtol=1e-5, atol=1e-6)
  assert step._cache_size() == 1


@pytest.mark.parametrize("mode", ["stacked", pytest.param("representation",
                                                          marks=pytest.mark.slow)])
def test_an_amortised_reuse_step_with_log_losses_weighs_the_log_loss_gradients(mode):
  """The reuse step differentiates Σ_k w_k log L_k (heads: Σ_k log L_k), as the
  recompute step does, in ``step`` and in the host-scheduled ``reuse``; the losses it
  returns are L_k."""
  params, x = _problem(4)
  if mode == "representation":
    task = cg.make_task_update(heads, cg.conicgrad(0.5, num_tasks=K), mode=mode, encode=encode,
                               every=2, log_losses=True)
  else:
    task = cg.make_task_update(fun, cg.conicgrad(0.5, num_tasks=K), shared=shared, every=2,
                               log_losses=True)
  step = jax.jit(task.step)
  _, _, state = step(params, task.init(params), x)
  params2, x2 = _problem(5)
  w = jnp.asarray(state.weights)
  _, u1_host, _ = jax.jit(task.reuse)(params2, state, x2)      # the host-scheduled reuse
  losses, u1, state = step(params2, state, x2)
  _close(u1_host, u1, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(losses), np.asarray(fun(params2, x2)), rtol=1e-6)
  enc = jax.grad(lambda p: jnp.dot(w, jnp.log(fun(p, x2))))(params2)["enc"]
  hd = jax.grad(lambda p: jnp.sum(jnp.log(fun(p, x2))))(params2)["heads"]
  np.testing.assert_allclose(np.asarray(u1["enc"]), np.asarray(enc), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(u1["heads"]), np.asarray(hd), rtol=1e-5, atol=1e-6)
  plain = jax.grad(lambda p: jnp.dot(w, fun(p, x2)))(params2)["enc"]
  assert np.max(np.abs(np.asarray(plain - enc))) > 0.1 * np.max(np.abs(np.asarray(enc)))


def test_amortised_representation_step_equals_the_host_schedule():
  """The branch-free-encoder step gives what recompute/reuse give on the same schedule."""
  params, x = _problem(9)
  task = cg.make_task_update(heads, cg.conicgrad(0.5, num_tasks=K), mode="representation",
                             encode=encode, every=2)
  step, recompute, reuse = jax.jit(task.step), jax.jit(task.recompute), jax.jit(task.reuse)
  s_a = s_b = task.init(params)
  for i, p in enumerate([params, _problem(10)[0], _problem(11)[0]]):
    _, u_a, s_a = step(p, s_a, x)
    _, u_b, s_b = (recompute if i % 2 == 0 else reuse)(p, s_b, x)
    _close(u_a, u_b, rtol=1e-5, atol=1e-6)
    _close(s_a, s_b, rtol=1e-5, atol=1e-6)


def test_shared_is_said_once():
  """The method is built without `shared`; a predicate there is harmless, a mask is an error."""
  params, x = _problem(12)
  expected, _ = _stacked(lambda **kw: cg.mgda(**kw), params, x)
  for method in (cg.mgda(num_tasks=K), cg.mgda(num_tasks=K, shared=shared)):
    task = cg.make_task_update(fun, method, shared=shared)
    _close(jax.jit(task.step)(params, task.init(params), x)[1], expected, rtol=2e-4, atol=2e-5)
  mask = {"enc": True, "heads": False}
  task = cg.make_task_update(fun, cg.mgda(shared=mask), shared=shared)
  with pytest.raises(ValueError, match="without `shared`"):
    task.step(params, task.init(params), x)


def test_amortised_nonfinite_loss_gives_a_zero_update():
  params, x = _problem(6)
  task = cg.make_task_update(fun, cg.conicgrad(0.5, num_tasks=K), shared=shared, every=2)
  state = task.init(params)
  step = jax.jit(task.step)
  _, _, state = step(params, state, x)
  _, u, _ = step(params, state, x.at[0, 0].set(jnp.nan))
  assert all(np.all(np.asarray(l) == 0.0) for l in jax.tree_util.tree_leaves(u))


@pytest.mark.parametrize("mode", ["stacked", "gramian"])
def test_nonfinite_gives_a_zero_update(mode):
  params, x = _problem(7)
  task = cg.make_task_update(fun, cg.conicgrad(0.5), mode=mode, shared=shared)
  _, u, state = jax.jit(task.step)(params, task.init(params), x.at[0, 0].set(jnp.inf))
  assert all(np.all(np.asarray(l) == 0.0) for l in jax.tree_util.tree_leaves(u))


def test_errors_name_the_option():
  with pytest.raises(ValueError, match="mode"):
    cg.make_task_update(fun, cg.conicgrad(), mode="fast")
  with pytest.raises(ValueError, match="chunk_size"):
    cg.make_task_update(fun, cg.conicgrad(), mode="chunked")
  with pytest.raises(ValueError, match="chunk_size"):
    cg.make_task_update(fun, cg.conicgrad(), chunk_size=2)
  with pytest.raises(ValueError, match="encode"):
    cg.make_task_update(fun, cg.conicgrad(), mode="representation")
  with pytest.raises(ValueError, match="encode"):
    cg.make_task_update(fun, cg.conicgrad(), encode=encode)
  with pytest.raises(ValueError, match="shared"):
    cg.make_task_update(heads, cg.conicgrad(), mode="representation", encode=encode,
                        shared=shared)
  with pytest.raises(ValueError, match="every"):
    cg.make_task_update(fun, cg.conicgrad(), every=0)
  with pytest.raises(ValueError, match="strategy"):
    cg.make_task_update(fun, cg.conicgrad(), strategy="pmap")
  with pytest.raises(ValueError, match="strategy"):   # gramian mode has no K backward passes
    cg.make_task_update(fun, cg.conicgrad(), mode="gramian", strategy="loop")
  params = _problem()[0]
  with pytest.raises(ValueError, match="num_tasks=K"):
    cg.make_task_update(fun, cg.conicgrad(), every=2).init(params)
  with pytest.raises(ValueError, match="num_tasks"):
    cg.make_task_update(fun, cg.conicgrad(num_tasks=K), num_tasks=K + 1).init(params)
  with pytest.raises(ValueError, match="log_losses"):
    cg.make_task_update(fun, cg.conicgrad(), log_losses="False")
  with pytest.raises(ValueError, match="log_losses"):
    cg.gramian_value_and_update(fun, lambda g: (jnp.ones(K), None), log_losses=1)
  # `num_tasks` against the losses `fun` returns, when the method does not know K.
  task = cg.make_task_update(fun, cg.mgda(), shared=shared, num_tasks=K + 2)
  with pytest.raises(ValueError, match="num_tasks.*3 task losses"):
    jax.eval_shape(task.step, params, task.init(params), _problem()[1])
  # An encoder that returns a pytree is named.
  pair = lambda p, x: (encode(p, x), encode(p, x))
  task = cg.make_task_update(lambda p, z, x: heads(p, z[0], x), cg.mgda(num_tasks=K),
                             mode="representation", encode=pair)
  with pytest.raises(ValueError, match="`encode` must return one array"):
    jax.eval_shape(task.step, params, task.init(params), _problem()[1])


def test_chunked_mode_with_a_zero_size_leaf_equals_stacked():
  params, x = _problem(3)
  params = {"a_empty": jnp.zeros((0,), jnp.float32), **params}
  reference = cg.make_task_update(fun, cg.mgda(num_tasks=K), shared=shared)
  task = cg.make_task_update(fun, cg.mgda(num_tasks=K), mode="chunked", chunk_size=2,
                             shared=shared, unroll=True)
  _, expected, _ = jax.jit(reference.step)(params, reference.init(params), x)
  _, update, _ = jax.jit(task.step)(params, task.init(params), x)
  assert update["a_empty"].shape == (0,)
  _close(update, expected, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_looped_chunks_run_chunk_size_tasks_per_backward_pass(chunk_size):
  """unroll=False: one loop of K / chunk_size iterations, each a backward pass batched over
  chunk_size rows of the K×K identity (so chunk_size task gradients at a time)."""
  k = 6
  rng = np.random.default_rng(0)
  params = {"enc": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
            "heads": jnp.asarray(rng.standard_normal((k, 4)), jnp.float32)}
  x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
  losses = lambda p, x: jnp.mean((jnp.tanh(x @ p["enc"]) @ p["heads"].T) ** 2, axis=0)
  task = cg.make_task_update(losses, cg.linear_scalarization(num_tasks=k), mode="chunked",
                             chunk_size=chunk_size, shared=shared, unroll=False)
  jaxpr = jax.make_jaxpr(task.step)(params, task.init(params), x).jaxpr
  scans = equations(jaxpr, "scan")
  assert len(scans) == 1
  eqn = scans[0]
  n_chunks = k // chunk_size
  assert eqn.params["length"] == n_chunks
  first_x = eqn.params["num_consts"] + eqn.params["num_carry"]
  assert [v.aval.shape for v in eqn.invars[first_x:]] == [(n_chunks, chunk_size, k)]
  body = eqn.params["jaxpr"].jaxpr
  assert [v.aval.shape for v in body.invars[first_x:]] == [(chunk_size, k)]
  # Per iteration: the chunk's task gradients of the encoder and of the heads.
  assert sorted(v.aval.shape for v in body.outvars[eqn.params["num_carry"]:]) == sorted(
      [(chunk_size, 5, 4), (chunk_size, k, 4)])


@pytest.mark.slow
def test_rotograd_example_trains():
  import rotograd_digits
  history, metrics = rotograd_digits.train(steps=150, verbose=False)
  first, last = history[:10].mean(0), history[-20:].mean(0)
  assert np.all(last < 0.3 * first), (first, last)
  assert metrics["test_accuracy_digit"] > 0.9 and metrics["test_accuracy_parity"] > 0.9
  assert metrics["rotation_orthogonality_error"] < 1e-4
  assert metrics["rotation_distance_from_identity"] > 1e-3      # the rotations were trained


@pytest.mark.parametrize("name, mode", [
    ("famo", "gramian"),
    *[pytest.param(n, m, marks=pytest.mark.slow) for n in ("famo", "conicgrad", "gradvac")
      for m in ("chunked", "gramian") if (n, m) != ("famo", "gramian")]])
def test_modes_keep_equal_to_the_stacked_path_over_steps(name, mode):
  """Three steps from init: a state that evolves (FAMO's logits and last losses, ConicGrad's
  warm start, GradVac's EMA targets and random task order) evolves as on the stacked path."""
  params, x = _problem(11)
  factory = cg.methods()[name].factory
  tasks = {m: cg.make_task_update(fun, factory(num_tasks=K), mode=m, shared=shared,
                                  chunk_size=2 if m == "chunked" else None)
           for m in ("stacked", mode)}
  runs = {}
  for m, task in tasks.items():
    step, p, state, updates = jax.jit(task.step), params, task.init(params), []
    for i in range(3):
      _, update, state = step(p, state, x + 0.1 * i)
      p = jax.tree_util.tree_map(lambda a, u: a - 0.1 * u, p, update)
      updates.append(update)
    runs[m] = (updates, state)
  for a, b in zip(runs[mode][0], runs["stacked"][0]):
    _close(a, b, rtol=2e-4, atol=2e-5)
  # Floating state (counters such as ConicGrad's Newton steps may differ by rounding of G).
  floating = lambda s: [l for l in jax.tree_util.tree_leaves(s)
                        if jnp.issubdtype(l.dtype, jnp.floating)]
  _close(floating(runs[mode][1].method_state), floating(runs["stacked"][1].method_state),
         rtol=2e-4, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(runs[mode][1].method_state.nonfinite_steps), 0)


# --- skipped steps: make_task_update skips a step as a method on its own does: the whole
# update is zero (heads included) and the method's state is the old one with
# nonfinite_steps + 1, in every mode, whether the method rejected the step or a head
# gradient or a loss was not finite.

SKIP_MODES = [
    pytest.param({"mode": "stacked"}, id="stacked"),
    pytest.param({"mode": "gramian"}, id="gramian"),
    pytest.param({"mode": "chunked", "chunk_size": 2}, id="chunked", marks=pytest.mark.slow),
    pytest.param({"mode": "representation"}, id="representation", marks=pytest.mark.slow),
]


def _shifted_heads(p, z, x, shift):
  # √ of a head entry: at 0 its gradient is infinite while every loss stays finite.
  return heads(p, z, x) + shift + jnp.sqrt(jnp.abs(p["heads"][0, 0]))


def _skip_task(method, options, shift):
  options = dict(options)
  if options["mode"] == "representation":
    return cg.make_task_update(lambda p, z, x: _shifted_heads(p, z, x, shift), method, encode=encode,
                               **options)
  return cg.make_task_update(lambda p, x: _shifted_heads(p, encode(p, x), x, shift), method,
                             shared=shared, **options)


def _assert_skipped(update, state, before):
  assert all(np.all(np.asarray(l) == 0.0) for l in jax.tree_util.tree_leaves(update))
  assert int(state.method_state.nonfinite_steps) == int(before.method_state.nonfinite_steps) + 1
  kept = before.method_state._replace(nonfinite_steps=state.method_state.nonfinite_steps)
  for a, b in zip(jax.tree_util.tree_leaves(state.method_state), jax.tree_util.tree_leaves(kept)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(state.weights), np.asarray(before.weights))


@pytest.mark.parametrize("options", SKIP_MODES)
def test_a_step_the_method_rejects_moves_nothing(options):
  """GLS takes log L_k: a negative loss (finite gradients) is a step it rejects. Applying
  its previous weights to the encoder, or Σ_k ∇L_k to the heads, would still move them."""
  params, x = _problem()
  params = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  shift = jnp.array([0.0, -100.0, 0.0])
  task = _skip_task(cg.gls(num_tasks=K), options, shift)
  state = task.init(params)
  _, update, new_state = jax.jit(task.step)(params, state, x)
  _assert_skipped(update, new_state, state)


@pytest.mark.parametrize("options", SKIP_MODES)
def test_a_nonfinite_head_gradient_skips_the_step_and_keeps_the_method_state(options):
  """Finite losses and shared gradients, an infinite head gradient: FAMO (whose state
  changes every step) must neither advance nor leave the step uncounted."""
  params, x = _problem()
  params = {**params, "heads": params["heads"].at[0, 0].set(0.0)}
  task = _skip_task(cg.famo(num_tasks=K), options, jnp.zeros(K))
  state = task.init(params)
  losses, update, new_state = jax.jit(task.step)(params, state, x)
  assert np.all(np.isfinite(np.asarray(losses)))
  _assert_skipped(update, new_state, state)
  # The same step with a finite head gradient is taken.
  params = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  _, update, taken = jax.jit(task.step)(params, state, x)
  assert int(taken.method_state.nonfinite_steps) == 0
  assert np.any(np.asarray(update["heads"]) != 0.0)


@pytest.mark.parametrize("mode", ["stacked", pytest.param("representation",
                                                          marks=pytest.mark.slow)])
def test_a_reuse_step_with_a_nonfinite_head_gradient_is_counted(mode):
  params, x = _problem()
  options = {"mode": mode, "every": 2}
  task = _skip_task(cg.conicgrad(0.5, num_tasks=K), options, jnp.zeros(K))
  step = jax.jit(task.step)
  good = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  _, _, state = step(good, task.init(params), x)          # recomputes
  bad = {**params, "heads": params["heads"].at[0, 0].set(0.0)}
  _, update, reused = step(bad, state, x)                 # reuses the weights
  assert int(reused.step) == 2
  _assert_skipped(update, reused, state)


@pytest.mark.parametrize("options", [
    pytest.param({"mode": "stacked"}, id="stacked"),
    pytest.param({"mode": "gramian"}, id="gramian", marks=pytest.mark.slow),
    pytest.param({"mode": "stacked", "every": 2}, id="stacked-reuse"),
    pytest.param({"mode": "gramian", "every": 2}, id="gramian-reuse", marks=pytest.mark.slow)])
def test_an_infinite_loss_with_finite_gradients_skips_the_step(options):
  """UPGrad never reads the losses, so only the step's own check sees an infinite one
  (its gradient is finite); with ``every=2`` the second step reuses the weights."""
  params, x = _problem()
  params = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  shift = jax.lax.stop_gradient(jnp.array([0.0, jnp.inf, 0.0]))
  good = _skip_task(cg.upgrad(num_tasks=K), options, jnp.zeros(K))
  bad = _skip_task(cg.upgrad(num_tasks=K), options, shift)
  state = good.init(params)
  if options.get("every", 1) == 2:
    _, _, state = jax.jit(good.step)(params, state, x)          # recomputes the weights
  losses, update, new_state = jax.jit(bad.step)(params, state, x)
  assert np.isinf(np.asarray(losses)[1])
  _assert_skipped(update, new_state, state)
  # The same step with finite losses is taken.
  _, update, taken = jax.jit(good.step)(params, state, x)
  assert np.any(np.asarray(update["enc"]) != 0.0)


@pytest.mark.parametrize("name", ["moco", "db_mtl", "excess_mtl"])
def test_a_method_whose_state_is_shaped_like_the_shared_parameters(name):
  """MoCo, DB-MTL and ExcessMTL keep buffers shaped like the parameters they balance:
  with `shared`, make_task_update builds them for the shared leaves only, and two steps
  equal the stacked reference's (same losses, gradients and state)."""
  factory = lambda **kw: cg.methods()[name].factory(num_tasks=K, **kw)
  params, x = _problem(3)
  task = cg.make_task_update(fun, factory(), shared=shared)
  step = jax.jit(task.step)
  tx = factory(shared=shared)
  task_grads = cg.value_and_task_grads(fun, shared=shared)

  @jax.jit
  def reference(p, s, x):
    losses, grads = task_grads(p, x)
    return tx.update(grads, s, p, losses=losses)

  state, ref_state = task.init(params), tx.init(params)
  for seed in (3, 4):
    params, x = _problem(seed)
    _, update, state = step(params, state, x)
    expected, ref_state = reference(params, ref_state, x)
    _close(update, expected, rtol=1e-5, atol=1e-6)


def test_a_skipped_recompute_step_keeps_the_weights_later_reuse_steps_apply():
  """every=2 in representation mode: step 2 recomputes on an infinite head gradient and is
  skipped; it keeps step 0's weights, which step 3 (a reuse) then applies."""
  params, x = _problem()
  task = _skip_task(cg.conicgrad(0.5, num_tasks=K), {"mode": "representation", "every": 2},
                    jnp.zeros(K))
  step = jax.jit(task.step)
  good = {**params, "heads": params["heads"].at[0, 0].set(1.0)}
  bad = {**params, "heads": params["heads"].at[0, 0].set(0.0)}
  _, _, state = step(good, task.init(params), x)          # step 0: recomputes
  _, _, state = step(good, state, x)                      # step 1: reuses
  _, update, skipped = step(bad, state, x)                # step 2: recomputes, skipped
  _assert_skipped(update, skipped, state)
  other, x_other = _problem(8)                            # new data: a recompute would differ
  other = {**other, "heads": other["heads"].at[0, 0].set(1.0)}
  _, update, after = step(other, skipped, x_other)        # step 3: reuses step 0's weights
  _, expected, _ = jax.jit(task.reuse)(other, state, x_other)
  _close(update, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(after.weights), np.asarray(state.weights))
  _, recomputed, _ = jax.jit(task.recompute)(other, state, x_other)
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(recomputed), jax.tree_util.tree_leaves(update))) > 1e-4


def test_the_vmap_strategy_gives_the_loop_strategy_update():
  """Same update; and the option reaches the backward passes: the loop traces more of
  their products (a copy per task) than the vmapped VJP (one batched copy)."""
  params, x = _problem(13)
  runs, products = [], {}
  for strategy in ("loop", "vmap"):
    task = cg.make_task_update(fun, cg.mgda(num_tasks=K), shared=shared, strategy=strategy)
    runs.append(jax.jit(task.step)(params, task.init(params), x))
    products[strategy] = str(jax.make_jaxpr(task.step)(params, task.init(params), x)).count(
        "dot_general")
  _close(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-6)
  _close(runs[1][2].weights, runs[0][2].weights, rtol=1e-5, atol=1e-6)
  assert products["loop"] > products["vmap"]


@pytest.mark.parametrize("mode", ["stacked", pytest.param("gramian", marks=pytest.mark.slow)])
def test_the_amortised_step_inside_lax_scan_equals_the_host_schedule(mode):
  """``step`` (lax.cond on the step count) carried through lax.scan, against recompute and
  reuse called by the host on the same schedule (every=2, three steps)."""
  params, x = _problem(14)
  task = cg.make_task_update(fun, cg.mgda(num_tasks=K), mode=mode, shared=shared, every=2)
  xs = jnp.stack([x, 1.1 * x, 0.9 * x])

  def body(carry, xi):
    p, state = carry
    _, update, state = task.step(p, state, xi)
    p = jax.tree_util.tree_map(lambda a, u: a - 0.1 * u, p, update)
    return (p, state), update

  (_, scanned_state), scanned = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), xs))(
      params, task.init(params))
  p, state = params, task.init(params)
  recompute, reuse = jax.jit(task.recompute), jax.jit(task.reuse)
  for i in range(3):
    _, update, state = (recompute if i % 2 == 0 else reuse)(p, state, xs[i])
    _close(jax.tree_util.tree_map(lambda u: u[i], scanned), update, rtol=1e-5, atol=1e-6)
    p = jax.tree_util.tree_map(lambda a, u: a - 0.1 * u, p, update)
  _close(scanned_state, state, rtol=1e-5, atol=1e-6)
