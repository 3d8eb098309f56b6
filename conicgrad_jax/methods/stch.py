r"""Smooth Tchebycheff scalarisation (STCH) of the task losses, with a warm-up that sets the nadir."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


class STCHState(NamedTuple):
  """State of :func:`stch`.

  Attributes:
    weights: the K weights of the last update.
    step: updates taken.
    nadir_sum: sum of the losses collected for the nadir point.
    nadir_count: how many loss vectors ``nadir_sum`` holds.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  step: jax.Array
  nadir_sum: jax.Array
  nadir_count: jax.Array
  nonfinite_steps: jax.Array


def stch_loss(losses: jax.Array, nadir: jax.Array, mu: float = 1.0) -> jax.Array:
  r"""K·μ·log Σ_i exp(log(l_i/nadir_i)/μ), the smooth Tchebycheff loss after the warm-up."""
  validation.check_task_vectors("stch_loss", "losses", losses, nadir=nadir,
                                scalar_ok=("nadir",))
  x = jnp.log(losses / nadir + 1e-20)
  return losses.shape[0] * mu * jax.nn.logsumexp(x / mu)


def stch_weighting(losses: jax.Array, state: STCHState, *, mu: float = 1.0,
                   warmup_steps: int = 100,
                   nadir_steps: Optional[int] = None) -> tuple[jax.Array, STCHState]:
  r"""One STCH step: returns ``(weights, new_state)``.

  During the first ``warmup_steps`` steps the weights are 1/l_i (the gradient
  of Σ log l_i) and the losses of the warm-up's last ``nadir_steps`` steps
  (default: its second half) are accumulated for the nadir point; afterwards
  the weights are ∂/∂l :func:`stch_loss`.
  """
  losses = losses.astype(state.nadir_sum.dtype)
  if nadir_steps is None:
    nadir_steps = warmup_steps - warmup_steps // 2
  in_warmup = state.step < warmup_steps
  collect = in_warmup & (state.step >= warmup_steps - nadir_steps)
  nadir_sum = state.nadir_sum + jnp.where(collect, losses, 0.0)
  nadir_count = state.nadir_count + collect.astype(jnp.int32)
  nadir = nadir_sum / jnp.maximum(nadir_count, 1)
  warm_weights = 1.0 / (losses + 1e-20)
  # Positive losses (the transformation skips other steps) make the nadir positive
  # after the warm-up; the 1 only stands in while nothing is collected yet.
  main_weights = jax.grad(stch_loss)(losses, jnp.where(nadir > 0, nadir, 1.0), mu)
  weights = jnp.where(in_warmup, warm_weights, main_weights)
  return weights, state._replace(weights=weights, step=state.step + 1, nadir_sum=nadir_sum,
                                 nadir_count=nadir_count)


def stch(*, mu: float = 1.0, warmup_steps: int = 100, nadir_steps: Optional[int] = None,
         shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
         precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Smooth Tchebycheff scalarisation: a smooth maximum of the losses relative to a nadir point.

  After a warm-up that fixes the nadir point z (mean losses of the warm-up's
  last ``nadir_steps`` updates), the model descends

  .. math::

     L = K\mu \log \sum_i \exp\!\big(\log(l_i / z_i)/\mu\big),
     \qquad w_i = \frac{\partial L}{\partial l_i}
     = \frac{K\,\operatorname{softmax}(x/\mu)_i}{l_i},\ x_i = \log(l_i/z_i),

  a smooth version of min max_i log(l_i/z_i). During the warm-up the loss is
  Σ_i log l_i (weights 1/l_i). Needs positive losses.

  Args:
    mu: smoothing μ > 0 (μ → 0: the Tchebycheff maximum).
    warmup_steps: length of the warm-up in updates.
    nadir_steps: the nadir averages the losses of the warm-up's last
      ``nadir_steps`` updates (1 ≤ nadir_steps ≤ warmup_steps); ``None``: its
      second half.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination Σ_i w_i g_i.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`STCHState`. ``update(task_grads, state, params=None, *, losses)``
    needs ``losses=`` (shape (K,)) and ignores other keyword arguments;
    non-finite losses and losses ≤ 0 skip the step. Users who back-propagate one loss can
    use :func:`stch_loss` after the warm-up.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.stch(warmup_steps=2)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> state = tx.init(None)
    >>> for losses in ([1.0, 4.0], [1.0, 4.0], [2.0, 4.0]):
    ...   _, state = tx.update(grads, state, losses=jnp.array(losses))
    >>> bool(state.weights[0] > state.weights[1])   # task 0 is furthest above its nadir
    True

  References:
    Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024.

  Deviations: the warm-up counts updates; the reference (LibMTL/Xi-L) counts
  epochs: Σ log l_i for epochs 0 to 4, the nadir from epoch 4, the smooth
  Tchebycheff loss from epoch 5 on (its ``warmup_epoch = 4``). To match it,
  pass ``warmup_steps = 5 · steps_per_epoch`` and
  ``nadir_steps = steps_per_epoch``.
  """
  validation.check_positive("mu", mu)
  validation.check_positive_int("warmup_steps", warmup_steps)
  validation.check_positive_int("nadir_steps", nadir_steps, allow_none=True)
  if nadir_steps is not None and nadir_steps > warmup_steps:
    raise ValueError(f"`nadir_steps` ({nadir_steps}) must not exceed `warmup_steps` "
                     f"({warmup_steps}).")

  def init_state(k, dtype=jnp.float32):
    return STCHState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32),
                     jnp.zeros((k or 0,), dtype), jnp.zeros((), jnp.int32),
                     jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    return stch_weighting(losses, state, mu=mu, warmup_steps=warmup_steps,
                          nadir_steps=nadir_steps)[1]

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "stch", shared=shared, num_tasks=num_tasks, precision=precision,
      positive_losses=True)
