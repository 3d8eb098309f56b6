"""The baseline methods: published values, optimality conditions, degenerate inputs, optax contract."""

import pickle

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conicgrad_jax as cg
import reference_solvers as ref
from conicgrad_jax.solvers import dual_cone
from conicgrad_jax.weighting import bargaining, cagrad, mgda, projection

J_PUBLISHED = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])

# torchjd's documented outputs on J_PUBLISHED; our settings that reproduce its conventions.
PUBLISHED = {
    "upgrad": (dict(), [0.2929, 1.9004, 1.9004]),
    "dualproj": (dict(), [0.5563, 1.1109, 1.1109]),
    "mgda": (dict(), [0.0, 1.0, 1.0]),
    "pcgrad": (dict(), [0.5848, 3.8012, 3.8012]),
    "imtl_g": (dict(), [0.0767, 1.0, 1.0]),
    "aligned_mtl": (dict(), [0.2133, 0.9673, 0.9673]),
    "cagrad": (dict(c=0.5, rescale=0), [0.1835, 1.2041, 1.2041]),
    "config": (dict(), [0.1588, 2.0706, 2.0706]),
    "fairgrad": (dict(alpha=1.0), [0.0766, 0.9985, 0.9985]),
    "nash_mtl": (dict(), [0.0542, 0.7061, 0.7061]),
    "linear_scalarization": (dict(), [1.0, 1.0, 1.0]),
}


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


def _x64(fn, *args, **kwargs):
  """Runs fn in float64: array arguments are converted inside the x64 context."""
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64)) if isinstance(a, (np.ndarray, jax.Array))
            else a for a in args]
    out = fn(*args, **kwargs)
    return jax.tree_util.tree_map(np.asarray, out)


@pytest.mark.parametrize("seed", range(5))
def test_mgda_kkt_and_cvxpy(seed):
  J = _random_J(seed)
  G = J @ J.T
  w, _ = _x64(mgda.mgda_weighting, G)
  grad = G @ w
  assert np.all(w >= -1e-10) and w.sum() == pytest.approx(1.0)
  assert np.all(grad >= w @ grad - 1e-8)                     # KKT: (Gw)_i ≥ wᵀGw
  assert np.all(np.abs(grad - w @ grad)[w > 1e-6] <= 1e-8)   # with equality on the support
  x = cp.Variable(J.shape[0], nonneg=True)
  ref.solve_tight(cp.Problem(cp.Minimize(cp.sum_squares(J.T @ x)), [cp.sum(x) == 1]))
  np.testing.assert_allclose(J.T @ w, J.T @ x.value, atol=1e-6)


def test_mgda_normalizations_use_losses():
  J = _random_J(1)
  losses = np.array([1.0, 2.0, 0.5, 3.0])
  norms = np.linalg.norm(J, axis=1)
  for norm, n in [("l2", norms), ("loss", losses), ("loss+", losses * norms)]:
    w, _ = _x64(mgda.mgda_weighting, J @ J.T, jnp.asarray(losses), normalization=norm)
    w_ref, _ = _x64(mgda.mgda_weighting, jnp.asarray((J / n[:, None]) @ (J / n[:, None]).T))
    np.testing.assert_allclose(w, w_ref, atol=1e-6)
  with pytest.raises(ValueError, match="losses"):
    mgda.mgda_weighting(jnp.eye(2), None, normalization="loss")
  tx = cg.mgda("loss")
  u, _ = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None), losses=jnp.asarray(losses))
  assert np.all(np.isfinite(np.asarray(u["w"])))


@pytest.mark.parametrize("seed", range(4))
def test_cagrad_solves_its_ball_problem(seed):
  J = _random_J(seed)
  c = 0.5
  w, _ = _x64(cagrad.cagrad_weighting, J @ J.T, c, rescale=0)
  d = J.T @ w
  g0 = J.mean(0)
  x = cp.Variable(J.shape[1])
  t = cp.Variable()
  ref.solve_tight(cp.Problem(cp.Maximize(t), [J @ x >= t,
                                              cp.norm(x - g0) <= c * np.linalg.norm(g0)]))
  np.testing.assert_allclose(d, x.value, atol=1e-4 * np.linalg.norm(g0))


