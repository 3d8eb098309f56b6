"""Methods that learn or track their weights across steps from gradient geometry: GradNorm, SDMGrad."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import linalg
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.methods import loss_weighting


# ------------------------------------------------------------------------ GradNorm

# GradNorm's state has BiLB4MTL's fields: weights, logits s, their Adam state,
# initial losses, step, non-finite count.
GradNormState = loss_weighting.LearnedLogitsState


def gradnorm(alpha: float = 1.5, *, lr: float = 0.025, shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""GradNorm: learn weights that equalise the weighted gradient norms at rates set by training speed.

  w = K·softmax(s) (LibMTL's parameterisation, s₀ = 0 so w₀ = 1). With
  G_i = w_i‖g_i‖ (all shared leaves, as LibMTL; the paper uses the last shared
  layer — pass that as ``shared``), Ḡ = mean G_i, r_i = (l_i/l_i⁰)/mean(l/l⁰):
  L_grad = Σ_i |G_i − stopgrad(Ḡ r_i^α)|, and s takes an Adam step (lr) on it.
  The update uses the current w; the first step (LibMTL's epoch 0) records
  l⁰ and uses w = 1. Needs ``losses=``. α = 1.5 (LibMTL, the paper's NYUv2).

  References:
    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing
    in Deep Multitask Networks", ICML 2018.
  """
  inner = optax.adam(lr)

  def init_state(k, dtype=jnp.float32):
    kk = k if k is not None else 0
    s = jnp.zeros((kk,), jnp.float32)
    return GradNormState(jnp.ones((kk,), jnp.float32), s, inner.init(s),
                         jnp.ones((kk,), jnp.float32), jnp.zeros((), jnp.int32),
                         jnp.zeros((), jnp.int32))


  def balance_loss(s, norms, ratio):
    k = s.shape[0]
    g = k * jax.nn.softmax(s) * norms
    target = jax.lax.stop_gradient(jnp.mean(g) * ratio ** alpha)
    return jnp.sum(jnp.abs(g - target))

  def weigh(gram, state, losses=None, **_):
    k = state.weights.shape[0]
    losses = aggregator.require_losses(losses, k, "gradnorm").astype(jnp.float32)
    first = state.step == 0
    initial = jnp.where(first, losses, state.initial_losses)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0)).astype(jnp.float32)
    relative = losses / initial
    ratio = relative / jnp.mean(relative)
    grad_s = jax.grad(balance_loss)(state.logits, norms, ratio)
    updates, inner_state = inner.update(grad_s, state.inner_state, state.logits)
    logits = jnp.where(first, state.logits, optax.apply_updates(state.logits, updates))
    inner_state = jax.tree_util.tree_map(lambda n, o: jnp.where(first, o, n), inner_state,
                                         state.inner_state)
    weights = jnp.where(first, jnp.ones((k,), jnp.float32), k * jax.nn.softmax(state.logits))
    weights = jnp.where(jnp.all(jnp.isfinite(losses)), weights, jnp.nan)
    return state._replace(weights=weights, logits=logits, inner_state=inner_state,
                          initial_losses=initial, step=state.step + 1)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)


# ------------------------------------------------------------------------- SDMGrad

class SDMGradState(NamedTuple):
  """State of :func:`sdmgrad`: the combination weights, the warm-started simplex weights w."""
  weights: jax.Array
  simplex_weights: jax.Array
  nonfinite_steps: jax.Array


def _cross_gram(a_leaves, b_leaves, precision):
  grams = []
  for a, b in zip(a_leaves, b_leaves):
    axes = tuple(range(1, a.ndim))
    grams.append(jax.lax.dot_general(a, b, ((axes, axes), ((), ())), precision=precision,
                                     preferred_element_type=_numeric.solver_dtype(a.dtype)))
  return sum(grams)


