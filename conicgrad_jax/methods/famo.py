r"""FAMO: fast adaptive multitask optimisation, weights learned from the loss decrease."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

_EPS = 1e-8


class FAMOState(NamedTuple):
  """State of :func:`famo`.

  Attributes:
    weights: the K weights of the last update.
    logits: the learned logits ξ (z = softmax(ξ)).
    inner_state: the state of the optimiser of ξ.
    prev_losses: the losses of the previous update.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  logits: jax.Array
  inner_state: optax.OptState
  prev_losses: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def famo_loss(losses: jax.Array, logits: jax.Array, min_losses=0.0) -> jax.Array:
  r"""Σ_i z_i log(l_i − min_i)/c, z = softmax(ξ), c = Σ_i z_i/(l_i − min_i) (stop-gradient).

  Its gradient in the losses is FAMO's weight vector z_i/(c·(l_i − min_i)).
  """
  validation.check_task_vectors("famo_loss", "losses", losses, logits=logits,
                                min_losses=min_losses, scalar_ok=("min_losses",))
  z = jax.nn.softmax(logits)
  d = losses - jnp.asarray(min_losses, jnp.result_type(losses)) + _EPS
  c = jax.lax.stop_gradient(jnp.sum(z / d))
  return jnp.sum(z * jnp.log(d)) / c


def famo_weighting(losses: jax.Array, state: FAMOState, optimizer: optax.GradientTransformation,
                   *, min_losses=0.0) -> tuple[jax.Array, FAMOState]:
  r"""One FAMO step: move ξ from the loss decrease, then weights ∂/∂l :func:`famo_loss`.

  From the second call on, ξ takes an ``optimizer`` step with gradient
  J_softmax(ξ)ᵀδ, δ = log(l_prev − min) − log(l − min). Returns
  ``(weights, new_state)``; the weights are NaN when some l − min + 10⁻⁸ ≤ 0
  (the transformation then skips the step and keeps the state).
  """
  losses = losses.astype(state.logits.dtype)
  min_losses = jnp.asarray(min_losses, losses.dtype)
  xi = state.logits
  delta = (jnp.log(state.prev_losses - min_losses + _EPS)
           - jnp.log(losses - min_losses + _EPS))
  z = jax.nn.softmax(xi)
  grad_xi = z * (delta - jnp.dot(z, delta))
  updates, inner_state = optimizer.update(grad_xi, state.inner_state, xi)
  move = state.step > 0
  xi = jnp.where(move, optax.apply_updates(xi, updates), xi)
  inner_state = jax.tree_util.tree_map(lambda new, old: jnp.where(move, new, old),
                                       inner_state, state.inner_state)
  weights = jax.grad(famo_loss)(losses, xi, min_losses)
  # log(l − min + ε) needs l − min + ε > 0, at every step including the first.
  in_domain = jnp.all(losses - min_losses + _EPS > 0)
  weights = jnp.where(in_domain, weights, jnp.nan)
  return weights, state._replace(weights=weights, logits=xi, inner_state=inner_state,
                                 prev_losses=losses, step=state.step + 1)


def famo(*, w_lr: float = 0.025, gamma: float = 0.001, min_losses: float = 0.0,
         shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
         precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""FAMO: balance the tasks' log-loss decrease at O(1) cost, from the losses alone.

  With logits ξ, z = softmax(ξ) and c = Σ_i z_i/(l_i − min_i), the update is

  .. math::

     \sum_i w_i g_i, \qquad w_i = \frac{z_i}{c\,(l_i - \min_i)}

  (the gradient of Σ_i z_i log(l_i − min_i)/c; weights sum to 1). Before
  each update ξ takes an Adam step with gradient J_softmax(ξ)ᵀδ,
  δ = log(l_prev − min) − log(l_now − min), the losses of consecutive calls:
  tasks whose log loss fell less gain weight.

  Args:
    w_lr: learning rate of the Adam optimiser of ξ (0.025, LibMTL and the
      NYUv2/CelebA/QM9 run scripts).
    gamma: L2 weight decay of ξ, added to its gradient as PyTorch's Adam does
      (0.001, the same scripts).
    min_losses: lower bound of the losses (scalar or (K,)); 0 by default.
      FAMO takes log(l − min_losses + 10⁻⁸): a step where that argument is
      ≤ 0 (computed in the losses' dtype) is skipped (counted in
      ``nonfinite_steps``), the first step included, so negative losses need
      a matching bound.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination Σ_i w_i g_i.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`FAMOState`. ``update(task_grads, state, params=None, *, losses)``
    needs ``losses=`` (shape (K,)) and ignores other keyword arguments;
    non-finite losses skip the step. Users who back-propagate one loss can
    use :func:`famo_loss` with ``state.logits``.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.famo()
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(None), losses=jnp.array([1.0, 3.0]))
    >>> [round(float(w), 3) + 0.0 for w in state.weights]   # z uniform: w ∝ 1/l
    [0.75, 0.25]

  References:
    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

  Deviations: δ uses the losses of consecutive ``update`` calls; the
  reference re-evaluates the same batch after the parameter step (do that,
  as the toy trainer does, to match it exactly).
  """
  validation.check_positive("w_lr", w_lr)
  validation.check_positive("gamma", gamma, allow_zero=True)
  validation.check_finite("min_losses", min_losses)
  min_shape = np.shape(min_losses)
  if len(min_shape) > 1 or (num_tasks is not None and min_shape not in ((), (num_tasks,))):
    raise ValueError(f"`min_losses` must be a scalar or have shape (K,) = ({num_tasks},), "
                     f"got shape {min_shape}.")
  optimizer = optax.chain(optax.add_decayed_weights(gamma), optax.adam(w_lr))

  def init_state(k, dtype=jnp.float32):
    xi = jnp.zeros((k or 0,), dtype)
    return FAMOState(aggregator.placeholder_weights(k, dtype), xi, optimizer.init(xi),
                     jnp.zeros((k or 0,), dtype), jnp.zeros((), jnp.int32),
                     jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    if min_shape not in ((), losses.shape):
      raise ValueError(f"famo: `min_losses` has shape {min_shape} but there are "
                       f"K = {losses.shape[0]} losses; give a scalar or shape (K,).")
    return famo_weighting(losses, state, optimizer, min_losses=min_losses)[1]

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "famo", shared=shared, num_tasks=num_tasks, precision=precision)