@pytest.mark.parametrize("seed", range(4))
def test_nash_and_fairgrad_fixed_points(seed):
  J = _random_J(seed, k=4, m=9)
  G = J @ J.T
  # The documented regularisation: G + RIDGE·‖G‖_F·I (a rank-deficient G has no solution).
  G_reg = G + bargaining.RIDGE * np.linalg.norm(G) * np.eye(4)
  alpha_nash, _ = _x64(bargaining.nash_mtl_weighting, G, max_norm=0.0)
  assert np.all(alpha_nash > 0)
  np.testing.assert_allclose(G_reg @ alpha_nash, 1.0 / alpha_nash, rtol=1e-8)
  np.testing.assert_allclose(G @ alpha_nash, 1.0 / alpha_nash, rtol=1e-3)
  for a in (1.0, 2.0, 4.0):
    w, _ = _x64(bargaining.fairgrad_weighting, G, a)
    np.testing.assert_allclose(G_reg @ w, w ** (-1.0 / a), rtol=1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_imtl_g_equal_projections(seed):
  J = _random_J(seed)
  w = _x64(projection.imtl_g_weighting, J @ J.T)
  d = J.T @ w
  proj = (J / np.linalg.norm(J, axis=1, keepdims=True)) @ d
  np.testing.assert_allclose(proj, proj[0], rtol=1e-8)
  assert w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_dual_cone_projections(seed):
  J = _random_J(seed)
  G = J @ J.T
  p_hat = np.asarray(_x64(dual_cone.regularized_gram, G))
  for name, fn in [("dualproj", dual_cone.dualproj_weighting), ("upgrad", dual_cone.upgrad_weighting)]:
    w, _ = _x64(fn, G)
    d = J.T @ w
    # In the dual cone up to the regularisation: KKT of min vᵀ(Ĝ + εI)v gives
    # (G v)_i ≥ −ε·trace(G)·v_i (torchjd's reg_eps, ε = 1e-4).
    assert np.all(J @ d >= -dual_cone.REG_EPS * np.trace(G) * np.abs(w) - 1e-9), name
  # DualProj against cvxpy: min vᵀP̂v s.t. v ≥ u, and complementarity.
  u = np.full(4, 0.25)
  v = cp.Variable(4)
  ref.solve_tight(cp.Problem(cp.Minimize(cp.quad_form(v, cp.psd_wrap(p_hat))), [v >= u]))
  w, _ = _x64(dual_cone.dualproj_weighting, G)
  np.testing.assert_allclose(w, v.value, atol=1e-6)
  grad = p_hat @ w
  assert np.all(np.abs(grad * (w - u)) <= 1e-8)


def test_aligned_mtl_whitens_and_config_equalises_cosines():
  J = _random_J(3, k=3, m=6)
  G = J @ J.T
  vals, vecs = np.linalg.eigh(G)
  B = np.sqrt(vals.min()) * vecs @ np.diag(vals ** -0.5) @ vecs.T
  aligned = B @ J           # the aligned task gradients (rows) are orthogonal with equal norms
  np.testing.assert_allclose(aligned @ aligned.T, vals.min() * np.eye(3), atol=1e-8)
  w = _x64(projection.aligned_mtl_weighting, G)
  np.testing.assert_allclose(w, B @ np.full(3, 1 / 3), atol=1e-8)
  c = _x64(projection.config_weighting, G)
  d = J.T @ c
  cos = (J @ d) / np.linalg.norm(J, axis=1) / np.linalg.norm(d)
  np.testing.assert_allclose(cos, cos[0], rtol=1e-8)
  assert cos[0] > 0
  assert np.linalg.norm(d) == pytest.approx(np.sum(J @ d) / np.linalg.norm(d), rel=1e-8)


def test_pcgrad_two_tasks_matches_the_projection_rule():
  J = np.array([[1.0, 0.0], [-1.0, 1.0]])
  tx = cg.pcgrad()
  u, _ = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  g1, g2 = J
  p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
  p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
  np.testing.assert_allclose(np.asarray(u["w"]), p1 + p2, atol=1e-6)
  assert p1 @ g2 >= -1e-12 and p2 @ g1 >= -1e-12       # no conflict remains


def test_random_methods_keep_their_key_in_the_state():
  g = {"w": jnp.asarray(_random_J(0), jnp.float32)}
  for name in ("rlw", "pcgrad"):
    tx = cg.methods()[name].factory(seed=3)
    s0 = tx.init(None)
    _, s1 = tx.update(g, s0)
    _, s2 = tx.update(g, s1)
    assert not np.array_equal(np.asarray(s1.key), np.asarray(s2.key))
    _, s1b = tx.update(g, s0)
    np.testing.assert_array_equal(np.asarray(s1.weights), np.asarray(s1b.weights))
  tx = cg.rlw(seed=1)
  _, s = tx.update(g, tx.init(None))
  assert np.all(np.asarray(s.weights) > 0) and float(jnp.sum(s.weights)) == pytest.approx(1.0)


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


@pytest.mark.parametrize("name", sorted(cg.methods()))
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


@pytest.mark.parametrize("name", sorted(cg.methods()))
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
  assert registry["mgda"].needs_losses and registry["nash_mtl"].stateful
  assert not registry["linear_scalarization"].gram_weighting
  assert registry["gsmgrad"].gram_weighting and registry["gsmgrad"].stateful
  assert registry["gsmgrad_fa"].needs_losses and not registry["gsmgrad_fa"].gram_weighting
  assert registry["rotograd"].gram_weighting and registry["rotograd"].stateful
  assert len(registry) == 31
  assert registry["famo"].loss_only and registry["rlw"].loss_only
  assert not registry["gradnorm"].loss_only and not registry["graddrop"].loss_only


def test_gradvac_two_tasks_matches_reference_formula_and_hits_the_target():
  J = np.array([[1.0, 0.2, 0.0], [-0.8, 1.0, 0.3]])
  tx = cg.gradvac(beta=0.5)
  u, state = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  g1, g2 = J
  out = []
  for gi, gj in ((g1, g2), (g2, g1)):           # LibMTL's loop, K = 2, targets start at 0
    rho = gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj) + 1e-8)
    w = np.linalg.norm(gi) * (0.0 - rho * 1.0) / (np.linalg.norm(gj) * 1.0 + 1e-8)
    new = gi + w * gj if rho < 0 else gi
    out.append(new)
    assert abs(new @ gj) <= 1e-6 * np.linalg.norm(new) * np.linalg.norm(gj)  # cosine → target 0
  np.testing.assert_allclose(np.asarray(u["w"]), out[0] + out[1], atol=1e-5)
  rho = g1 @ g2 / np.linalg.norm(g1) / np.linalg.norm(g2)
  np.testing.assert_allclose(np.asarray(state.targets), [[0, 0.5 * rho], [0.5 * rho, 0]], atol=1e-6)