def sdmgrad(lamda: float = 0.3, *, niter: int = 20, lr: float = 10.0,
            shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""SDMGrad: stochastic direction-oriented MGDA with an unbiased double-sampling weight update.

  With M = G_{ξ1} G_{ξ2}ᵀ from two further independent batches, normalised by
  s² (s = mean_i (M_ii + 1e-4)^½) and b_i = mean_j M_ij: ``niter`` projected
  SGD steps (lr, momentum 0.5, fresh each step) on w ← Π_Δ(w − lr(Mw + λb)),
  warm-started from the previous w; update (Σ w_i g_i + λ·mean_i g_i)/(1 + λ)
  on the ζ batch. Pass the two batches' stacked task gradients as
  ``update(..., weight_grads=(grads_xi1, grads_xi2))`` (shared leaves, same
  structure as the task gradients' shared leaves, in ``tree_leaves`` order or
  as full pytrees); without them both default to the update's own gradients —
  which is what the official code computes anyway, since its three gradient
  buffers alias one tensor. λ = 0.3, lr = 10, 20 iterations (official).

  References:
    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
    Provable Stochastic Algorithms", NeurIPS 2023.
  """
  validation.check_positive_int("niter", niter)

  def init_state(k, dtype=jnp.float32):
    w = aggregator.placeholder_weights(k, dtype)
    return SDMGradState(w, w, jnp.zeros((), jnp.int32))


  def aggregate(leaves, state, weight_grads=None, **_):
    k = state.weights.shape[0]
    if weight_grads is None:
      xi1 = xi2 = leaves
    else:
      xi1, xi2 = (jax.tree_util.tree_leaves(g) for g in weight_grads)
      if len(xi1) != len(leaves):
        xi1 = [l for l in xi1 if l.ndim and l.shape[1:] in {x.shape[1:] for x in leaves}]
        xi2 = [l for l in xi2 if l.ndim and l.shape[1:] in {x.shape[1:] for x in leaves}]
    m = _cross_gram(xi1, xi2, precision)
    finite = jnp.all(jnp.isfinite(m)) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))
    m = jnp.where(finite, m, jnp.eye(k, dtype=m.dtype))
    scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diagonal(m), 0.0) + 1e-4))
    m = m / scale ** 2
    b = jnp.mean(m, axis=1)

    def sgd(carry, _):
      w, velocity = carry
      velocity = 0.5 * velocity + _numeric.matvec(m, w) + lamda * b
      return (_numeric.project_simplex(w - lr * velocity), velocity), None

    w0 = state.simplex_weights.astype(m.dtype)
    (w, _), _ = jax.lax.scan(sgd, (w0, jnp.zeros_like(w0)), None, length=niter)
    weights = (w + lamda / k) / (1.0 + lamda)
    updates = [linalg.combine_leaf(weights, l, _numeric.solver_dtype(l.dtype), precision)
               for l in leaves]
    return updates, state._replace(weights=weights, simplex_weights=w), finite

  return aggregator.stacked_gradient_transformation(
      aggregate, init_state, shared=shared, num_tasks=num_tasks)


# ------------------------------------------------------------- GSMGrad, GSMGrad-FA

class GSMGradState(NamedTuple):
  """State of :func:`gsmgrad` / :func:`gsmgrad_fa`: the simplex weights, the previous losses, step."""
  weights: jax.Array
  prev_losses: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def _gsm_init(k, dtype=jnp.float32):
  kk = k if k is not None else 0
  return GSMGradState(aggregator.placeholder_weights(k, dtype), jnp.zeros((kk,), jnp.float32),
                      jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))




def _check_gsm_options(lr, rho):
  if not lr > 0:
    raise ValueError(f"`lr` must be positive, got {lr!r}.")
  if not rho >= 0:
    raise ValueError(f"`rho` must be non-negative, got {rho!r}.")


def gsmgrad(*, lr: float = 0.5, rho: float = 0.01, warm_start_steps: int = 100,
            shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""GSMGrad: single-loop MGDA, one warm-started projected-gradient step on the weights per update.

  The MGDA weights are tracked across training steps instead of solved to
  optimality at each one:

    w_{t+1} = Π_Δ(w_t − β(Ĝ_t w_t + ρ w_t)),   d_t = Σ_i w_{t+1,i} g_i,

  a projected gradient step on the ρ-regularised min-norm problem
  min_{w∈Δ} ½ wᵀĜw + ½ρ‖w‖² (ρ-strongly convex, so the iterates track a
  unique solution). The first update runs ``warm_start_steps`` such steps on
  its own G (the paper's warm start, N = O(ε⁻²)). Weights sum to 1.

  Deviation: the paper steps with the raw G; here Ĝ = G/‖G‖_F (λ_max(Ĝ) ≤ 1),
  so one β ∈ (0, 1] is stable at every gradient scale and the iterates are
  invariant to rescaling all gradients (ρ is relative to ‖G‖_F). The paper's
  step sizes for its experiments were not available to us; β = 0.5, ρ = 0.01
  and N = 100 are our defaults.

  References:
    Zhang, Xiao, Zou & Ji, "MGDA Converges under Generalized Smoothness,
    Provably", ICLR 2025 (arXiv:2405.19440; earlier title "On the Convergence
    of Multi-objective Optimization under Generalized Smoothness").
  """
  _check_gsm_options(lr, rho)
  validation.check_positive_int("warm_start_steps", warm_start_steps)

  def weigh(gram, state, **_):
    g_hat = gram / jnp.maximum(jnp.linalg.norm(gram), jnp.finfo(gram.dtype).tiny)

    def step(_, w):
      return _numeric.project_simplex(w - lr * (_numeric.matvec(g_hat, w) + rho * w))

    w0 = state.weights.astype(gram.dtype)
    n = jnp.where(state.step == 0, warm_start_steps, 1)
    w = jax.lax.fori_loop(0, n, step, w0)
    return state._replace(weights=w, step=state.step + 1)

  return aggregator.gram_weighting_transformation(
      weigh, _gsm_init, shared=shared, num_tasks=num_tasks, precision=precision)


def gsmgrad_fa_loss(losses, weights):
  r"""Σ_i w_i l_i with the GSMGrad-FA weights held fixed: back-propagate this once for the update."""
  return jnp.sum(jax.lax.stop_gradient(weights) * losses)


def gsmgrad_fa(*, lr: float = 0.1, rho: float = 0.01,
               shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
               precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""GSMGrad-FA: the GSMGrad weight step with Gw estimated from the loss decrease (no Gram matrix).

  After a step x_{t+1} = x_t − α d_t with d_t = Σ_i w_i g_i, a first-order
  expansion gives F(x_t) − F(x_{t+1}) ≈ α ∇F(x_t)ᵀd_t = α G_t w_t, so the
  weight gradient of GSMGrad costs one forward pass instead of K backward
  passes (the paper's "fast approximation", O(1) memory in K):

    δ_t = l_{t−1} − l_t,   w_{t+1} = Π_Δ(w_t − β(δ_t/‖δ_t‖ + ρ w_t)).

  ``losses=`` are the K losses at the current parameters; the previous call's
  losses are kept in the state (re-evaluate the same batch after the step, as
  the paper and the toy trainer do, or accept the noise of consecutive
  batches). The first update uses uniform weights. Only the losses are used,
  so for constant cost back-propagate :func:`gsmgrad_fa_loss` (weights from
  the state) instead of stacking task gradients.

  Deviation: δ_t is normalised to unit length, which removes the unknown
  step size α (under Adam the step is not α d_t anyway) and makes β
  scale-free; the paper divides by α. Defaults β = 0.1, ρ = 0.01 are ours.

  References:
    Zhang, Xiao, Zou & Ji, "MGDA Converges under Generalized Smoothness,
    Provably", ICLR 2025 (arXiv:2405.19440), the MGDA-FA / GSMGrad-FA variant.
  """
  _check_gsm_options(lr, rho)

  def weigh(gram, state, losses=None, **_):
    del gram
    k = state.weights.shape[0]
    losses = aggregator.require_losses(losses, k, "gsmgrad_fa").astype(jnp.float32)
    delta = state.prev_losses - losses
    direction = delta / jnp.maximum(jnp.linalg.norm(delta), 1e-12)
    w = state.weights.astype(jnp.float32)
    stepped = _numeric.project_simplex(w - lr * (direction + rho * w))
    w = jnp.where(state.step > 0, stepped, w)
    w = jnp.where(jnp.all(jnp.isfinite(losses)), w, jnp.nan)
    return state._replace(weights=w, prev_losses=losses, step=state.step + 1)

  return aggregator.gram_weighting_transformation(
      weigh, _gsm_init, shared=shared, num_tasks=num_tasks, precision=precision, needs_gram=False)
