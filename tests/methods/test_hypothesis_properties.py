"""Hypothesis instances: each Gram method's defining property, and its invariances.

The per-method tests use 1–5 fixed seeds; here hypothesis draws the Jacobians J (K×m):
entries from bounded floats or a standard-normal draw from a drawn seed, then a conflict
shift J[1:] −= a·J[0], row scales 10^[−3, 3] and optionally a duplicated row. Every
property is recomputed in float64 numpy from the (float32-rounded) J, from the method's
docstring and paper, independent of the library's code path:

* MGDA: w ∈ Δ, d = Jᵀw and ⟨g_i, d⟩ ≥ ‖d‖² (the min-norm point's KKT conditions).
* UPGrad / DualProj: the KKT conditions of each QP v* = argmin_{v ≥ u} vᵀP̂v with
  P̂ = G/trace(G) + reg_eps·I (u = p_i e_i, resp. p), d = Jᵀ Σ v*, and the documented
  consequence ⟨g_j, d⟩ ≥ −reg_eps·trace(G)·w_j.
* IMTL-G (K ≤ m, full row rank): Σw = 1 and equal projections ⟨d, g_i/‖g_i‖⟩.
* CAGrad: d̃ = d·(1 + c²) on the sphere ‖d̃ − g0‖ = φ ≈ c‖g0‖, and min_i ⟨g_i, d̃⟩ reaching
  the dual bound F(w*) (strong duality) up to the documented 1e-8 regulariser's bound.
* Nash-MTL / FairGrad: w > 0 with (G + 1e-6·‖G‖_F·I) w = w^(−1/α), the documented
  regularised condition, which has a solution for every J (the unregularised one only
  with a common descent direction, and the ridge moves it by up to 1e-6·‖G‖_F/‖g_i‖²,
  i.e. O(1) for row scales 1e±3); d = Jᵀw.
* ConFIG: equal positive cosines (K ≤ m, full rank), least-squares normal equations of
  x = U⁺1 along d (K > m), and the length rule ‖d‖² = Σ_i ⟨g_i, d⟩.
* All: the update is unchanged by permuting the tasks and scales as s^degree under
  J → sJ (s a power of 2, so sJ is exact in float32).

Each (method, shape) compiles once: the batch [J, J permuted, sJ] goes through
``test_degenerate_values.run`` (jitted, vmapped update, fresh state each); all but ConFIG
run in float64 (see ``SPECS``). Errors are relative (see each ``_errors`` function); the
tolerances are about 10× the largest error seen over ~3500 examples per method (both
shapes), noted at ``SPECS``. The default run checks MGDA and ConFIG (15 examples); the
sweep over all methods and both shapes is ``-m slow`` (100 examples each).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from test_degenerate_values import CAGRAD_C, FAIRGRAD_ALPHA, run

REG_EPS = 1e-4     # UPGrad's and DualProj's reg_eps and norm_eps (torchjd's defaults)
NORM_EPS = 1e-4
RIDGE = 1e-6       # Nash-MTL's and FairGrad's documented ridge, relative to ‖G‖_F
SHAPES = {"k3_m6": (3, 6), "k5_m3": (5, 3)}


@st.composite
def jacobians(draw, k, m):
  """A K×m Jacobian: bounded floats or a seeded normal draw, a conflict shift, row scales
  10^[−3, 3], optionally a duplicated row; rounded to float32 (what the methods see)."""
  if draw(st.booleans(), label="bounded floats"):
    z = draw(hnp.arrays(np.float64, (k, m), elements=st.floats(-10, 10)), label="entries")
  else:
    seed = draw(st.integers(0, 2 ** 32 - 1), label="normal seed")
    z = np.random.default_rng(seed).standard_normal((k, m))
  norms = np.linalg.norm(z, axis=1, keepdims=True)
  hypothesis.assume(np.all(norms > 1e-3))
  z = z / norms
  z[1:] -= draw(st.floats(0.0, 1.5), label="conflict shift") * z[0]
  # No task gradient vanishes (zero gradients are test_degenerate_values' cases).
  hypothesis.assume(np.all(np.linalg.norm(z, axis=1) > 0.05))
  log_scales = draw(hnp.arrays(np.float64, k, elements=st.floats(-3, 3)), label="log10 scales")
  J = z * 10.0 ** log_scales[:, None]
  if draw(st.booleans(), label="duplicate a row"):
    i, j = draw(st.permutations(range(k)), label="copy row i to j")[:2]
    J[j] = J[i]
  J[np.abs(J) < 1e-12 * np.max(np.abs(J))] = 0.0   # no float32 subnormals (XLA flushes them)
  return np.asarray(J, np.float32).astype(np.float64)


def _max_norm(J):
  """max_i ‖g_i‖, the unit of every relative error."""
  return float(np.max(np.linalg.norm(J, axis=1)))


def _unique_rows(J):
  """J without its duplicated rows (they are exact copies in float32)."""
  return np.unique(J, axis=0)


def _min_singular_value_of_unit_rows(J):
  """σ_min of the distinct unit rows: how far U is from losing rank (duplicates dropped)."""
  U = _unique_rows(J)
  U = U / np.linalg.norm(U, axis=1, keepdims=True)
  return float(np.linalg.svd(U, compute_uv=False)[-1])


# The defining properties, as relative errors (0 when the property holds exactly).


def _combination_error(J, d, w):
  """‖d − Jᵀw‖ relative to ‖w‖₁·max_i ‖g_i‖: the update is the weights' combination."""
  return np.linalg.norm(d - J.T @ w) / (np.sum(np.abs(w)) * _max_norm(J))


