"""Degenerate inputs: each Gram/Jacobian method's update has the value its definition gives.

``_common.check_degenerate_inputs`` only asks for finite updates. Here every case is
checked against an independent value derived from the method's docstring formula:
K = 1 (g or its known multiple), opposite gradients (g, −g), a duplicated task,
K > m and rank-deficient J (the defining optimality / fixed-point property), and a
1e±15 rescaling in float64 (the update scales by s^degree, direction unchanged).
Tolerances are relative to the largest ‖g_i‖; the observed errors are noted.

The sweep over all methods is ``-m slow``; the default run keeps one case per check.
Each (method, options, K) compiles once: a jitted, vmapped update on a batch of
Jacobians, each with a fresh state.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg

EPS32 = float(np.finfo(np.float32).eps)
CAGRAD_C = 0.4        # cagrad's default c
FAIRGRAD_ALPHA = 2.0  # fairgrad's default α

G_SINGLE = np.array([1.0, -2.0, 3.0])
TASK_A = np.array([1.0, 0.0, 2.0])
TASK_B = np.array([-1.0, 1.0, 0.0])
OPPOSITE = np.array([[1.0, 2.0, 0.5], [-1.0, -2.0, -0.5]])
DEDUPLICATED = np.stack([TASK_A, TASK_B])
DUPLICATED = np.stack([TASK_A, TASK_A, TASK_B])


def _k_gt_m_cases():
  """K > m and rank-deficient Jacobians: two with a common descent direction (so that
  Nash-MTL's and FairGrad's conditions have a finite solution), one with 0 inside the
  convex hull, and one balanced (Σ g_i = 0, so g0 = 0 as well)."""
  rng = np.random.default_rng(7)
  shifted = rng.standard_normal((5, 3)) + np.array([2.5, 0.0, 0.0])       # K = 5 > m = 3
  x = rng.standard_normal((4, 3))
  zero_in_hull = np.vstack([x, -rng.uniform(0.5, 1.5, 4) @ x])              # 0 = Σ c_i g_i
  balanced = np.vstack([x, -x.sum(0)])
  mix = np.column_stack([rng.uniform(1.0, 2.0, 4), rng.standard_normal(4)])
  rank_two = mix @ rng.standard_normal((2, 5))                              # 4×5, rank 2
  return {"k5_m3": shifted, "k5_m3_zero_in_hull": zero_in_hull, "k5_m3_balanced": balanced,
          "rank2_k4_m5": rank_two}


K_GT_M = _k_gt_m_cases()
SCALE_J = np.array([[1.0, 0.5, -0.3, 0.2], [-0.6, 1.2, 0.4, -0.1], [0.3, -0.4, 1.1, 0.5]])


def slow(*args):
  """A pytest.param run only with ``-m slow``."""
  return pytest.param(*args, marks=pytest.mark.slow)


@functools.cache
def _batched_update(name, options, k):
  """The method's update, jitted and vmapped over a batch of K×m Jacobians (fresh state each)."""
  tx = cg.methods()[name].factory(num_tasks=k, **dict(options))

  def one(J):
    params = {"w": jnp.zeros(J.shape[1:], J.dtype)}
    return tx.update({"w": J}, tx.init(params), params)

  return jax.jit(jax.vmap(one))


def run(name, Js, x64=False, **options):
  """Updates (n, m) and states (numpy, leading batch axis) of ``name`` on the Jacobians Js.

  float32 by default (the Jacobians are rounded first; the returned ``Js`` are those
  rounded values in float64, for the references); float64 with ``x64``.
  """
  dtype = np.float64 if x64 else np.float32
  Js = np.stack([np.asarray(J, dtype) for J in Js])
  fn = _batched_update(name, tuple(sorted(options.items())), Js.shape[1])
  with jax.enable_x64(x64):
    u, state = fn(jnp.asarray(Js))
    u, state = jax.tree_util.tree_map(np.asarray, (u["w"], state))
  return u.astype(np.float64), state, Js.astype(np.float64)


def assert_small(err, tol, what):
  """err ≤ tol (every value check ends here)."""
  assert err <= tol, f"{what} (error {err:.2e} > {tol:.0e})"