def test_graddrop_keeps_agreeing_coordinates_and_one_sign_elsewhere():
  J = np.array([[1.0, 2.0, -1.0, 0.5], [3.0, -2.0, -4.0, -0.5]])
  tx = cg.graddrop(seed=0)
  u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  u = np.asarray(u["w"])
  assert u[0] == pytest.approx(4.0) and u[2] == pytest.approx(-5.0)  # signs agree: kept
  for j in (1, 3):                                                    # mixed: one sign survives
    assert u[j] == pytest.approx(J[J[:, j] > 0, j].sum()) or u[j] == pytest.approx(J[J[:, j] < 0, j].sum())
  assert np.all((np.asarray(state.weights) > 0) & (np.asarray(state.weights) <= 1))


def _numpy_moco(Js, losses, beta=0.5, bs=0.5, gamma=0.1, gs=0.5):
  y = np.zeros_like(Js[0])
  lam = np.full(Js[0].shape[0], 1.0 / Js[0].shape[0])
  for t, (J, l) in enumerate(zip(Js, losses), start=1):
    g_hat = J / (np.linalg.norm(J, axis=1, keepdims=True) + 1e-8) * l[:, None]
    y = y - beta / t ** bs * (y - g_hat)
    lam = lam - gamma / t ** gs * (y @ y.T) @ lam
    lam = np.exp(lam) / np.exp(lam).sum()
  return y.T @ lam


