r"""Uncertainty weighting (UW): weights ½e^{−s_i} with learned log-variances s."""

from __future__ import annotations

import numbers
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.methods import _loss_weighting


class UncertaintyWeightingState(NamedTuple):
  """State of :func:`uncertainty_weighting`.

  Attributes:
    weights: the K weights ½e^{−s_i} of the last update.
    log_scales: the learned log-variances s (after the last update's step).
    inner_state: the state of the optimiser of s.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  log_scales: jax.Array
  inner_state: optax.OptState
  nonfinite_steps: jax.Array


def uncertainty_weighting_loss(losses: jax.Array, log_scales: jax.Array) -> jax.Array:
  r"""Σ_i ½(e^{−s_i} l_i + s_i), the scalarised loss (s = log σ²).

  Its gradient in the losses is the weight vector ½e^{−s}; its gradient in s
  trains the log-variances.
  """
  validation.check_task_vectors("uncertainty_weighting_loss", "losses", losses,
                                log_scales=log_scales, scalar_ok=("log_scales",))
  return jnp.sum(0.5 * (jnp.exp(-log_scales) * losses + log_scales))


def _weights_of(log_scales):
  return 0.5 * jnp.exp(-log_scales)


def uw_weighting(losses: jax.Array, state: UncertaintyWeightingState,
                 optimizer: optax.GradientTransformation
                 ) -> tuple[jax.Array, UncertaintyWeightingState]:
  r"""One UW step: weights ½e^{−s} from the current s, then s moves by ``optimizer``.

  Args:
    losses: (K,) task losses.
    state: the current :class:`UncertaintyWeightingState`.
    optimizer: the optimiser of s, fed ∂/∂s :func:`uncertainty_weighting_loss`.

  Returns:
    ``(weights, new_state)``.
  """
  return _loss_weighting.log_scale_step(uncertainty_weighting_loss, _weights_of, losses, state,
                                        optimizer)


def uncertainty_weighting(*, lr: float = 0.025, init_log_scale: float = 0.0,
                          shared: validation.SharedSpec = None,
                          num_tasks: Optional[int] = None,
                          precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Uncertainty weighting: each loss weighted by its learned inverse variance.

  With learned log-variances s, the scalarised loss is

  .. math::

     L(s) = \sum_i \tfrac12\left(e^{-s_i} l_i + s_i\right),

  so the update is Σ_i ½e^{−s_i} g_i, and each update also takes one Adam
  step on ∂L/∂s. The equilibrium is e^{s_i} = l_i (weights 1/(2 l_i)), so the
  losses must be positive: a step with a loss ≤ 0 is skipped (counted in
  ``nonfinite_steps``). s stays within ±½ log(largest float) (±44 in
  float32), and Adam's gradient is clipped to ±√(largest float)/4, so that
  losses near 0 or above 1e19 keep the state finite.

  Args:
    lr: learning rate of the Adam optimiser of s (0.025, as the Nash-MTL and
      FAMO code bases).
    init_log_scale: initial s (0, as those code bases).
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination Σ_i w_i g_i.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`UncertaintyWeightingState`. ``update(task_grads, state,
    params=None, *, losses)`` needs ``losses=`` (shape (K,)) and ignores
    other keyword arguments; non-finite losses skip the step. Users who
    back-propagate one loss can use :func:`uncertainty_weighting_loss`.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.uncertainty_weighting()
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(None), losses=jnp.array([1.0, 4.0]))
    >>> [round(float(x), 3) + 0.0 for x in u["w"]]
    [0.5, 0.5]
    >>> [round(float(s), 3) + 0.0 for s in state.log_scales]   # s_2 moves towards log 4
    [0.0, 0.025]

  References:
    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018.

  Deviations: s has its own Adam optimiser, as in the Nash-MTL and FAMO code
  bases; LibMTL starts from s = −0.5 and trains s with the model's optimiser.
  """
  validation.check_positive("lr", lr)
  if not (validation.is_array(init_log_scale) or isinstance(init_log_scale, numbers.Number)):
    raise ValueError(f"`init_log_scale` must be a number, got {init_log_scale!r}.")
  validation.check_scalar("init_log_scale", init_log_scale)
  validation.check_finite("init_log_scale", init_log_scale)
  optimizer = optax.adam(lr)
  init_state = _loss_weighting.log_scale_init(UncertaintyWeightingState, optimizer,
                                              init_log_scale, _weights_of)

  def weigh(losses, state):
    return uw_weighting(losses, state, optimizer)[1]

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "uncertainty_weighting", shared=shared, num_tasks=num_tasks,
      precision=precision, positive_losses=True)