def mgda_errors(J, d, state):
  """w ∈ Δ, d = Jᵀw, and ⟨g_i, d⟩ ≥ ‖d‖² relative to max_i ‖g_i‖² (with Σ w_i(⟨g_i, d⟩ −
  ‖d‖²) = 0, these are the KKT conditions of min_{w∈Δ} ‖Jᵀw‖²)."""
  w = state.weights
  return {"simplex": max(-w.min(), abs(w.sum() - 1.0)),
          "d = Jᵀw": _combination_error(J, d, w),
          "KKT ⟨g_i, d⟩ ≥ ‖d‖²": max(d @ d - np.min(J @ d), 0.0) / _max_norm(J) ** 2}


def _regularized_gram(J):
  """The docstrings' P̂ = G/trace(G) + reg_eps·I (reg_eps·I alone when trace(G) < norm_eps)."""
  G = J @ J.T
  trace = np.trace(G)
  return (G / trace if trace >= NORM_EPS else 0.0 * G) + REG_EPS * np.eye(len(J))


def _qp_kkt_errors(p_hat, u, v):
  """KKT of v* = argmin_{v ≥ u} vᵀP̂v: v − u ≥ 0, λ = P̂v ≥ 0, (v − u)_i λ_i = 0.

  v − u relative to max|v|, λ to ‖P̂‖·max|v|, their products to both."""
  r = np.max(np.abs(v))
  lam = p_hat @ v
  lam_scale = np.linalg.norm(p_hat, 2) * r
  return (max(-np.min(v - u), 0.0) / r, max(-np.min(lam), 0.0) / lam_scale,
          np.max(np.abs((v - u) * lam)) / (r * lam_scale))