def _numpy_db_mtl(Js, losses, beta=0.9):
  g_hat = np.zeros_like(Js[0])
  for J, l in zip(Js, losses):
    log_grad = J / (l[:, None] + 1e-8)
    g_hat = log_grad + beta * (g_hat - log_grad)
  n = np.linalg.norm(g_hat, axis=1)
  return (n.max() / (n + 1e-8)) @ g_hat


@pytest.mark.parametrize("name, reference", [("moco", _numpy_moco), ("db_mtl", _numpy_db_mtl)])
def test_buffer_methods_match_numpy_references(name, reference):
  rng = np.random.default_rng(7)
  Js = [rng.standard_normal((3, 2, 4)) for _ in range(3)]
  losses = [rng.uniform(0.5, 2.0, 3) for _ in range(3)]
  params = {"w": jnp.zeros((2, 4))}
  tx = cg.methods()[name].factory(num_tasks=3)
  state = tx.init(params)
  for J, l in zip(Js, losses):
    u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, state, params,
                         losses=jnp.asarray(l, jnp.float32))
  expected = reference([J.reshape(3, -1) for J in Js], losses)
  np.testing.assert_allclose(np.asarray(u["w"]).ravel(), expected, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="num_tasks"):
    cg.methods()[name].factory()


def test_gradnorm_equalises_weighted_gradient_norms():
  J = np.array([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0]])      # norms 1 and 4
  tx = cg.gradnorm(alpha=1.5, lr=0.05)
  state = tx.init(None)
  step = jax.jit(tx.update)
  g = {"w": jnp.asarray(J, jnp.float32)}
  _, state = step(g, state, losses=jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(np.asarray(state.weights), 1.0)   # first step: plain sum
  for _ in range(400):                                          # equal training rates: r = 1
    _, state = step(g, state, losses=jnp.array([1.0, 1.0]))
  w = np.asarray(state.weights)
  assert w.sum() == pytest.approx(2.0, rel=1e-5)                # K·softmax
  assert w[0] * 1.0 == pytest.approx(w[1] * 4.0, rel=0.1)


def test_sdmgrad_inner_problem_and_cross_batch_gram():
  J = _random_J(2, k=3, m=6)
  lam = 0.3
  tx = cg.sdmgrad(lamda=lam, lr=0.05, niter=3000)
  u, state = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  M = J @ J.T
  M = M / np.mean(np.sqrt(np.diag(M) + 1e-4)) ** 2
  b = M.mean(1)
  w = cp.Variable(3, nonneg=True)
  ref.solve_tight(cp.Problem(cp.Minimize(0.5 * cp.quad_form(w, cp.psd_wrap(M)) + lam * b @ w),
                             [cp.sum(w) == 1]))
  np.testing.assert_allclose(np.asarray(state.simplex_weights), w.value, atol=2e-3)
  np.testing.assert_allclose(np.asarray(u["w"]), J.T @ ((w.value + lam / 3) / (1 + lam)),
                             atol=1e-2)
  other = {"w": jnp.asarray(_random_J(9, k=3, m=6), jnp.float32)}
  _, cross = jax.jit(tx.update)({"w": jnp.asarray(J, jnp.float32)}, tx.init(None),
                                weight_grads=(other, other))
  assert not np.allclose(np.asarray(cross.simplex_weights), np.asarray(state.simplex_weights))
