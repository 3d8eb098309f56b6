"""Conflict diagnostics against dense numpy on J, the opt-in wrapper, and its cost (shared G)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg
from conicgrad_jax import diagnostics as dg

SHARED = {"enc": True, "head": False}
DIAGNOSE = jax.jit(dg.conflict_diagnostics)


def _grads(seed, k=4):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, 6))
  J[1:] -= 0.7 * J[0]
  return J, {"enc": jnp.asarray(J.reshape(k, 3, 2), jnp.float32),
             "head": jnp.asarray(rng.standard_normal((k, 5)), jnp.float32)}


def _reference(J, w):
  norms = np.linalg.norm(J, axis=1)
  cos = (J @ J.T) / np.outer(norms, norms)
  gms = 2 * np.outer(norms, norms) / (norms[:, None] ** 2 + norms[None, :] ** 2)
  iu = np.triu_indices(len(J), 1)
  d = w @ J
  g0 = J.mean(0)
  return {"cosines": cos, "magnitude_similarity": gms,
          "conflict_fraction": np.mean(cos[iu] < 0), "grad_norms": norms,
          "update_norm": np.linalg.norm(d),
          "update_cosines": J @ d / (norms * np.linalg.norm(d)),
          "update_cosine_to_mean": g0 @ d / (np.linalg.norm(g0) * np.linalg.norm(d)),
          "condition_number": np.linalg.cond(J @ J.T)}


@pytest.mark.parametrize("seed", range(3))
def test_matches_dense_numpy(seed):
  J, _ = _grads(seed)
  w = np.random.default_rng(seed).uniform(0.1, 1.0, 4)
  with jax.enable_x64(True):
    d = dg.conflict_diagnostics(jnp.asarray(J @ J.T), jnp.asarray(w), jnp.arange(4.0))
    d = jax.tree_util.tree_map(np.asarray, d)
  for name, expected in _reference(J, w).items():
    np.testing.assert_allclose(getattr(d, name), expected, rtol=1e-8, atol=1e-10, err_msg=name)
  np.testing.assert_array_equal(d.losses, np.arange(4.0))


def test_degenerate_gram_gives_finite_diagnostics():
  G = jnp.zeros((3, 3)).at[0, 0].set(1.0)                   # two zero gradients
  d = DIAGNOSE(G)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in d[:-1])
  # Singular: λ_min is floored at ε·λ_max, so the condition number is 1/ε.
  eps = float(jnp.finfo(jnp.float32).eps)
  assert 0.5 / eps <= float(d.condition_number) <= 2.0 / eps
  # Two zero gradients have equal magnitudes (similarity 1, as documented); a zero and a
  # non-zero one, 0.
  np.testing.assert_array_equal(np.asarray(d.magnitude_similarity)[1:, 1:], 1.0)
  np.testing.assert_array_equal(np.asarray(d.magnitude_similarity)[0, 1:], 0.0)
  assert float(DIAGNOSE(jnp.zeros((3, 3))).condition_number) == 1.0
  assert float(dg.conflict_diagnostics(jnp.ones((1, 1))).conflict_fraction) == 0.0


def test_as_dict_is_flat_floats_and_drops_missing_losses():
  J, _ = _grads(0, k=3)
  d = DIAGNOSE(jnp.asarray(J @ J.T, jnp.float32), jnp.array([0.2, 0.3, 0.5]))
  out = dg.as_dict(d, ["a", "b", "c"])
  assert all(isinstance(v, float) for v in out.values())
  assert out["weight/c"] == pytest.approx(0.5) and "loss/a" not in out
  assert out["cos/a-c"] == pytest.approx(float(d.cosines[0, 2]))
  assert len([k for k in out if k.startswith("cos/")]) == 3
  with pytest.raises(ValueError, match="task_names"):
    dg.as_dict(d, ["a"])
  # Every key holds its own field, with losses given.
  d = DIAGNOSE(jnp.asarray(J @ J.T, jnp.float32), jnp.array([0.2, 0.3, 0.5]),
               jnp.array([1.0, 2.0, 4.0]))
  out = dg.as_dict(d, ["a", "b", "c"])
  f = jax.tree_util.tree_map(np.asarray, d)
  expected = {"conflict_fraction": f.conflict_fraction, "condition_number": f.condition_number,
              "update_norm": f.update_norm, "update_cos_mean": f.update_cosine_to_mean}
  for i, a in enumerate("abc"):
    expected.update({f"weight/{a}": f.weights[i], f"grad_norm/{a}": f.grad_norms[i],
                     f"update_cos/{a}": f.update_cosines[i], f"loss/{a}": f.losses[i]})
    for j, b in enumerate("abc"):
      if i < j:
        expected.update({f"cos/{a}-{b}": f.cosines[i, j],
                         f"gms/{a}-{b}": f.magnitude_similarity[i, j]})
  assert set(out) == set(expected)
  for key, value in expected.items():
    assert out[key] == pytest.approx(float(value), rel=1e-6), key
  # The fields differ from each other here, so a key holding another field shows.
  assert len({round(float(v), 6) for v in expected.values()}) >= len(expected) - 3


_LOGGED_BY_DEFAULT = ("conicgrad", "cr_mogm", "mtac_fc")


@pytest.mark.parametrize("name", list(_LOGGED_BY_DEFAULT) + [
    pytest.param(n, marks=pytest.mark.slow) for n, info in sorted(cg.methods().items())
    if info.gram_weighting and n not in _LOGGED_BY_DEFAULT])
def test_wrapper_keeps_the_update_and_logs_the_step(name):
  J, g = _grads(1)
  params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:]), g)
  losses = jnp.array([1.0, 2.0, 0.5, 1.5])
  method = cg.methods()[name].factory(shared=SHARED, num_tasks=4)
  tx = dg.with_diagnostics(method, shared=SHARED, num_tasks=4)
  state = tx.init(params)
  assert state.diagnostics.cosines.shape == (4, 4)
  u, state = jax.jit(tx.update)(g, state, params, losses=losses)
  u_ref, s_ref = jax.jit(method.update)(g, method.init(params), params, losses=losses)
  # Two compiled programs: XLA may fuse them differently, so equal up to rounding
  # (ConFIG's pseudo-inverse amplifies it to 2e-6).
  for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(u_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  w = np.asarray(s_ref.weights, np.float64)
  ref = _reference(J, w)
  d = state.diagnostics
  for field in ("cosines", "update_cosines", "update_cosine_to_mean", "conflict_fraction"):
    np.testing.assert_allclose(np.asarray(getattr(d, field)), ref[field], rtol=1e-4, atol=1e-5)
  # The update-angle fields describe the actual update on the shared leaves.
  d_enc = np.asarray(u["enc"]).ravel()
  np.testing.assert_allclose(np.asarray(d.update_cosines),
                             J @ d_enc / (np.linalg.norm(J, axis=1) * np.linalg.norm(d_enc)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(d.losses), np.asarray(losses))
  np.testing.assert_allclose(np.asarray(state.weights), np.asarray(s_ref.weights),
                             rtol=1e-5, atol=1e-6)


def test_weights_of_another_length_are_named():
  with pytest.raises(ValueError, match=r"`weights` has shape \(2,\); expected \(3,\)"):
    dg.conflict_diagnostics(jnp.eye(3), jnp.ones(2))


def test_non_finite_gram_gives_nan_diagnostics_and_a_skipped_first_step_stores_them():
  G = jnp.eye(3).at[0, 1].set(jnp.nan)
  d = DIAGNOSE(G)
  assert all(np.all(np.isnan(np.asarray(x))) for x in d[:-1])
  # Non-finite weights with a finite G: every field derived from them is NaN too.
  for bad_weight in (jnp.nan, jnp.inf):
    d = DIAGNOSE(jnp.eye(3), jnp.array([0.5, bad_weight, 0.5]))
    assert all(np.all(np.isnan(np.asarray(x))) for x in d[:-1])
  # Without num_tasks there is nothing to keep on a skipped first step: NaN, not zeros.
  _, g = _grads(2)
  params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:]), g)
  tx = dg.with_diagnostics(cg.mgda(shared=SHARED), shared=SHARED)
  bad = jax.tree_util.tree_map(lambda x: x, g)
  bad["enc"] = bad["enc"].at[0, 0, 0].set(jnp.nan)
  _, state = jax.jit(tx.update)(bad, tx.init(params), params)
  assert int(state.nonfinite_steps) == 1
  assert np.isnan(float(state.diagnostics.condition_number))
  assert np.all(np.isnan(np.asarray(state.diagnostics.cosines)))


def test_skipped_step_keeps_diagnostics_and_state_scans():
  _, g = _grads(2)
  params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:]), g)
  tx = dg.with_diagnostics(cg.mgda(shared=SHARED, num_tasks=4), shared=SHARED, num_tasks=4)

  def body(state, grads):
    _, state = tx.update(grads, state, params)
    return state, state.diagnostics.conflict_fraction

  bad = jax.tree_util.tree_map(lambda x: x, g)
  bad["enc"] = bad["enc"].at[0, 0, 0].set(jnp.inf)
  seq = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), g, bad)
  state, fractions = jax.jit(lambda s: jax.lax.scan(body, s, seq))(tx.init(params))
  assert int(state.nonfinite_steps) == 1
  assert np.all(np.isfinite(np.asarray(state.diagnostics.cosines)))
  assert float(fractions[1]) == float(fractions[0])


def _consumers(hlo, name):
  return sum(1 for line in hlo.splitlines() if name in line and "parameter(" not in line
             and not line.lstrip().startswith("ENTRY"))


def test_wrapper_shares_the_gram_contraction_in_the_compiled_program():
  """XLA CSE: the diagnostics add no pass over the task gradients (cost independent of m)."""
  g = {"a": jnp.ones((4, 4099)), "b": jnp.ones((4, 7, 3))}
  counts = []
  for wrap in (False, True):
    tx = cg.mgda(num_tasks=4)
    if wrap:
      tx = dg.with_diagnostics(tx, num_tasks=4)
    hlo = jax.jit(tx.update).lower(g, tx.init(None)).compile().as_text()
    counts.append((_consumers(hlo, "task_grads__a__"), _consumers(hlo, "task_grads__b__")))
  assert min(counts[0]) > 0, counts   # the parameters are found by these names
  assert counts[0] == counts[1], counts


def test_the_wrapper_takes_the_methods_shared_and_refuses_a_different_one():
  """Without `shared` the wrapper uses the method's; one that selects other leaves is an error."""
  _, g = _grads(1)
  params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:]), g)
  summed = dict(g, head=g["head"].sum(0))
  inherited = dg.with_diagnostics(cg.mgda(shared=SHARED))
  explicit = dg.with_diagnostics(cg.mgda(shared=SHARED), shared=SHARED)
  a = inherited.update(summed, inherited.init(params), params)[1].diagnostics
  b = explicit.update(summed, explicit.init(params), params)[1].diagnostics
  np.testing.assert_array_equal(np.asarray(a.cosines), np.asarray(b.cosines))
  conflicting = dg.with_diagnostics(cg.mgda(shared=SHARED), shared={"enc": True, "head": True})
  with pytest.raises(ValueError, match=r"makes leaf \['head'\] shared.*`method` was built"):
    conflicting.update(g, conflicting.init(params), params)
  with pytest.raises(ValueError, match="no `weights`"):
    dg.with_diagnostics(optax.chain(cg.mgda(), optax.sgd(1.0))).init(params)