def assert_close(d, expected, J, rtol, what=""):
  """‖d − expected‖ ≤ rtol·max_i ‖g_i‖."""
  scale = np.max(np.linalg.norm(J, axis=1))
  assert_small(np.linalg.norm(d - expected) / scale, rtol,
               f"{what}: got {d}, expected {expected}")


# Independent references, in float64 numpy, from each method's defining formula.


def unit_rows(J):
  """The rows g_i/‖g_i‖."""
  return J / np.linalg.norm(J, axis=1, keepdims=True)


def project_on_dual_cone(J, x):
  """π_C(x) for C = {y : Jy ≥ 0}, by enumerating the active sets S.

  The projection is x − P_S x for its active set S (P_S the projector onto span{g_i, i∈S},
  by KKT), and it is the feasible candidate nearest to x; every candidate is in C.
  """
  best = None
  for size in range(len(J) + 1):
    for active in itertools.combinations(range(len(J)), size):
      y = x.copy()
      if active:
        rows = J[list(active)]
        y = x - rows.T @ np.linalg.lstsq(rows.T, x, rcond=1e-10)[0]
      feasible = np.all(J @ y >= -1e-9 * np.linalg.norm(J) * np.linalg.norm(x))
      if feasible and (best is None or np.linalg.norm(y - x) < np.linalg.norm(best - x) - 1e-12):
        best = y
  return best


def upgrad_reference(J):
  """UPGrad's definition: the mean of the task gradients' projections onto the dual cone."""
  return np.mean([project_on_dual_cone(J, g) for g in J], axis=0)


def dualproj_reference(J):
  """DualProj's definition: the mean gradient projected onto the dual cone."""
  return project_on_dual_cone(J, J.mean(0))


def check_dual_cone_method(name, J, d):
  """UPGrad / DualProj: d is the definition's dual-cone projection(s), to 1e-3·max‖g_i‖.

  Float32 QPs stop at a relative gap of 1e-6, i.e. up to ~1e-3 in d, and reg_eps = 1e-4
  moves d by O(1e-4); observed ≤ 2.9e-4 (DualProj, duplicated task).
  """
  reference = upgrad_reference if name == "upgrad" else dualproj_reference
  assert_close(d, reference(J), J, 1e-3, name)


def imtl_g_reference(J, rcond=1e-5):
  """IMTL-G: d = Jᵀw, w = G⁺s/1ᵀG⁺s with s_i = ‖g_i‖, i.e. d = J⁺s/⟨J⁺1, J⁺s⟩ (G⁺ = J⁺ᵀJ⁺).

  J⁺s is the least-squares x with equal unit projections ⟨g_i/‖g_i‖, x⟩ = 1, from the SVD
  of J (singular values below rcond·max are float32 rounding of an exactly rank-deficient J).
  """
  s = np.linalg.norm(J, axis=1)
  x_s = np.linalg.lstsq(J, s, rcond=rcond)[0]
  x_1 = np.linalg.lstsq(J, np.ones(len(J)), rcond=rcond)[0]
  return x_s / np.dot(x_1, x_s)


def config_reference(J, rcond=1e-5):
  """ConFIG: x = U⁺1 (U the unit rows, least squares), d = (Σ_i ⟨g_i, x̂⟩) x̂ (0 if x = 0)."""
  x = np.linalg.lstsq(unit_rows(J), np.ones(len(J)), rcond=rcond)[0]
  if np.linalg.norm(x) < 1e-9:
    return np.zeros(J.shape[1])
  x_hat = x / np.linalg.norm(x)
  return np.sum(J @ x_hat) * x_hat


def aligned_mtl_reference(J):
  """Aligned-MTL: d = Jᵀ σ (G^½)⁺ p = σ V Uᵀ p from the thin SVD J = U S Vᵀ (kept S² above
  max(S²)·K·ε_float32), σ the smallest kept singular value (scale_mode "min"), p = 1/K."""
  u, s, vt = np.linalg.svd(J, full_matrices=False)
  keep = s ** 2 > s.max() ** 2 * len(J) * EPS32
  p = np.full(len(J), 1.0 / len(J))
  return s[keep].min() * vt[keep].T @ (u[:, keep].T @ p)