def _dual_cone_errors(J, d, w, qps):
  """The KKT errors of the QPs (u, v*), d = Jᵀw, and ⟨g_j, d⟩ ≥ −reg_eps·trace(G)·w_j (the
  docstrings' "non-negative up to reg_eps": Gw = trace(G)(P̂w − reg_eps·w), P̂w ≥ 0)."""
  # Both sides must take the same branch of the norm_eps test on trace(G).
  hypothesis.assume(abs(np.trace(J @ J.T) / NORM_EPS - 1.0) > 1e-9)
  p_hat = _regularized_gram(J)
  kkt = np.max([_qp_kkt_errors(p_hat, u, v) for u, v in qps], axis=0)
  errors = {"QP v ≥ u": kkt[0], "QP P̂v ≥ 0": kkt[1], "QP complementarity": kkt[2],
            "d = Jᵀw": _combination_error(J, d, w)}
  trace = np.trace(J @ J.T)
  if trace >= NORM_EPS:   # below it P̂ = reg_eps·I: v* = u, d = Jᵀp, no such bound
    slack = J @ d + REG_EPS * trace * w
    errors["⟨g_j, d⟩ ≥ −reg_eps·tr(G)·w_j"] = max(-np.min(slack), 0.0) / (trace * np.sum(w))
  return errors


def upgrad_errors(J, d, state):
  """UPGrad: the K QPs with u = e_i/K (their solutions are the rows of state.previous.x)."""
  k = len(J)
  v = state.previous.x
  return _dual_cone_errors(J, d, state.weights, [(np.eye(k)[i] / k, v[i]) for i in range(k)]) | {
      "w = Σ_i v*_i": np.max(np.abs(state.weights - v.sum(0))) / np.max(np.abs(v))}


def dualproj_errors(J, d, state):
  """DualProj: the single QP with u = 1/K, v* = w."""
  k = len(J)
  return _dual_cone_errors(J, d, state.weights, [(np.full(k, 1.0 / k), state.weights)])


def imtl_g_errors(J, d, state):
  """Σw = 1, d = Jᵀw, and equal projections ⟨d, g_i/‖g_i‖⟩ (spread relative to the largest)."""
  w = state.weights
  proj = (J @ d) / np.linalg.norm(J, axis=1)
  return {"Σw = 1": abs(w.sum() - 1.0), "d = Jᵀw": _combination_error(J, d, w),
          "equal projections": np.ptp(proj) / np.max(np.abs(proj))}


def cagrad_errors(J, d, state, c=CAGRAD_C, eps=1e-8):
  """w* ∈ Δ; d̃ = (1 + c²)d = g0 + φ·g_w*/‖g_w*‖ on the sphere of radius φ = c(‖g0‖² +
  εM²)^½ + εM (the documented 1e-8 regularisers, M = max_i ‖g_i‖; φ ≈ c‖g0‖ to c·1e-4·M);
  and min_i ⟨g_i, d̃⟩ ≥ F(w*) = ⟨g_w*, g0⟩ + c‖g0‖‖g_w*‖ (strong duality: d̃ optimal).

  w* minimises the regularised F_ε (‖g_w‖ → (‖g_w‖² + εM²)^½), so its KKT conditions give
  F(w*) − min_i ⟨g_i, d̃⟩ ≤ φ(1 − r/s)(M + r) with r = ‖g_w*‖, s = (r² + εM²)^½: O(1)·φ when
  r ≲ 1e-4·M (a nearly Pareto-stationary ball). The certificate's error is measured beyond
  that bound; the radius is checked only for r ≥ 1e-4·M, where ‖g_w*‖ computed from G
  is accurate in float64 (its floor (K·ε)^½·M and rounding K·ε·M²/r² are far below)."""
  w_star = state.previous.x
  M = _max_norm(J)
  d_tilde = d * (1.0 + c * c)
  g0 = J.mean(0)
  g_w = J.T @ w_star
  r = np.linalg.norm(g_w)
  phi = c * np.sqrt(g0 @ g0 + eps * M * M) + eps * M
  regularizer_bound = phi * (1.0 - r / np.sqrt(r * r + eps * M * M)) * (M + r)
  dual_bound = g_w @ g0 + c * np.linalg.norm(g0) * r
  errors = {"w* ∈ Δ": max(-w_star.min(), abs(w_star.sum() - 1.0)),
            "min_i ⟨g_i, d̃⟩ ≥ F(w*)": max(dual_bound - np.min(J @ d_tilde) - regularizer_bound,
                                          0.0) / M ** 2}
  if r >= 1e-4 * M:   # φ/(r + 1e-8·M): the reference's divisor, in the normalised units
    errors["‖d̃ − g0‖ = φ"] = abs(np.linalg.norm(d_tilde - g0) - phi * r / (r + eps * M)) / M
  return errors