def test_diagnostics_before_the_first_step_are_nan_with_or_without_num_tasks():
  _, g = _grads(2)
  params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:]), g)
  for k in (None, 4):
    tx = dg.with_diagnostics(cg.mgda(shared=SHARED, num_tasks=k), shared=SHARED, num_tasks=k)
    d = tx.init(params).diagnostics
    assert all(np.all(np.isnan(np.asarray(x))) for x in d), k


def test_init_takes_k_from_the_method_and_checks_num_tasks():
  """Diagnostics shaped (K, K) at init when only the method knows K; a wrapper K that
  disagrees with the method's is named; so are losses of the wrong length."""
  _, g = _grads(2)
  params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape[1:]), g)
  tx = dg.with_diagnostics(cg.mgda(shared=SHARED, num_tasks=4), shared=SHARED)
  d = tx.init(params).diagnostics
  assert d.cosines.shape == (4, 4) and d.losses.shape == (4,)
  with pytest.raises(ValueError, match=r"`num_tasks` is 3 but `method` was built for K = 4"):
    dg.with_diagnostics(cg.mgda(shared=SHARED, num_tasks=4), shared=SHARED,
                        num_tasks=3).init(params)
  with pytest.raises(ValueError, match=r"`losses` has shape \(3,\); expected \(4,\)"):
    DIAGNOSE(jnp.eye(4), None, jnp.ones(3))


def test_a_gram_that_is_not_square_is_refused_by_name():
  for bad in (jnp.ones((2, 2, 2)), jnp.ones((2, 3)), jnp.ones(3)):
    with pytest.raises(ValueError, match=r"`gram` must be a square \(K, K\) matrix"):
      DIAGNOSE(bad)


def test_magnitude_similarity_stays_in_its_range_for_parallel_gradients():
  rng = np.random.default_rng(3)
  for _ in range(20):
    g = rng.standard_normal(7).astype(np.float32)
    J = jnp.asarray(np.stack([g, 1.0000001 * g, 3.0 * g]))
    d = DIAGNOSE(J @ J.T)
    assert float(jnp.max(d.magnitude_similarity)) <= 1.0
    assert float(jnp.min(d.magnitude_similarity)) >= 0.0
