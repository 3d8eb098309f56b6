"""Loss-based weightings: UW, DWA, GLS, STCH, IMTL-L, FAMO, BiLB4MTL.

Each needs only the task losses, passed as ``update(task_grads, state,
params, losses=...)``; the weights it computes are applied to the stacked task
gradients like every other method (shared leaves weighted, task-specific
leaves summed). For users who back-propagate one weighted loss instead, each
family also exposes a pure scalarisation of the losses
(``*_loss(losses, state)``) whose gradient with respect to the losses is the
same weight vector.

Weights sum to 1 in expectation where the reference averages (DWA, FAMO) and
follow the reference's own scale elsewhere; each docstring says which.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

_EPS = 1e-8


def _loss_method(init_extra, weigh_losses, method, *, shared, num_tasks, precision):
  """A transformation from ``weigh_losses(losses, state) -> state`` (no Gram matrix)."""


  def weigh(gram, state, losses=None, **_):
    del gram
    k = state.weights.shape[0]
    losses = aggregator.require_losses(losses, k, method)
    new_state = weigh_losses(losses, state)
    # Non-finite losses: mark the weights so the transformation skips the step
    # (zero update, state kept) instead of storing NaN in the method's state.
    ok = jnp.all(jnp.isfinite(losses))
    return new_state._replace(weights=jnp.where(ok, new_state.weights, jnp.nan))

  return aggregator.gram_weighting_transformation(
      weigh, init_extra, shared=shared, num_tasks=num_tasks, precision=precision, needs_gram=False)


def _zeros(k):
  return jnp.zeros((k,) if k is not None else (0,), jnp.float32)


# ----------------------------------------------------------------------------- UW

class LearnedWeightsState(NamedTuple):
  """State of UW / IMTL-L: the weights, the learned log-scales s, their optimiser state."""
  weights: jax.Array
  log_scales: jax.Array
  inner_state: optax.OptState
  nonfinite_steps: jax.Array


def uncertainty_weighting_loss(losses, log_scales):
  r"""Σ_i ½(e^{−s_i} l_i + s_i) (Kendall et al.; s = log σ²)."""
  return jnp.sum(0.5 * (jnp.exp(-log_scales) * losses + log_scales))


def uncertainty_weighting(*, lr: float = 0.025, init_log_scale: float = 0.0,
                          shared: validation.SharedSpec = None,
                          num_tasks: Optional[int] = None,
                          precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Uncertainty weighting: weights ½e^{−s_i}, s learned by Adam on Σ ½(e^{−s}l + s).

  Defaults as the Nash-MTL/FAMO code bases: s₀ = 0, a separate Adam with
  lr 0.025 (LibMTL: s₀ = −0.5, the model's optimiser). Equilibrium e^{s_i} = l_i,
  so it needs positive losses.

  References:
    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses", CVPR 2018.
  """
  inner = optax.adam(lr)
  grad_s = jax.grad(uncertainty_weighting_loss, argnums=1)
  return _learned_log_scales(inner, init_log_scale, lambda s: 0.5 * jnp.exp(-s), grad_s,
                             "uncertainty_weighting", shared, num_tasks, precision)