def _power_condition_errors(J, d, w, alpha):
  """w > 0, d = Jᵀw, and (G + RIDGE·‖G‖_F·I) w = w^(−1/α) relative to w^(−1/α)."""
  G = J @ J.T
  target = w ** (-1.0 / alpha) if np.all(w > 0) else np.full(len(w), np.nan)
  residual = (G + RIDGE * np.linalg.norm(G) * np.eye(len(w))) @ w - target
  return {"w > 0": 0.0 if np.all(w > 0) else np.inf,
          "d = Jᵀw": _combination_error(J, d, w),
          "(G + ridge)w = w^(−1/α)": np.max(np.abs(residual) / target)}


def nash_mtl_errors(J, d, state):
  """Nash-MTL (max_norm = 0): α > 0 with (G + ridge)α = 1/α."""
  return _power_condition_errors(J, d, state.weights, 1.0)


def fairgrad_errors(J, d, state):
  """FairGrad: w > 0 with (G + ridge)w = w^(−1/α), α = 2."""
  return _power_condition_errors(J, d, state.weights, FAIRGRAD_ALPHA)


def config_errors(J, d, state):
  """d ∝ x̂ with x = U⁺1: for K ≤ m (U of full row rank) Ux̂ is a positive multiple of 1,
  i.e. equal positive cosines; for K > m the least-squares normal equations Uᵀ(tUd̂ − 1) = 0
  at the best t. And the length ‖d‖ = Σ_i ⟨g_i, x̂⟩, i.e. ‖d‖² = Σ_i ⟨g_i, d⟩."""
  U = J / np.linalg.norm(J, axis=1, keepdims=True)
  d_hat = d / np.linalg.norm(d)
  errors = {"d = Jᵀw": _combination_error(J, d, state.weights),
            "‖d‖² = Σ⟨g_i, d⟩": abs(d @ d - np.sum(J @ d)) / (np.linalg.norm(d) * np.sum(
                np.linalg.norm(J, axis=1)))}
  cos = U @ d_hat
  if len(J) <= J.shape[1]:
    errors["equal positive cosines"] = np.ptp(cos) / cos.max() if cos.min() > 0 else np.inf
  else:
    t = np.sum(cos) / (cos @ cos)
    errors["normal equations"] = np.linalg.norm(U.T @ (t * cos - 1.0)) / (
        np.linalg.norm(U, 2) * np.sqrt(len(J)))
  return errors


def _least_squares_amplification(J):
  """1/σ_min² (≥ 1), σ_min of the distinct unit rows: least squares on U in float32 lose
  about ε/σ_min² (ConFIG's errors are divided by this factor before the tolerance applies)."""
  return 1.0 / _min_singular_value_of_unit_rows(J) ** 2


def _gram_amplification(J):
  """max(1, 1e6·ε·cond(G)) (float64, cond(G) = cond(J)², J's distinct rows): IMTL-G
  inverts G itself, so its errors grow as ε·cond(G) once that exceeds 1e-6 (errors are
  divided by this factor)."""
  sv = np.linalg.svd(_unique_rows(J), compute_uv=False)
  return max(1.0, 1e6 * np.finfo(np.float64).eps * (sv[0] / sv[-1]) ** 2)


@dataclasses.dataclass(frozen=True)
class Spec:
  """How one method is run and checked."""
  errors: Callable            # (J, d, state) -> {property: relative error}
  tolerances: dict            # error name -> tolerance (every error, the invariances too)
  degree: float               # d(sJ) = s^degree·d(J)
  options: tuple = ()         # factory options
  x64: bool = False
  wide_only: bool = False     # the property needs K ≤ m
  min_unit_sigma: float = 0.0  # assume σ_min(distinct unit rows) ≥ this
  amplification: Callable = lambda J: 1.0  # errors are divided by this (conditioning)


