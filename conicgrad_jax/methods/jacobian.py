"""Methods that need the task gradients themselves, not only their Gram matrix: GradDrop, MoCo, DB-MTL.

They work leaf by leaf on the shared leaves (elementwise masks, or buffers
shaped like the stacked gradients), so they stay pytree-native and
sharding-friendly, but their cost and memory are O(Km) per step rather than
O(K²) after the Gram matrix.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import linalg
from conicgrad_jax import aggregator
from conicgrad_jax import validation


_EPS = 1e-8


def _acc(leaf):
  return leaf.astype(_numeric.solver_dtype(leaf.dtype))


def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))


def _task_norms(leaves):
  """‖g_i‖ over all given stacked leaves, per task."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(_acc(l)).reshape(l.shape[0], -1), axis=1)
                      for l in leaves))


# ----------------------------------------------------------------------- GradDrop

def graddrop(*, leak: float = 0.0, eps: float = _EPS, seed: int = 0,
             shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  r"""GradDrop: keep, coordinate by coordinate, only the gradients of one sign.

  P = ½(1 + Σ_i g_i / (Σ_i |g_i| + ε)) (sign purity), U ~ Uniform(0, 1) per
  coordinate, mask M_i = [P > U][g_i > 0] + [P < U][g_i < 0],
  update Σ_i (leak + (1 − leak) M_i) ⊙ g_i (the parameter-level form of the
  CAGrad/FAMO code, sum = their mean × K; LibMTL's representation-level form
  is not implemented). The state is a ``KeyedState``; its ``weights`` log the
  fraction of coordinates each task kept.

  References:
    Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout", NeurIPS 2020.
  """
  validation.check_unit_interval("leak", leak, closed_right=True)
  init_state = aggregator.keyed_state(seed)

  def aggregate(leaves, state, **_):
    key, *subs = jax.random.split(state.key, len(leaves) + 1)
    updates, kept, total = [], 0.0, 0
    for leaf, sub in zip(leaves, subs):
      g = _acc(leaf)
      purity = 0.5 * (1.0 + jnp.sum(g, 0) / (jnp.sum(jnp.abs(g), 0) + eps))
      u = jax.random.uniform(sub, purity.shape, g.dtype)
      mask = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
      updates.append(jnp.sum((leak + (1.0 - leak) * mask) * g, axis=0))
      kept = kept + jnp.sum(mask.reshape(mask.shape[0], -1), axis=1)
      total += purity.size
    weights = (kept / max(total, 1)).astype(state.weights.dtype)
    return updates, state._replace(weights=weights, key=key), _all_finite(leaves)

  return aggregator.stacked_gradient_transformation(
      aggregate, init_state, shared=shared, num_tasks=num_tasks)


# --------------------------------------------------------------------------- MoCo

class BufferState(NamedTuple):
  """State of MoCo / DB-MTL: weights, the K×m buffer (one array per shared leaf), step."""
  weights: jax.Array
  buffers: list
  step: jax.Array
  nonfinite_steps: jax.Array


def _require_num_tasks(num_tasks, method):
  if num_tasks is None:
    raise ValueError(f"{method} keeps a buffer of K stacked gradients in its state: pass "
                     "`num_tasks`.")


def _buffer_init(num_tasks, shared, initial_weights):
  def init_state(k, dtype, params):
    if params is None:
      raise ValueError("This method builds its buffers from the parameters: call init(params).")
    flags = validation.resolve_shared(shared, params)
    buffers = [jnp.zeros((k,) + jnp.shape(p), _numeric.solver_dtype(jnp.result_type(p)))
               for p, f in zip(jax.tree_util.tree_leaves(params), flags) if f]
    return BufferState(initial_weights(k), buffers, jnp.zeros((), jnp.int32),
                       jnp.zeros((), jnp.int32))
  return init_state


def moco(*, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
         gamma_sigma: float = 0.5, rho: float = 0.0, num_tasks: Optional[int] = None,
         shared: validation.SharedSpec = None) -> optax.GradientTransformationExtraArgs:
  r"""MoCo: a momentum-tracked Jacobian y and simplex weights λ updated by one gradient step.

  ĝ_i = g_i/(‖g_i‖ + 1e-8)·l_i;  y ← y − (β/t^{β_σ})(y − ĝ);
  λ ← softmax(λ − (γ/t^{γ_σ})(y yᵀ + ρI)λ) (softmax applied to λ itself, as
  LibMTL's port of the authors' code); update yᵀλ. Needs ``losses=``;
  defaults β = 0.5, β_σ = 0.5, γ = 0.1, γ_σ = 0.5, ρ = 0. Memory O(Km).

  References:
    Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A
    Provably Convergent Approach", ICLR 2023.
  """
  _require_num_tasks(num_tasks, "moco")

  def aggregate(leaves, state, losses=None, **_):
    k = state.weights.shape[0]
    losses = aggregator.require_losses(losses, k, "moco")
    t = (state.step + 1).astype(losses.dtype)
    scale = losses / (_task_norms(leaves) + _EPS)
    rate = beta / t ** beta_sigma
    buffers = [y - rate * (y - _acc(g) * scale.reshape((k,) + (1,) * (g.ndim - 1)))
               for y, g in zip(state.buffers, leaves)]
    yyt = linalg.gram_matrix(buffers) + rho * jnp.eye(k)
    lam = state.weights.astype(yyt.dtype)
    lam = jax.nn.softmax(lam - (gamma / t ** gamma_sigma) * _numeric.matvec(yyt, lam))
    updates = [linalg.combine_leaf(lam, y, y.dtype) for y in buffers]
    finite = _all_finite(leaves) & jnp.all(jnp.isfinite(losses))
    return updates, state._replace(weights=lam, buffers=buffers, step=state.step + 1), finite

  init = _buffer_init(num_tasks, shared, lambda k: jnp.full((k,), 1.0 / k, jnp.float32))
  return aggregator.stacked_gradient_transformation(
      aggregate, init, shared=shared, num_tasks=num_tasks, init_needs_params=True)


# ------------------------------------------------------------------------- DB-MTL

def db_mtl(*, beta: float = 0.9, beta_sigma: float = 0.0, num_tasks: Optional[int] = None,
           shared: validation.SharedSpec = None) -> optax.GradientTransformationExtraArgs:
  r"""DB-MTL: log-loss gradients, an EMA of them, then equalised magnitudes.

  ĝ_i = ∇ log(l_i + 1e-8) = g_i/(l_i + 1e-8) (loss-scale balancing);
  Ĝ ← ĝ + β_t(Ĝ − ĝ), β_t = β/t^{β_σ}, Ĝ₀ = 0 (no bias correction, as the
  reference); α_i = max_j ‖Ĝ_j‖/(‖Ĝ_i‖ + 1e-8); update Σ_i α_i Ĝ_i. Needs
  ``losses=``. Task-specific leaves get the sum of their raw task gradients
  (the reference gives heads ∇ log l_i). Memory O(Km).

  References:
    Lin et al., "Dual-Balancing for Multi-Task Learning", 2023 (LibMTL).
  """
  _require_num_tasks(num_tasks, "db_mtl")

  def aggregate(leaves, state, losses=None, **_):
    k = state.weights.shape[0]
    losses = aggregator.require_losses(losses, k, "db_mtl")
    t = (state.step + 1).astype(losses.dtype)
    beta_t = beta / t ** beta_sigma
    inv = 1.0 / (losses + _EPS)
    buffers = []
    for g_hat, g in zip(state.buffers, leaves):
      log_grad = _acc(g) * inv.reshape((k,) + (1,) * (g.ndim - 1))
      buffers.append(log_grad + beta_t * (g_hat - log_grad))
    norms = _task_norms(buffers)
    alpha = jnp.max(norms) / (norms + _EPS)
    updates = [linalg.combine_leaf(alpha, b, b.dtype) for b in buffers]
    finite = _all_finite(leaves) & jnp.all(jnp.isfinite(losses))
    return updates, state._replace(weights=alpha, buffers=buffers, step=state.step + 1), finite

  init = _buffer_init(num_tasks, shared, lambda k: jnp.ones((k,), jnp.float32))
  return aggregator.stacked_gradient_transformation(
      aggregate, init, shared=shared, num_tasks=num_tasks, init_needs_params=True)