def _learned_log_scales(inner, init, weights_of, grad_s, method, shared, num_tasks, precision):
  def init_extra(k, dtype=jnp.float32):
    s = jnp.full((k,) if k is not None else (0,), init, jnp.float32)
    return LearnedWeightsState(weights_of(s), s, inner.init(s), jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    s = state.log_scales
    weights = weights_of(s)
    updates, inner_state = inner.update(grad_s(losses.astype(s.dtype), s), state.inner_state, s)
    return state._replace(weights=weights.astype(state.weights.dtype),
                          log_scales=optax.apply_updates(s, updates), inner_state=inner_state)

  return _loss_method(init_extra, weigh, method, shared=shared, num_tasks=num_tasks,
                      precision=precision)


# ------------------------------------------------------------------------- IMTL-L

def imtl_l_loss(losses, log_scales):
  r"""Σ_i (e^{s_i} l_i − s_i) (IMTL-L's scale-invariant loss)."""
  return jnp.sum(jnp.exp(log_scales) * losses - log_scales)


def imtl_l(*, lr: float = 1e-3, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""IMTL-L: weights e^{s_i}, s (init 0) learned by Adam on Σ(e^{s}l − s); equilibrium e^{s_i} l_i = 1.

  LibMTL trains s with the model's optimiser; here it has its own Adam (lr).

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
  """
  return _learned_log_scales(optax.adam(lr), 0.0, jnp.exp, jax.grad(imtl_l_loss, argnums=1),
                             "imtl_l", shared, num_tasks, precision)


# --------------------------------------------------------------------------- DWA

class DWAState(NamedTuple):
  """State of :func:`dwa`: weights, a FIFO of the last 2·window loss vectors, the step."""
  weights: jax.Array
  history: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def dwa(*, temperature: float = 2.0, window: int = 25, shared: validation.SharedSpec = None,
        num_tasks: Optional[int] = None,
        precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Dynamic weight average, iteration-level (Nash-MTL code base).

  r_k = mean(newest ``window`` losses)/mean(the ``window`` before) once more
  than ``window`` steps have run (buffer initialised with ones, as the
  reference); weights softmax(r/T) — the reference's K·softmax(r/T) applied to
  the *mean* of the losses, so they sum to 1. The original epoch-level DWA is
  this with one window per epoch of averaged losses.

  References:
    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.
  """
  validation.check_positive_int("window", window)

  def init_extra(k, dtype=jnp.float32):
    kk = k if k is not None else 0
    return DWAState(jnp.full((kk,), 1.0 / max(kk, 1), jnp.float32),
                    jnp.ones((2 * window, kk), jnp.float32), jnp.zeros((), jnp.int32),
                    jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    history = jnp.concatenate([state.history[1:], losses[None].astype(jnp.float32)])
    ratio = (jnp.mean(history[window:], 0) / (jnp.mean(history[:window], 0) + _EPS))
    warm = state.step + 1 > window
    k = losses.shape[0]
    weights = jnp.where(warm, jax.nn.softmax(ratio / temperature), jnp.full((k,), 1.0 / k))
    return state._replace(weights=weights, history=history, step=state.step + 1)

  return _loss_method(init_extra, weigh, "dwa", shared=shared, num_tasks=num_tasks,
                      precision=precision)


# --------------------------------------------------------------------------- GLS

class StatelessLossState(NamedTuple):
  weights: jax.Array
  nonfinite_steps: jax.Array


def gls_loss(losses):
  r"""(Π_i l_i)^{1/K}, computed as exp(mean log l) (no over/underflow for large K)."""
  return jnp.exp(jnp.mean(jnp.log(losses)))


def gls(*, shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
        precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Geometric loss strategy: weights ∂(Π l)^{1/K}/∂l_i = L/(K l_i). Needs positive losses.

  References:
    Chennupati et al., "MultiNet++", CVPR Workshops 2019.
  """
  def init_extra(k, dtype=jnp.float32):
    return StatelessLossState(_zeros(k), jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    return state._replace(weights=jax.grad(gls_loss)(losses).astype(jnp.float32))

  return _loss_method(init_extra, weigh, "gls", shared=shared, num_tasks=num_tasks,
                      precision=precision)


# -------------------------------------------------------------------------- STCH

class STCHState(NamedTuple):
  """State of :func:`stch`: weights, step, nadir accumulator (sum, count)."""
  weights: jax.Array
  step: jax.Array
  nadir_sum: jax.Array
  nadir_count: jax.Array
  nonfinite_steps: jax.Array


def stch_loss(losses, nadir, mu=1.0):
  r"""K·μ·log Σ_i exp(log(l_i/nadir_i)/μ) (smooth Tchebycheff after the warm-up)."""
  x = jnp.log(losses / nadir + 1e-20)
  return losses.shape[0] * mu * jax.nn.logsumexp(x / mu)


def stch(*, mu: float = 1.0, warmup_steps: int = 100, shared: validation.SharedSpec = None,
         num_tasks: Optional[int] = None,
         precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Smooth Tchebycheff scalarisation (LibMTL/Xi-L STCH), with a step-based warm-up.

  During the first ``warmup_steps`` steps the loss is Σ log l_i (weights
  1/l_i), and the losses of the warm-up's second half are averaged into the
  nadir point; afterwards the weights are
  K·softmax(x/μ)_i/l_i with x_i = log(l_i/nadir_i). The reference counts
  epochs (warm-up 4 epochs, nadir from epoch 4); pass
  ``warmup_steps = 4 · steps_per_epoch`` to match it.

  References:
    Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024.
  """
  validation.check_positive_int("warmup_steps", warmup_steps)

  def init_extra(k, dtype=jnp.float32):
    return STCHState(_zeros(k), jnp.zeros((), jnp.int32), _zeros(k), jnp.zeros((), jnp.int32),
                     jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    losses = losses.astype(jnp.float32)
    in_warmup = state.step < warmup_steps
    collect = in_warmup & (state.step >= warmup_steps // 2)
    nadir_sum = state.nadir_sum + jnp.where(collect, losses, 0.0)
    nadir_count = state.nadir_count + collect.astype(jnp.int32)
    nadir = nadir_sum / jnp.maximum(nadir_count, 1)
    warm_weights = 1.0 / (losses + 1e-20)
    main_weights = jax.grad(stch_loss)(losses, jnp.where(nadir > 0, nadir, 1.0), mu)
    weights = jnp.where(in_warmup, warm_weights, main_weights)
    return state._replace(weights=weights, step=state.step + 1, nadir_sum=nadir_sum,
                          nadir_count=nadir_count)

  return _loss_method(init_extra, weigh, "stch", shared=shared, num_tasks=num_tasks,
                      precision=precision)


# -------------------------------------------------------------------------- FAMO

class FAMOState(NamedTuple):
  """State of :func:`famo`: weights, logits ξ, their Adam state, the previous losses."""
  weights: jax.Array
  logits: jax.Array
  inner_state: optax.OptState
  prev_losses: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def famo_loss(losses, logits, min_losses=0.0):
  r"""Σ_i z_i log(l_i − min_i)/c, z = softmax(ξ), c = Σ_i z_i/(l_i − min_i) (stop-gradient)."""
  z = jax.nn.softmax(logits)
  d = losses - min_losses + _EPS
  c = jax.lax.stop_gradient(jnp.sum(z / d))
  return jnp.sum(z * jnp.log(d)) / c


def famo(*, w_lr: float = 0.025, gamma: float = 0.001, min_losses: float = 0.0,
         shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
         precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""FAMO: weights z_i/(c·(l_i − min)), z = softmax(ξ), ξ updated from the loss decrease.

  Each update first moves ξ by Adam (lr ``w_lr``, L2 weight decay ``gamma``
  added to the gradient as PyTorch's Adam) with gradient
  J_softmax(ξ)ᵀ δ, δ = log(l_prev − min) − log(l_now − min): the losses of
  consecutive calls (the reference re-evaluates the same batch after the
  step; the toy trainer does exactly this). Weights sum to 1. Defaults:
  w_lr = 0.025, γ = 0.001 (LibMTL and the NYUv2/CelebA/QM9 run scripts).

  References:
    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
  """
  inner = optax.chain(optax.add_decayed_weights(gamma), optax.adam(w_lr))

  def init_extra(k, dtype=jnp.float32):
    xi = _zeros(k)
    return FAMOState(jax.nn.softmax(xi) if k else xi, xi, inner.init(xi), _zeros(k),
                     jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    losses = losses.astype(jnp.float32)
    xi = state.logits
    delta = (jnp.log(state.prev_losses - min_losses + _EPS)
             - jnp.log(losses - min_losses + _EPS))
    z = jax.nn.softmax(xi)
    grad_xi = z * (delta - jnp.dot(z, delta))
    updates, inner_state = inner.update(grad_xi, state.inner_state, xi)
    move = state.step > 0
    xi = jnp.where(move, optax.apply_updates(xi, updates), xi)
    inner_state = jax.tree_util.tree_map(lambda new, old: jnp.where(move, new, old),
                                         inner_state, state.inner_state)
    weights = jax.grad(famo_loss)(losses, xi, min_losses)
    return state._replace(weights=weights, logits=xi, inner_state=inner_state,
                          prev_losses=losses, step=state.step + 1)

  return _loss_method(init_extra, weigh, "famo", shared=shared, num_tasks=num_tasks,
                      precision=precision)


# ---------------------------------------------------------------------- BiLB4MTL

class LearnedLogitsState(NamedTuple):
  """Weights from learned logits: the logits, their optimiser state, the initial losses, step.

  The state of :func:`bilb4mtl` (router logits) and of GradNorm (``adaptive.gradnorm``).
  """
  weights: jax.Array
  logits: jax.Array
  inner_state: optax.OptState
  initial_losses: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


BiLBState = LearnedLogitsState

LOSS_NORMALIZATIONS = ("identity", "rescaled", "log")


def bilb4mtl_loss(losses, logits, initial_losses, lamb=0.05, normalization="identity"):
  r"""σ·l̃/Σσ + λ Σ_{i<K} |σ_i l̃_i − σ_{i+1} l̃_{i+1}|, σ = softmax(logits) (Σσ stop-gradient)."""
  if normalization == "rescaled":
    norm = losses / (initial_losses / jnp.min(initial_losses))
  elif normalization == "log":
    norm = jnp.log(losses / initial_losses)
  else:
    norm = losses
  sigma = jax.nn.softmax(logits)
  weighted = sigma * norm
  return (jnp.sum(weighted) / jax.lax.stop_gradient(jnp.sum(sigma))
          + lamb * jnp.sum(jnp.abs(weighted[:-1] - weighted[1:])))


def bilb4mtl(*, lamb: float = 0.05, lr: float = 1e-3, normalization: str = "identity",
             shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""BiLB4MTL / LDC-MTL: loss discrepancy control by a learned router.

  Minimises :func:`bilb4mtl_loss` jointly over the model and the router's
  logits (the reference's first-order bilevel update, one backward pass):
  the model's loss weights are ∂L/∂l_i, the router takes an Adam step (lr)
  on ∂L/∂logits. Loss normalisation from the first step's losses:
  "identity" (Cityscapes), "rescaled" (NYUv2), "log" (QM9). λ defaults to
  0.05 (NYUv2/QM9 scripts). The router here is free logits with softmax, the
  library form the reference notes suggest for a loss-only API.

  References:
    "Scalable Bilevel Loss Balancing for Multi-Task Learning" (BiLB4MTL),
    arXiv 2502.08585 (v2 retitled LDC-MTL).
  """
  if normalization not in LOSS_NORMALIZATIONS:
    raise ValueError(f"`normalization` must be one of {LOSS_NORMALIZATIONS}, got "
                     f"{normalization!r}.")
  inner = optax.adam(lr)

  def init_extra(k, dtype=jnp.float32):
    logits = _zeros(k)
    return LearnedLogitsState(jnp.full(logits.shape, 1.0 / max(logits.shape[0], 1)), logits,
                     inner.init(logits), jnp.ones(logits.shape, jnp.float32),
                     jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    losses = losses.astype(jnp.float32)
    initial = jnp.where(state.step == 0, losses, state.initial_losses)
    weights, grad_logits = jax.grad(bilb4mtl_loss, argnums=(0, 1))(
        losses, state.logits, initial, lamb, normalization)
    updates, inner_state = inner.update(grad_logits, state.inner_state, state.logits)
    return state._replace(weights=weights, logits=optax.apply_updates(state.logits, updates),
                          inner_state=inner_state, initial_losses=initial,
                          step=state.step + 1)

  return _loss_method(init_extra, weigh, "bilb4mtl", shared=shared, num_tasks=num_tasks,
                      precision=precision)