_DUAL_CONE_TOL = {
    "QP v ≥ u": 1e-12, "d = Jᵀw": 1e-12, "w = Σ_i v*_i": 1e-12,
    "⟨g_j, d⟩ ≥ −reg_eps·tr(G)·w_j": 1e-12,
    # The barrier stops at an absolute gap of 1e-10 in P̂'s units: a negative multiplier
    # at a nearly degenerate active constraint (seen 2.3e-5), and a relative
    # complementarity of 1.2e-6 when trace(G) < norm_eps makes P̂ = 1e-4·I.
    "QP P̂v ≥ 0": 2e-4, "QP complementarity": 1e-5,
    "permutation": 1e-8, "scale": 1e-10}

# Largest errors seen over ~3500 examples per method (two shapes, all float64 unless noted),
# and the tolerances (~10× margin). The barrier methods (MGDA, UPGrad, DualProj, CAGrad)
# run in float64: in float32 the Gram matrix resolves lengths only to (K·ε)^½·max‖g_i‖ ≈
# 1e-3 and the solver's gap 1e-6 allows KKT errors of its square root (MGDA: 9e-4 seen),
# and IMTL-G, Nash-MTL and FairGrad invert G, whose condition number with row scales
# 1e±3 exceeds 1/ε of float32 (residuals up to 0.16 seen in float32).
SPECS = {
    # KKT 2.2e-6 (the solver's f − f* ≤ 1e-10 allows √(2e-10) = 1.4e-5), simplex 5e-15,
    # permutation 4.4e-6 (two solves to that accuracy).
    "mgda": Spec(mgda_errors, {"simplex": 1e-12, "d = Jᵀw": 1e-12,
                               "KKT ⟨g_i, d⟩ ≥ ‖d‖²": 3e-5, "permutation": 5e-5,
                               "scale": 1e-10}, 1.0, x64=True),
    # Permutation 3.7e-10 (UPGrad), 1.9e-14 (DualProj); the rest at _DUAL_CONE_TOL.
    "upgrad": Spec(upgrad_errors, _DUAL_CONE_TOL, 1.0, x64=True),
    "dualproj": Spec(dualproj_errors, _DUAL_CONE_TOL, 1.0, x64=True),
    # σ_min of the unit rows ≥ 1e-2 and row scales 1e±3 leave cond(G) up to ~1e16; errors
    # divided by _gram_amplification: equal projections 3.1e-6, permutation 6.0e-10.
    "imtl_g": Spec(imtl_g_errors, {"Σw = 1": 1e-12, "d = Jᵀw": 1e-12,
                                   "equal projections": 3e-5, "permutation": 1e-8,
                                   "scale": 1e-10}, 1.0, x64=True, wide_only=True,
                   min_unit_sigma=1e-2, amplification=_gram_amplification),
    # Certificate beyond the regulariser's bound 0, radius 1.9e-11, permutation 8.4e-11.
    "cagrad": Spec(cagrad_errors, {"w* ∈ Δ": 1e-12, "min_i ⟨g_i, d̃⟩ ≥ F(w*)": 1e-9,
                                   "‖d̃ − g0‖ = φ": 1e-9, "permutation": 1e-8,
                                   "scale": 1e-10}, 1.0, x64=True),
    # Residual 7.6e-7 (Nash-MTL), 6.8e-6 (FairGrad); permutation 2.1e-6, 2.6e-6; scale
    # 1.7e-10 (FairGrad's s^(−1/3)).
    "nash_mtl": Spec(nash_mtl_errors, {"w > 0": 0.0, "d = Jᵀw": 1e-12,
                                       "(G + ridge)w = w^(−1/α)": 1e-5, "permutation": 3e-5,
                                       "scale": 1e-8}, 0.0, options=(("max_norm", 0.0),),
                     x64=True),
    "fairgrad": Spec(fairgrad_errors, {"w > 0": 0.0, "d = Jᵀw": 1e-12,
                                       "(G + ridge)w = w^(−1/α)": 1e-4, "permutation": 3e-5,
                                       "scale": 1e-8},
                     (1.0 - FAIRGRAD_ALPHA) / (1.0 + FAIRGRAD_ALPHA), x64=True),
    # float32 (it normalises the rows first, so row scales cost nothing); errors × σ_min²
    # (_least_squares_amplification): cosines 1.3e-6, normal equations 4.8e-7, length
    # 3.5e-7, d = Jᵀw 8.7e-8, permutation 1.6e-6 (K = 5 > m: float32 eigh rounding).
    "config": Spec(config_errors, {"d = Jᵀw": 1e-6, "equal positive cosines": 1e-5,
                                   "normal equations": 1e-5, "‖d‖² = Σ⟨g_i, d⟩": 5e-6,
                                   "permutation": 2e-5, "scale": 1e-6}, 1.0,
                   min_unit_sigma=1e-2, amplification=_least_squares_amplification),
}


