r"""GradNorm: learned weights that equalise the weighted gradient norms at rates set by training speed."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


class GradNormState(NamedTuple):
  """State of :func:`gradnorm`.

  Attributes:
    weights: the K weights of the last update (K·softmax(s); 1 at the first).
    logits: the learned logits s.
    inner_state: the state of the optimiser of s.
    initial_losses: the first update's losses l⁰.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  logits: jax.Array
  inner_state: optax.OptState
  initial_losses: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def gradnorm_balance_loss(logits: jax.Array, norms: jax.Array, ratio: jax.Array,
                          alpha: float = 1.5) -> jax.Array:
  r"""Σ_i |G_i − sg(Ḡ r_i^α)|, G_i = K·softmax(s)_i ‖g_i‖, Ḡ = mean_i G_i: the loss of s.

  |·| has derivative 0 at 0 (an exact tie G_i = Ḡ r_i^α), as LibMTL's ``torch.abs``.
  """
  validation.check_task_vectors("gradnorm_balance_loss", "logits", logits, norms=norms,
                                ratio=ratio)
  k = logits.shape[0]
  g = k * jax.nn.softmax(logits) * norms
  target = jax.lax.stop_gradient(jnp.mean(g) * ratio ** alpha)
  return jnp.sum(_numeric.abs_zero_subgradient(g - target))


def gradnorm_weighting(gram: jax.Array, losses: jax.Array, state: GradNormState,
                       optimizer: optax.GradientTransformation, *,
                       alpha: float = 1.5) -> tuple[jax.Array, GradNormState]:
  r"""One GradNorm step: weights from the current s, then ``optimizer`` on ∂/∂s of the balance loss.

  The norms are ‖g_i‖ = √G_ii and r_i = (l_i/l_i⁰)/mean(l/l⁰). The first call
  records l⁰, returns weights 1 and leaves s unchanged. Returns
  ``(weights, new_state)``; non-finite losses, losses ≤ 0 and l⁰ ≤ 0 give NaN
  weights (the transformation then skips the step and keeps the state, so
  l⁰ is recorded at the first valid step).
  """
  dtype = state.logits.dtype
  k = state.weights.shape[0]
  losses = losses.astype(dtype)
  first = state.step == 0
  initial = jnp.where(first, losses, state.initial_losses)
  norms = _numeric.gradient_norms(gram).astype(dtype)
  relative = losses / initial
  ratio = relative / jnp.mean(relative)
  grad_s = jax.grad(gradnorm_balance_loss)(state.logits, norms, ratio, alpha)
  updates, inner_state = optimizer.update(grad_s, state.inner_state, state.logits)
  logits = jnp.where(first, state.logits, optax.apply_updates(state.logits, updates))
  inner_state = jax.tree_util.tree_map(lambda n, o: jnp.where(first, o, n), inner_state,
                                       state.inner_state)
  weights = jnp.where(first, jnp.ones((k,), dtype), k * jax.nn.softmax(state.logits))
  # r_i needs l > 0 and l⁰ > 0; a step without them is skipped, and l⁰ is
  # recorded at the first step that has them.
  valid = jnp.all(jnp.isfinite(losses) & (losses > 0) & (initial > 0))
  weights = jnp.where(valid, weights, jnp.nan)
  return weights, state._replace(weights=weights, logits=logits, inner_state=inner_state,
                                 initial_losses=initial, step=state.step + 1)


def gradnorm(alpha: float = 1.5, *, lr: float = 0.025, shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""GradNorm: learn weights so that every task's weighted gradient norm tracks its training rate.

  With w = K·softmax(s), G_i = w_i‖g_i‖, Ḡ = mean_i G_i and the relative
  inverse training rates r_i = (l_i/l_i⁰)/mean_j(l_j/l_j⁰),

  .. math::

     L_\text{grad}(s) = \sum_i \big|G_i - \operatorname{sg}(\bar G\, r_i^\alpha)\big|,

  s takes one Adam step on ∂L_grad/∂s per update and the update is
  Σ_i w_i g_i with the weights before that step. The first update records
  l⁰ and uses w = 1. The norms come from diag(G) of the shared leaves.

  Args:
    alpha: α ≥ 0, the strength of the pull towards the training rates (1.5,
      LibMTL and the paper's NYUv2 runs).
    lr: learning rate of the Adam optimiser of s.
    shared: which leaves are shared (their norms enter G_i): ``None`` (all),
      a pytree of bools shaped like the parameters, or a predicate
      ``(key_path, leaf) -> bool``; task-specific leaves receive the plain
      sum of their task gradients. The norms are taken over every shared
      leaf (as LibMTL does). The paper takes them on the last shared layer
      only; ``shared`` cannot express that, since the leaves it excludes are
      not weighted at all.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`GradNormState`. ``update(task_grads, state, params=None, *,
    losses)`` needs ``losses=`` (shape (K,)) and ignores other keyword
    arguments; non-finite losses and losses ≤ 0 skip the step.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.gradnorm(lr=0.1)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 4.0]])}   # norms 1 and 4
    >>> state = tx.init(None)
    >>> for _ in range(3):
    ...   _, state = tx.update(grads, state, losses=jnp.array([1.0, 1.0]))
    >>> bool(state.weights[0] > state.weights[1])   # the small gradient gains weight
    True

  References:
    Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks", ICML 2018.

  Deviations: w = K·softmax(s) with s₀ = 0 (LibMTL's parameterisation; the
  paper renormalises free weights to sum K); s has its own Adam optimiser;
  the norms are over all shared leaves unless ``shared`` says otherwise;
  iteration-level: l⁰ is the first update's losses and only that update
  uses w = 1 (LibMTL uses w = 1 for the whole first epoch and takes l⁰ as
  its mean loss).
  """
  validation.check_positive("alpha", alpha, allow_zero=True)
  validation.check_positive("lr", lr)
  optimizer = optax.adam(lr)

  def init_state(k, dtype=jnp.float32):
    s = jnp.zeros((k or 0,), dtype)
    return GradNormState(jnp.ones((k or 0,), dtype), s, optimizer.init(s),
                         jnp.ones((k or 0,), dtype), jnp.zeros((), jnp.int32),
                         jnp.zeros((), jnp.int32))

  def weigh(gram, state, losses=None, **_):
    losses = aggregator.require_losses(losses, state.weights.shape[0], "gradnorm")
    return gradnorm_weighting(gram, losses, state, optimizer, alpha=alpha)[1]

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)