def pcgrad_pair_projections(a, b):
  """a' = a − min(⟨a, b⟩, 0)/‖b‖² b and b' likewise: PCGrad's projected pair."""
  return (a - min(a @ b, 0.0) / (b @ b) * b, b - min(a @ b, 0.0) / (a @ a) * a)


def krum_reference(J):
  """Krum (f = 0): the row whose K − 2 nearest other rows are closest (first on ties)."""
  dist = np.linalg.norm(J[:, None] - J[None], axis=-1)
  n = min(max(len(J) - 2, 0), len(J) - 1)
  scores = np.sort(dist, axis=1)[:, 1:1 + n].sum(1)
  return J[np.argmin(scores)]


def trimmed_mean_reference(J, trim=1):
  """Per coordinate, the mean of the K − 2t middle values, t = min(1, ⌊(K − 1)/2⌋)."""
  t = min(trim, (len(J) - 1) // 2)
  return np.sort(J, axis=0)[t:len(J) - t].mean(0)


def check_mgda_kkt(J, w, d, tol):
  """w on the simplex, d = Jᵀw, and ⟨g_i, d⟩ ≥ ‖d‖² (the min-norm point's KKT conditions)."""
  scale = np.max(np.sum(J * J, axis=1))
  assert_small(max(-w.min(), abs(w.sum() - 1.0)), tol, f"mgda: weights {w} not on the simplex")
  assert_close(d, J.T @ w, J, tol, "mgda: d = Jᵀw")
  assert_small(max(d @ d - (J @ d).min(), 0.0) / scale, tol,
               f"mgda: KKT ⟨g_i, d⟩ = {J @ d} ≥ ‖d‖² = {d @ d}")


def check_cagrad_certificate(J, w_star, d, tol, c=CAGRAD_C):
  """d̃ = d·(1 + c²) is on the sphere ‖d̃ − g0‖ = c‖g0‖, and min_i ⟨g_i, d̃⟩ reaches the dual
  bound F(w*) = ⟨g_w*, g0⟩ + c‖g0‖‖g_w*‖ (any w* ∈ Δ bounds max_d min_i ⟨g_i, d⟩ above).

  The 1e-8 regularisers (in units of max_i ‖g_i‖²) move both by ≤ 1e-4·c·max_i ‖g_i‖.
  """
  norm = np.max(np.linalg.norm(J, axis=1))
  d_tilde = d * (1.0 + c * c)                     # undo the default rescale = 1
  g0 = J.mean(0)
  assert_small(max(-w_star.min(), abs(w_star.sum() - 1.0)), tol,
               f"cagrad: w* = {w_star} not on the simplex")
  radius = np.linalg.norm(d_tilde - g0)
  assert_small(abs(radius - c * np.linalg.norm(g0)) / norm, tol,
               f"cagrad: ‖d̃ − g0‖ = {radius}, c‖g0‖ = {c * np.linalg.norm(g0)}")
  g_w = J.T @ w_star
  dual_bound = g_w @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(g_w)
  assert_small(max(dual_bound - np.min(J @ d_tilde), 0.0) / norm ** 2, tol,
               f"cagrad: min_i ⟨g_i, d̃⟩ = {np.min(J @ d_tilde)} below F(w*) = {dual_bound}")


def check_power_condition(J, w, alpha, rtol):
  """w > 0 and G w = w^(−1/α) (Nash-MTL: α = 1; FairGrad), relative to w^(−1/α)."""
  assert np.all(w > 0), w
  target = w ** (-1.0 / alpha)
  assert_small(np.max(np.abs((J @ J.T) @ w - target) / target), rtol,
               f"Gw = {(J @ J.T) @ w}, w^(-1/α) = {target}")


# K = 1: the update is g itself, or the multiple the method's formula gives.

SINGLE_TASK_MULTIPLE = {
    # Gram/Jacobian methods whose K = 1 answer is g: MGDA (Δ = {1}), UPGrad and DualProj
    # (π_C(g) = g for C = {x : ⟨g, x⟩ ≥ 0}), IMTL-G (w = 1), Aligned-MTL (B = σλ^(−½) = 1),
    # ConFIG (x̂ = ĝ, length ⟨g, ĝ⟩ = ‖g‖), PCGrad and GradVac (no other task), Krum (the
    # only row), trimmed mean (t clipped to 0), ConicGrad (d̂ = ĝ, length ‖g0‖ = ‖g‖).
    **{name: lambda g: 1.0 for name in ("mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl",
                                        "config", "pcgrad", "gradvac", "krum", "trimmed_mean",
                                        "conicgrad")},
    # CAGrad: g0 = g_w* = g, d = (g0 + c‖g0‖ g/‖g‖)/(1 + c²) = (1 + c)/(1 + c²)·g.
    "cagrad": lambda g: (1.0 + CAGRAD_C) / (1.0 + CAGRAD_C ** 2),
    # Nash-MTL: ‖g‖²α = 1/α, α = 1/‖g‖, so d = ĝ (‖d‖ = 1 is not above max_norm = 1).
    "nash_mtl": lambda g: 1.0 / np.linalg.norm(g),
    # FairGrad: ‖g‖² w = w^(−1/α), w = ‖g‖^(−2α/(α+1)) = ‖g‖^(−4/3) at α = 2.
    "fairgrad": lambda g: np.linalg.norm(g) ** (-2.0 * FAIRGRAD_ALPHA / (FAIRGRAD_ALPHA + 1.0)),
}
SINGLE_TASK_DEFAULT = ("cagrad", "nash_mtl", "fairgrad")


@pytest.mark.parametrize("name", [n if n in SINGLE_TASK_DEFAULT else slow(n)
                                  for n in SINGLE_TASK_MULTIPLE])
def test_single_task_gives_its_known_multiple_of_g(name):
  """K = 1: the update is the method's multiple of g (observed error ≤ 1e-7; the ridges
  1e-8 of CAGrad and 1e-6 of Nash-MTL/FairGrad move it by ≤ 7e-7)."""
  (d,), _, (J,) = run(name, [G_SINGLE[None]])
  assert_close(d, SINGLE_TASK_MULTIPLE[name](J[0]) * J[0], J, 2e-6, name)


# Opposite gradients (g, −g).

OPPOSITE_GIVES_ZERO = (
    "mgda",          # 0 = (g + (−g))/2 is in the convex hull
    "cagrad",        # g0 = 0, so the ball ‖d − g0‖ ≤ c‖g0‖ is {0}
    "upgrad",        # C = g^⊥, π_C(±g) = 0
    "dualproj",      # the mean is 0
    "imtl_g",        # Σw = 1 and ⟨d, ĝ⟩ = ⟨d, −ĝ⟩ force w_1 = w_2 = ½
    "aligned_mtl",   # G's range is (1, −1): B p = 0 for p = (½, ½)
    "config",        # U⁺(1, 1) = 0: no x has ⟨ĝ, x⟩ = ⟨−ĝ, x⟩ = 1; least squares gives 0
    "nash_mtl",      # Gα = 1/α has no solution; the ridge's symmetric α_1 = α_2 gives d = 0
    "fairgrad",      # likewise
    "pcgrad",        # g' = g − ⟨g, −g⟩/‖g‖²(−g) = 0 for both tasks
    "gradvac",       # ρ = −1 < ρ̂ = 0: the step sets the cosine to 0, i.e. PCGrad's 0
    "trimmed_mean",  # K = 2 clips t to 0: the mean, 0
    "conicgrad",     # the update's length is ‖g0‖ = 0
)


@pytest.mark.parametrize("name", [n if n == "mgda" else slow(n)
                                  for n in OPPOSITE_GIVES_ZERO + ("krum",)])
def test_opposite_gradients(name):
  """(g, −g): 0 for the methods whose definition gives 0 (observed ≤ 1e-7·‖g‖), and Krum
  picks g (K = 2 < f + 3 scores every row 0; ties go to the first row)."""
  (d,), _, (J,) = run(name, [OPPOSITE])
  expected = J[0] if name == "krum" else np.zeros(J.shape[1])
  assert_close(d, expected, J, 1e-5, name)


# A duplicated task: J = (a, a, b) against (a, b).


def _duplicated_expectations(name, d_dup, d_dedup, state_dup, J_dup, J_dedup):
  """Checks the duplicated case of ``name``; returns False if it has no check here."""
  a, b = J_dedup
  if name in ("mgda", "imtl_g"):
    # MGDA: the convex hull of {a, a, b} is that of {a, b}, so its min-norm point stays;
    # IMTL-G: the affine hull and the equal-projection conditions stay, so d stays.
    assert_close(d_dup, d_dedup, J_dup, 1e-5, f"{name}: duplicated vs deduplicated")
    if name == "imtl_g":
      proj = unit_rows(J_dup) @ d_dup
      assert_small(np.ptp(proj) / np.abs(proj).max(), 1e-5, f"imtl_g: unequal projections {proj}")
      assert_close(d_dup, imtl_g_reference(J_dedup), J_dup, 1e-5, "imtl_g vs reference")
    else:
      t = np.clip((b - a) @ b / ((a - b) @ (a - b)), 0.0, 1.0)
      assert_close(d_dup, t * a + (1 - t) * b, J_dup, 1e-5, "mgda vs min-norm of [a, b]")
  elif name == "config":
    # x = U⁺1 stays (the copy repeats a satisfied equation); the length Σ_i ⟨g_i, x̂⟩ gains
    # ⟨a, x̂⟩: ‖d‖ grows by (2‖a‖ + ‖b‖)/(‖a‖ + ‖b‖), the direction stays.
    assert_close(d_dup, config_reference(J_dup), J_dup, 1e-5, name)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    assert_close(d_dup, d_dedup * (2 * na + nb) / (na + nb), J_dup, 1e-5, "config: ratio")
  elif name in ("upgrad", "dualproj"):
    # C is unchanged, the preference moves: d = (2π(a) + π(b))/3, resp. π((2a + b)/3).
    check_dual_cone_method(name, J_dup, d_dup)
  elif name == "aligned_mtl":
    assert_close(d_dup, aligned_mtl_reference(J_dup), J_dup, 1e-5, name)
  elif name == "cagrad":
    # g0 moves from (a + b)/2 to (2a + b)/3; d is still the ball's worst-task optimum.
    check_cagrad_certificate(J_dup, state_dup.previous.x, d_dup, 1e-5)
  elif name in ("nash_mtl", "fairgrad"):
    # The copies get equal weights (the solution is unique and symmetric), i.e. task a
    # counts twice in Σ log⟨g_i, d⟩ (resp. the α-fair utility).
    alpha = 1.0 if name == "nash_mtl" else FAIRGRAD_ALPHA
    w = state_dup.weights
    assert_small(abs(w[0] - w[1]) / w[0], 1e-5, f"{name}: copies weighted {w}")
    check_power_condition(J_dup, w, alpha, 1e-4)
  elif name in ("pcgrad", "gradvac"):
    # The copy never conflicts with a or a' (⟨a', a⟩ ≥ 0), and b' ⊥ a: d = 2a' + b'.
    # GradVac's first update (ρ̂ = 0) sets conflicting cosines to 0: PCGrad's projection.
    a_proj, b_proj = pcgrad_pair_projections(a, b)
    assert_close(d_dedup, a_proj + b_proj, J_dup, 1e-5, f"{name}: deduplicated")
    assert_close(d_dup, 2 * a_proj + b_proj, J_dup, 1e-5, f"{name}: duplicated")
  elif name in ("krum", "trimmed_mean"):
    # Krum: a and its copy are at distance 0; the coordinate-wise median of (a, a, b) is a.
    assert_close(d_dup, a, J_dup, 1e-6, name)
  else:
    return False
  return True


DUPLICATED_METHODS = ("mgda", "imtl_g", "config", "upgrad", "dualproj", "aligned_mtl", "cagrad",
                      "nash_mtl", "fairgrad", "pcgrad", "gradvac", "krum", "trimmed_mean")


@pytest.mark.parametrize("name", [n if n == "imtl_g" else slow(n) for n in DUPLICATED_METHODS])
def test_duplicated_task(name):
  """(a, a, b): invariant for MGDA and IMTL-G (equal projections kept), the derived change
  for the others (observed errors ≤ 7e-7 relative, Nash-MTL/FairGrad's Gw = w^(−1/α) ≤ 9e-6;
  UPGrad/DualProj ≤ 2.9e-4, see check_dual_cone_method)."""
  options = {"max_norm": 0.0} if name == "nash_mtl" else {}
  (d_dup,), state, (J_dup,) = run(name, [DUPLICATED], **options)
  (d_dedup,), _, (J_dedup,) = run(name, [DEDUPLICATED], **options)
  state_dup = jax.tree_util.tree_map(lambda x: x[0], state)
  assert _duplicated_expectations(name, d_dup, d_dedup, state_dup, J_dup, J_dedup)


# K > m and rank-deficient J: the defining optimality / fixed-point property. Observed
# errors: ≤ 1.4e-6 relative (IMTL-G 5.9e-6 with 0 in the hull; UPGrad/DualProj 2.8e-4 and
# Nash-MTL/FairGrad's relative Gw = w^(−1/α) residual 2.6e-6).

K_GT_M_CHECKS = {
    "mgda": lambda J, d, s: check_mgda_kkt(J, s.weights, d, 1e-5),
    "cagrad": lambda J, d, s: check_cagrad_certificate(J, s.previous.x, d, 1e-5),
    "upgrad": lambda J, d, s: check_dual_cone_method("upgrad", J, d),
    "dualproj": lambda J, d, s: check_dual_cone_method("dualproj", J, d),
    "imtl_g": lambda J, d, s: (assert_close(d, imtl_g_reference(J), J, 5e-5, "imtl_g"),
                               assert_small(abs(s.weights.sum() - 1.0), 1e-5, "imtl_g: Σw")),
    "aligned_mtl": lambda J, d, s: assert_close(d, aligned_mtl_reference(J), J, 1e-5, "aligned"),
    "config": lambda J, d, s: assert_close(d, config_reference(J), J, 1e-5, "config"),
    "krum": lambda J, d, s: assert_close(d, krum_reference(J), J, 1e-6, "krum"),
    "trimmed_mean": lambda J, d, s: assert_close(d, trimmed_mean_reference(J), J, 1e-6, "trim"),
    "nash_mtl": lambda J, d, s: check_power_condition(J, s.weights, 1.0, 1e-4),
    "fairgrad": lambda J, d, s: check_power_condition(J, s.weights, FAIRGRAD_ALPHA, 1e-4),
}
# Where a method's definition gives no finite or well-conditioned answer, the case is left
# out: Nash-MTL and FairGrad need a common descent direction (Gα = 1/α has no positive
# solution otherwise); IMTL-G's and CAGrad's balanced case (Σ_i g_i = 0) have tests of
# their own below.
K_GT_M_SKIPPED = {("nash_mtl", "k5_m3_zero_in_hull"), ("nash_mtl", "k5_m3_balanced"),
                  ("fairgrad", "k5_m3_zero_in_hull"), ("fairgrad", "k5_m3_balanced"),
                  ("imtl_g", "k5_m3_balanced"),   # test_imtl_g_balanced_gradients_give_no_update
                  ("cagrad", "k5_m3_balanced")}   # test_cagrad_balanced_gradients


def _k_gt_m_params():
  """(method, case) pairs of the K > m sweep, all slow."""
  for name in K_GT_M_CHECKS:
    for case in K_GT_M:
      if (name, case) in K_GT_M_SKIPPED:
        continue
      yield pytest.param(name, case, marks=pytest.mark.slow, id=f"{name}-{case}")


@pytest.mark.parametrize("name, case", list(_k_gt_m_params()))
def test_k_gt_m_and_rank_deficient(name, case):
  """K > m (5×3) and rank-2 J (4×5): MGDA's KKT, CAGrad's duality certificate, the dual-cone
  projections, IMTL-G's least-squares equal projections, Aligned-MTL's and ConFIG's SVD
  forms, the power condition, Krum and trimmed mean by their definitions."""
  options = {"max_norm": 0.0} if name == "nash_mtl" else {}
  (d,), state, (J,) = run(name, [K_GT_M[case]], **options)
  K_GT_M_CHECKS[name](J, d, jax.tree_util.tree_map(lambda x: x[0], state))


def _balanced_jacobians(n=8, k=5, m=3):
  """n K×m Jacobians with Σ_i g_i = 0: g0 = 0 and 0 inside the convex hull."""
  out = []
  for seed in range(n):
    x = np.random.default_rng(seed).standard_normal((k - 1, m))
    out.append(np.vstack([x, -x.sum(0)]))
  return out


def _graded_jacobian(seed, k, m, smallest):
  """K random directions with norms from 1 down to ``smallest`` (geometric)."""
  J = np.random.default_rng(seed).standard_normal((k, m))
  return J / np.linalg.norm(J, axis=1, keepdims=True) * np.geomspace(1.0, smallest, k)[:, None]


@pytest.mark.slow   # K = 40, m = 2000 in float32 and float64
def test_imtl_g_keeps_its_update_for_graded_gradient_norms():
  """K = 40 gradients with norms from 1 to 2e-3 (cond(G) ≈ 1e6): 1ᵀG⁺s is of the order of
  Σ|v|, so the float32 update is not zeroed and points where the float64 one does
  (observed cos ≥ 0.976, norm ratio 1.05–1.26; a rounding bound K·ε·‖G⁺‖·Σ|v| zeroed it)."""
  Js = [_graded_jacobian(seed, 40, 2000, 2e-3) for seed in range(4)]
  d32, _, J32 = run("imtl_g", Js)
  d64, _, _ = run("imtl_g", J32, x64=True)
  for a, b in zip(d32, d64):
    assert 0.5 <= np.linalg.norm(a) / np.linalg.norm(b) <= 2.0
    assert a @ b >= 0.95 * np.linalg.norm(a) * np.linalg.norm(b)


def test_cagrad_float32_resolves_a_tiny_task_that_w_sits_on():
  """g_2 = a·(cos 120°, sin 120°) with a = 3e-4, 1e-4: w* sits on the small task, whose
  ‖g_w*‖ float32 resolves; the update matches the definition to 1e-5 (observed 7e-8; a
  floor relative to max_i ‖g_i‖ instead of Σ_i w_i ‖g_i‖ moved it by 18–36 %). The
  reference minimises CAGrad's dual over w = (t, 1 − t) in float64 with its regularisers."""
  import scipy.optimize
  Js = [np.array([[1.0, 0.0], [a * np.cos(2 * np.pi / 3), a * np.sin(2 * np.pi / 3)]])
        for a in (3e-4, 1e-4)]
  ds, _, J32 = run("cagrad", Js)
  c = CAGRAD_C
  for J, d in zip(J32, ds):
    G, b = J @ J.T, np.full(2, 0.5)                 # max_i ‖g_i‖ = 1: G is normalised
    phi = c * np.sqrt(b @ G @ b + 1e-8) + 1e-8
    dual = lambda t: (np.array([t, 1 - t]) @ G @ b
                      + phi * np.sqrt(np.array([t, 1 - t]) @ G @ np.array([t, 1 - t]) + 1e-8))
    t = scipy.optimize.minimize_scalar(dual, bounds=(0.0, 1.0), method="bounded",
                                       options={"xatol": 1e-13}).x
    w = np.array([t, 1 - t])
    expected = J.T @ (b + phi / (np.linalg.norm(J.T @ w) + 1e-8) * w) / (1 + c * c)
    assert np.linalg.norm(d - expected) <= 1e-5 * np.linalg.norm(expected)


@pytest.mark.parametrize("x64", [slow(True), False])
def test_imtl_g_balanced_gradients_give_no_update(x64):
  """Σ g_i = 0 (K = 5 > m = 3): 1 spans G's null space, so 1ᵀG⁺s = 0 and no weights
  summing to 1 give equal projections; the update is zero, not a division by rounding
  noise (which made it 10³–10⁶·max‖g_i‖ in float32)."""
  ds, _, Js = run("imtl_g", _balanced_jacobians(), x64=x64)
  for J, d in zip(Js, ds):
    assert_close(d, np.zeros_like(d), J, 1e-6, "imtl_g, Σ g_i = 0")


@pytest.mark.parametrize("x64", [slow(True), False])
def test_cagrad_balanced_gradients(x64):
  """Σ g_i = 0 (K = 5 > m = 3): the ball around g0 = 0 has radius c·sqrt(1e-8)·max‖g_i‖
  (CAGrad's regularisers), so ‖d‖ ≤ 4e-5·max‖g_i‖ and the certificate holds to 1e-4
  (float64: observed ≤ 1e-5). In float32 ‖g_w*‖ is rounding noise here; the update must
  still stay in the ball (it left it by tenths of max‖g_i‖ when divided by that noise)."""
  ds, states, Js = run("cagrad", _balanced_jacobians(), x64=x64)
  for i, (J, d) in enumerate(zip(Js, ds)):
    check_cagrad_certificate(J, states.previous.x[i], d, 1e-4)


# Scale: all gradients × 1e±15 in float64.

SCALE_DEGREE = {
    # d(sJ) = s^degree · d(J). Degree 1: the weights depend on G only through the
    # normalised Gram matrix or cosines (MGDA, CAGrad, IMTL-G, ConFIG, PCGrad, ConicGrad),
    # are scale-free (Aligned-MTL: σλ^(−½)), or the update is a selection / order statistic
    # (Krum, trimmed mean). UPGrad/DualProj need norm_eps = 0 and GradVac eps = 0 (see
    # test_documented_thresholds_at_tiny_scale for their defaults).
    **{name: ({}, 1.0) for name in ("mgda", "cagrad", "imtl_g", "aligned_mtl", "config",
                                    "pcgrad", "krum", "trimmed_mean", "conicgrad")},
    "upgrad": ({"norm_eps": 0.0}, 1.0),
    "dualproj": ({"norm_eps": 0.0}, 1.0),
    "gradvac": ({"eps": 0.0}, 1.0),
    # Nash-MTL: Gα = 1/α with G → s²G gives α → α/s, d = Jᵀα unchanged (max_norm = 0).
    "nash_mtl": ({"max_norm": 0.0}, 0.0),
    # FairGrad: s²G w' = w'^(−1/α) with w' = s^γ w needs 2 + γ = −γ/α, γ = −2α/(α+1);
    # d = s·s^γ d = s^((1−α)/(1+α)) d, i.e. s^(−1/3) at α = 2.
    "fairgrad": ({}, (1.0 - FAIRGRAD_ALPHA) / (1.0 + FAIRGRAD_ALPHA)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCALE_DEGREE))
def test_scaling_all_gradients(name):
  """×1e15 and ×1e-15 (float64) scale the update by s^degree, on a generic and on the
  duplicated-task J (observed ≤ 2.2e-15 relative; 1e-9 leaves room for an iterative
  solver that stops one step earlier or later on the rescaled, last-bit-different G)."""
  options, degree = SCALE_DEGREE[name]
  scales = (1.0, 1e15, 1e-15)
  duplicated = np.pad(DUPLICATED, ((0, 0), (0, 1)))          # the shape of SCALE_J: one compile
  for J in (SCALE_J, duplicated):
    ds, _, _ = run(name, [s * J for s in scales], x64=True, **options)
    for s, d in zip(scales[1:], ds[1:]):
      assert_small(np.linalg.norm(d / s ** degree - ds[0]) / np.linalg.norm(ds[0]), 1e-9,
                   f"{name} × {s:g}: d(sJ)/s^{degree:g} = {d / s ** degree}, d(J) = {ds[0]}")


@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [
    # trace(G) < norm_eps = 1e-4: Ĝ = reg_eps·I, so v* = p_i e_i (resp. p): the mean.
    ("upgrad", lambda J: J.mean(0)),
    ("dualproj", lambda J: J.mean(0)),
    # ‖g_i‖‖g_j‖ ≈ 1e-30 ≪ eps = 1e-8: every cosine ≈ 0 and every step ≈ 0: the sum.
    ("gradvac", lambda J: J.sum(0)),
])
def test_documented_thresholds_at_tiny_scale(name, expected):
  """At 1e-15 the documented absolute thresholds take over (observed: UPGrad 0, GradVac 3e-16;
  DualProj 2.1e-7, its float64 QP with Ĝ = reg_eps·I stops at v = p + 1.5e-7)."""
  (d,), _, (J,) = run(name, [1e-15 * SCALE_J], x64=True)
  assert_close(d, expected(J), J, 1e-6, name)