def _assert_errors(name, shape, errors, tolerances):
  """Every error within its tolerance (the one place to hook when measuring errors)."""
  for what, err in errors.items():
    tol = tolerances[what]
    assert err <= tol, f"{name} {shape}: {what} (error {err:.2e} > {tol:.0e})"


def _same_side_of_norm_eps(J, s):
  """trace(G) and trace(s²G) on the same side of norm_eps (UPGrad/DualProj drop G's part
  below it, so homogeneity holds only within one side)."""
  trace = np.trace(J @ J.T)
  low, high = sorted((trace, s * s * trace))
  return low > 2 * NORM_EPS or high < 0.5 * NORM_EPS


def check_method(name, shape, data):
  """Draws J, a permutation and a scale; runs [J, J[perm], sJ] in one batch; checks."""
  spec = SPECS[name]
  k, m = SHAPES[shape]
  J = data.draw(jacobians(k, m), label="J")
  hypothesis.assume(_min_singular_value_of_unit_rows(J) >= spec.min_unit_sigma)
  perm = np.asarray(data.draw(st.permutations(range(k)), label="task permutation"))
  s = 2.0 ** data.draw(st.integers(-20, 20), label="log2 scale")
  ds, states, Js = run(name, [J, J[perm], s * J], x64=spec.x64, **dict(spec.options))
  np.testing.assert_array_equal(Js[0], J)
  state = jax.tree_util.tree_map(lambda x: x[0], states)
  errors = spec.errors(J, ds[0], state)
  # Permutation and scale: relative to ‖d‖ (plus max_i ‖g_i‖ for degree 1, where d may be 0).
  floor = _max_norm(J) if spec.degree == 1.0 else 0.0
  errors["permutation"] = np.linalg.norm(ds[1] - ds[0]) / (np.linalg.norm(ds[0]) + floor)
  if name not in ("upgrad", "dualproj") or _same_side_of_norm_eps(J, s):
    errors["scale"] = np.linalg.norm(ds[2] / s ** spec.degree - ds[0]) / (
        np.linalg.norm(ds[0]) + floor)
  amplification = spec.amplification(J)
  _assert_errors(name, shape, {what: err / amplification for what, err in errors.items()},
                 spec.tolerances)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(data=st.data())
def test_mgda_and_config_defining_properties(data):
  """MGDA's KKT conditions and ConFIG's equal cosines (K=3, m=6), with both invariances."""
  check_method("mgda", "k3_m6", data)
  check_method("config", "k3_m6", data)


def _slow_params():
  for name, spec in SPECS.items():
    for shape, (k, m) in SHAPES.items():
      if not (spec.wide_only and k > m):
        yield pytest.param(name, shape, marks=pytest.mark.slow, id=f"{name}-{shape}")


@pytest.mark.parametrize("name, shape", list(_slow_params()))
@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(data=st.data())
def test_defining_property_and_invariances(name, shape, data):
  """Each method's defining property on hypothesis Jacobians, plus permutation and scale."""
  check_method(name, shape, data)
