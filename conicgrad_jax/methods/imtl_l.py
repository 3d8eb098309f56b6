r"""IMTL-L: loss-scale-invariant weights e^{s_i} with learned log-scales s."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.methods import _loss_weighting


class IMTLLState(NamedTuple):
  """State of :func:`imtl_l`.

  Attributes:
    weights: the K weights e^{s_i} of the last update.
    log_scales: the learned log-scales s (after the last update's step).
    inner_state: the state of the optimiser of s.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  log_scales: jax.Array
  inner_state: optax.OptState
  nonfinite_steps: jax.Array


def imtl_l_loss(losses: jax.Array, log_scales: jax.Array) -> jax.Array:
  r"""Σ_i (e^{s_i} l_i − s_i), IMTL-L's scale-invariant loss.

  Its gradient in the losses is the weight vector e^{s}; its gradient in s
  trains the scales.
  """
  validation.check_task_vectors("imtl_l_loss", "losses", losses, log_scales=log_scales,
                                scalar_ok=("log_scales",))
  return jnp.sum(jnp.exp(log_scales) * losses - log_scales)


def imtl_l_weighting(losses: jax.Array, state: IMTLLState,
                     optimizer: optax.GradientTransformation) -> tuple[jax.Array, IMTLLState]:
  r"""One IMTL-L step: weights e^{s} from the current s, then s moves by ``optimizer``.

  Args:
    losses: (K,) task losses.
    state: the current :class:`IMTLLState`.
    optimizer: the optimiser of s, fed ∂/∂s :func:`imtl_l_loss`.

  Returns:
    ``(weights, new_state)``.
  """
  return _loss_weighting.log_scale_step(imtl_l_loss, jnp.exp, losses, state, optimizer)


def imtl_l(*, lr: float = 1e-3, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""IMTL-L: learned scales that make every scaled loss equal to 1.

  With learned log-scales s (s₀ = 0) the scalarised loss is

  .. math::

     L(s) = \sum_i \left(e^{s_i} l_i - s_i\right),

  so the update is Σ_i e^{s_i} g_i, and each update also takes one Adam step
  on ∂L/∂s. The equilibrium is e^{s_i} l_i = 1: every task's scaled loss is
  the same, whatever the losses' units. Needs positive losses: a step with a
  loss ≤ 0 is skipped (counted in ``nonfinite_steps``). s stays within
  ±½ log(largest float) (±44 in float32), and Adam's gradient is clipped to
  ±√(largest float)/4, so that losses near 0 or above 1e19 keep the state
  finite.

  Args:
    lr: learning rate of the Adam optimiser of s.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination Σ_i w_i g_i.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`IMTLLState`. ``update(task_grads, state, params=None, *,
    losses)`` needs ``losses=`` (shape (K,)) and ignores other keyword
    arguments; non-finite losses skip the step. Users who back-propagate one
    loss can use :func:`imtl_l_loss`.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.imtl_l(lr=0.1)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(None), losses=jnp.array([0.5, 2.0]))
    >>> [round(float(x), 3) + 0.0 for x in u["w"]]    # e^{s₀} = 1
    [1.0, 1.0]
    >>> [round(float(s), 3) + 0.0 for s in state.log_scales]   # towards log(1/l)
    [0.1, -0.1]

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.

  Deviations: LibMTL trains s with the model's optimiser; here s has its own
  Adam (``lr``).
  """
  validation.check_positive("lr", lr)
  optimizer = optax.adam(lr)
  init_state = _loss_weighting.log_scale_init(IMTLLState, optimizer, 0.0, jnp.exp)

  def weigh(losses, state):
    return imtl_l_weighting(losses, state, optimizer)[1]

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "imtl_l", shared=shared, num_tasks=num_tasks, precision=precision,
      positive_losses=True)
