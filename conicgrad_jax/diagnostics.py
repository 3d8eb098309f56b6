"""Gradient-conflict diagnostics from the Gram matrix, and an opt-in wrapper that logs them.

Everything here is a function of the Gram matrix G = J Jᵀ of the shared
leaves and of the combination weights w, since for the update d = Σ_k w_k g_k

  ⟨g_i, g_j⟩ = G_ij,   ⟨g_i, d⟩ = (Gw)_i,   ‖d‖² = wᵀGw,   ⟨g0, d⟩ = 1ᵀGw / K,

with g0 = Σ_k g_k / K the mean gradient. So the diagnostics cost O(K³) on top
of G (an eigendecomposition for the condition number), nothing of order m.

* :func:`conflict_diagnostics` — the pure function, usable anywhere.
* :func:`with_diagnostics` — wraps any Gram method; its state carries the
  method's state and the last step's :class:`ConflictDiagnostics`. Off by
  default: methods not wrapped compute nothing extra.
* :func:`as_dict` — one step's diagnostics as a flat ``{name: float}`` for
  loggers (TensorBoard, W&B, CSV); :mod:`conicgrad_jax.dashboard` draws a history.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation


class ConflictDiagnostics(NamedTuple):
  """One step's gradient-conflict diagnostics (K tasks).

  Attributes:
    cosines: (K, K) cos(g_i, g_j) (0 where a gradient is 0; 1 on the diagonal
      of nonzero gradients).
    magnitude_similarity: (K, K) 2‖g_i‖‖g_j‖/(‖g_i‖² + ‖g_j‖²) ∈ [0, 1]
      (Yu et al. 2020; 1 for equal norms, 1 where both are 0).
    conflict_fraction: the fraction of the K(K−1)/2 task pairs with a negative
      cosine (0 when K = 1).
    grad_norms: (K,) ‖g_i‖.
    weights: (K,) the combination weights w.
    update_norm: ‖d‖ = (wᵀGw)^½.
    update_cosines: (K,) cos(d, g_i) = (Gw)_i/(‖g_i‖‖d‖): the angle of the
      update to each task gradient (negative: task i gets worse to first order).
    update_cosine_to_mean: cos(d, g0), the angle to the mean gradient.
    condition_number: λ_max(G)/λ_min(G), with λ_min floored at ε·λ_max
      (ε the dtype's machine epsilon), so it is finite: ≈1/ε means singular G
      (e.g. K > m, or parallel gradients). 1 for G = 0.
    losses: (K,) the task losses when given, else NaN (dropped by :func:`as_dict`).
  """
  cosines: jax.Array
  magnitude_similarity: jax.Array
  conflict_fraction: jax.Array
  grad_norms: jax.Array
  weights: jax.Array
  update_norm: jax.Array
  update_cosines: jax.Array
  update_cosine_to_mean: jax.Array
  condition_number: jax.Array
  losses: jax.Array


def empty_diagnostics(num_tasks: Optional[int], dtype=jnp.float32) -> ConflictDiagnostics:
  """NaN shaped for K tasks (K = 0 while unknown): the diagnostics before the first
  measured step (nothing measured yet, so no value a step could have given)."""
  k = num_tasks or 0
  nan = lambda *s: jnp.full(s, jnp.nan, dtype)
  return ConflictDiagnostics(nan(k, k), nan(k, k), nan(), nan(k), nan(k), nan(), nan(k),
                             nan(), nan(), nan(k))


def _safe_div(num, den):
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def conflict_diagnostics(gram: jax.Array, weights: Optional[jax.Array] = None,
                         losses: Optional[jax.Array] = None) -> ConflictDiagnostics:
  r"""Gradient-conflict diagnostics of one step from G (and w, and the losses).

  Args:
    gram: (K, K) Gram matrix of the task gradients (of the shared leaves:
      ``gram_matrix(task_grads, shared=...)``).
    weights: (K,) combination weights of the update d = Σ w_k g_k; the mean
      (1/K) when ``None``.
    losses: optional (K,) task losses, stored as they are.

  Returns:
    A :class:`ConflictDiagnostics` in G's solver dtype (at least float32); every
    field derived from G or w is NaN when either holds a NaN or an infinity.

  Example:
    >>> import jax.numpy as jnp
    >>> G = jnp.array([[1.0, -0.5], [-0.5, 4.0]])      # ‖g1‖ = 1, ‖g2‖ = 2, cos = −0.25
    >>> d = conflict_diagnostics(G, jnp.array([0.5, 0.5]))
    >>> round(float(d.cosines[0, 1]), 3), float(d.conflict_fraction)
    (-0.25, 1.0)
    >>> round(float(d.magnitude_similarity[0, 1]), 3)   # 2·1·2/(1 + 4)
    0.8
  """
  if jnp.ndim(gram) != 2 or jnp.shape(gram)[0] != jnp.shape(gram)[1]:
    raise ValueError(f"`gram` must be a square (K, K) matrix, got shape {jnp.shape(gram)}.")
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  gram = 0.5 * (gram + gram.T)
  k = gram.shape[0]
  if weights is None:
    weights = jnp.full((k,), 1.0 / k, dtype)
  weights = jnp.asarray(weights).astype(dtype)
  if weights.shape != (k,):
    raise ValueError(f"`weights` has shape {weights.shape}; expected ({k},) for this Gram matrix.")
  sq = jnp.maximum(jnp.diagonal(gram), 0.0)
  norms = jnp.sqrt(sq)
  outer = norms[:, None] * norms[None, :]
  cosines = jnp.clip(_safe_div(gram, outer), -1.0, 1.0)
  both_zero = (sq[:, None] + sq[None, :]) == 0
  # Clipped like the cosines: rounding can put 2ab/(a² + b²) a last bit above 1.
  magnitude = jnp.where(both_zero, 1.0, jnp.clip(
      _safe_div(2.0 * outer, sq[:, None] + sq[None, :]), 0.0, 1.0))
  pairs = k * (k - 1) // 2
  upper = jnp.triu(jnp.ones((k, k), bool), 1)
  conflicts = jnp.sum(jnp.where(upper, cosines < 0, False))
  conflict_fraction = (conflicts / pairs if pairs else jnp.zeros((), dtype)).astype(dtype)
  gw = _numeric.matvec(gram, weights)
  update_sq = jnp.maximum(jnp.dot(weights, gw, precision=_numeric.HIGHEST), 0.0)
  update_norm = jnp.sqrt(update_sq)
  update_cosines = jnp.clip(_safe_div(gw, norms * update_norm), -1.0, 1.0)
  mean_sq = jnp.maximum(jnp.sum(gram) / k ** 2, 0.0)
  to_mean = jnp.clip(_safe_div(jnp.sum(gw) / k, jnp.sqrt(mean_sq) * update_norm), -1.0, 1.0)
  eig = jnp.linalg.eigvalsh(gram)
  lmax = jnp.max(eig)
  floor = jnp.finfo(dtype).eps * lmax
  condition = jnp.where(lmax > 0, lmax / jnp.maximum(jnp.min(eig), floor), 1.0)
  if losses is None:
    losses = jnp.full((k,), jnp.nan, dtype)
  else:
    losses = jnp.asarray(losses).astype(dtype)
    if losses.shape != (k,):
      raise ValueError(f"`losses` has shape {losses.shape}; expected ({k},).")
  fields = [cosines, magnitude, conflict_fraction, norms, weights, update_norm,
            update_cosines, to_mean, condition.astype(dtype)]
  # Non-finite gradients or weights give no diagnostics (NaN), not the zeros and
  # ones the guarded divisions above would produce.
  finite = jnp.all(jnp.isfinite(gram)) & jnp.all(jnp.isfinite(weights))
  fields = [jnp.where(finite, f, jnp.nan) for f in fields]
  return ConflictDiagnostics(*fields, losses)


def as_dict(diagnostics: ConflictDiagnostics,
            task_names: Optional[Sequence[str]] = None) -> dict[str, float]:
  """One step's diagnostics as a flat ``{name: float}`` (host values), for loggers.

  Keys: ``conflict_fraction``, ``condition_number``, ``update_norm``,
  ``update_cos_mean``, and per task ``weight/<t>``, ``grad_norm/<t>``,
  ``update_cos/<t>``, ``loss/<t>`` (only when losses were given), per pair
  ``cos/<a>-<b>`` and ``gms/<a>-<b>`` (a before b). Tasks are named by
  ``task_names`` or their index.

  Example:
    >>> import jax.numpy as jnp
    >>> d = as_dict(conflict_diagnostics(jnp.eye(2)), ["seg", "depth"])
    >>> d["cos/seg-depth"], d["weight/seg"], "loss/seg" in d
    (0.0, 0.5, False)
  """
  d = jax.tree_util.tree_map(np.asarray, jax.device_get(diagnostics))
  k = d.weights.shape[0]
  names = list(task_names) if task_names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f"`task_names` has {len(names)} names for K = {k} tasks.")
  out = {"conflict_fraction": float(d.conflict_fraction),
         "condition_number": float(d.condition_number),
         "update_norm": float(d.update_norm),
         "update_cos_mean": float(d.update_cosine_to_mean)}
  for i, a in enumerate(names):
    out[f"weight/{a}"] = float(d.weights[i])
    out[f"grad_norm/{a}"] = float(d.grad_norms[i])
    out[f"update_cos/{a}"] = float(d.update_cosines[i])
    if np.isfinite(d.losses[i]):
      out[f"loss/{a}"] = float(d.losses[i])
  for i in range(k):
    for j in range(i + 1, k):
      out[f"cos/{names[i]}-{names[j]}"] = float(d.cosines[i, j])
      out[f"gms/{names[i]}-{names[j]}"] = float(d.magnitude_similarity[i, j])
  return out


class DiagnosticsState(NamedTuple):
  """State of :func:`with_diagnostics`: the wrapped method's state and the last diagnostics.

  ``weights`` and ``nonfinite_steps`` read through to the wrapped state, so
  code that logs ``state.weights`` works unchanged.
  """
  inner: Any
  diagnostics: ConflictDiagnostics

  @property
  def weights(self):
    return self.inner.weights

  @property
  def nonfinite_steps(self):
    return self.inner.nonfinite_steps


def with_diagnostics(method: optax.GradientTransformation, *,
                     shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
                     precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Wraps a Gram method so its state also holds the last step's :class:`ConflictDiagnostics`.

  The update is the wrapped method's, unchanged. After it, G is computed on
  the shared leaves with the method's ``precision`` and the diagnostics are
  taken from G, the method's new ``state.weights`` and ``losses=`` (if
  passed). Under ``jax.jit`` XLA merges this Gram contraction with the
  method's identical one, so the extra cost is O(K³), independent of the
  model size (checked in the tests on the compiled HLO; ConicGrad at K = 10,
  m = 10⁶ float32 on a 2-core CPU: 0.99× the unwrapped update's time,
  ``python -m benchmarks perf --parts diagnostics``). Around a method that
  forms no Gram matrix itself (:func:`~conicgrad_jax.mtac_fc`,
  :func:`~conicgrad_jax.graddrop`, :func:`~conicgrad_jax.trimmed_mean`, the
  loss weightings) the wrapper adds one O(K²m) pass over the shared leaves. A step the method skips
  (NaN/Inf gradients) keeps the previous diagnostics.

  Args:
    method: a Gram method of this library (its combination weights in
      ``state.weights``; for Jacobian methods such as ``graddrop`` or
      ``trimmed_mean`` the update-angle fields describe Σ_k w_k g_k, not their update).
    shared: the leaves that enter G; by default the ``shared`` the method
      was built with (see :func:`~conicgrad_jax.conicgrad`). One that
      differs from the method's is an error.
    num_tasks: K, to fix the diagnostics' shapes at ``init`` (needed in a
      ``lax.scan`` carry); else the first update fixes them.
    precision: the method's matmul precision (the same one lets XLA share G).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`DiagnosticsState`; ``update`` forwards every extra argument.

  Example:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = with_diagnostics(cg.mgda())
    >>> g = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> _, state = jax.jit(tx.update)(g, tx.init(None))
    >>> float(state.diagnostics.conflict_fraction)
    1.0
    >>> bool(jnp.all(state.diagnostics.update_cosines > 0))   # MGDA improves both tasks
    True
  """
  validation.check_precision(precision)
  validation.check_shared_spec(shared)
  validation.check_static_positive_int("num_tasks", num_tasks, allow_none=True)
  aggregator.check_method(method, "method")
  shared = aggregator.shared_option(method, shared)

  def init_fn(params):
    inner = method.init(params)
    aggregator.check_method_state(inner, "method")
    k_inner = inner.weights.shape[0]
    if num_tasks is not None and k_inner not in (0, num_tasks):
      raise ValueError(f"`num_tasks` is {num_tasks} but `method` was built for K = {k_inner}.")
    k = num_tasks if num_tasks is not None else (inner.weights.shape[0] or None)
    dtype = _numeric.solver_dtype(inner.weights.dtype)
    return DiagnosticsState(inner, empty_diagnostics(k, dtype))

  def update_fn(task_grads, state, params=None, **extra_args):
    aggregator.check_state_type(state, DiagnosticsState)
    aggregator.check_shared_agrees(method, "method", shared, "with_diagnostics", task_grads)
    updates, inner = method.update(task_grads, state.inner, params, **extra_args)
    gram = linalg.gram_matrix(task_grads, precision, shared=shared)
    new = conflict_diagnostics(gram, inner.weights, extra_args.get("losses"))
    old = state.diagnostics
    if old.weights.shape == new.weights.shape:
      skipped = inner.nonfinite_steps > state.inner.nonfinite_steps
      new = jax.tree_util.tree_map(lambda n, o: jnp.where(skipped, o, n.astype(o.dtype)),
                                   new, old)
    return updates, DiagnosticsState(inner, new)

  aggregator.record_shared(update_fn, shared)
  if isinstance(method, aggregator.JacobianTransformation):
    return aggregator.JacobianTransformation(init_fn, update_fn)
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
