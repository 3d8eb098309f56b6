r"""Dynamic weight average (DWA): softmax of the ratio of recent to older mean losses."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

_EPS = 1e-8


class DWAState(NamedTuple):
  """State of :func:`dwa`.

  Attributes:
    weights: the K weights of the last update.
    history: (2·window, K) FIFO of the last loss vectors, oldest first
      (initialised with ones, as the reference).
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  history: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def dwa_weighting(losses: jax.Array, state: DWAState, *, temperature: float = 2.0,
                  window: int = 25) -> tuple[jax.Array, DWAState]:
  r"""Pushes ``losses`` into the history and returns ``(weights, new_state)``.

  Once more than ``window`` steps have run before this one (the Nash-MTL
  code's ``running_iterations > iteration_window``), r_k = mean(newest
  ``window`` losses)/mean(the ``window`` before) and the weights are
  softmax(r/T); before that they are uniform.
  """
  history = jnp.concatenate([state.history[1:], losses[None].astype(state.history.dtype)])
  ratio = jnp.mean(history[window:], 0) / (jnp.mean(history[:window], 0) + _EPS)
  k = losses.shape[0]
  warm = state.step > window
  weights = jnp.where(warm, jax.nn.softmax(ratio / temperature),
                      jnp.full((k,), 1.0 / k, history.dtype))
  return weights, state._replace(weights=weights, history=history, step=state.step + 1)


def dwa(*, temperature: float = 2.0, window: int = 25, shared: validation.SharedSpec = None,
        num_tasks: Optional[int] = None,
        precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Dynamic weight average: tasks whose loss falls slowly get more weight.

  With the loss ratio r_k = mean(newest ``window`` losses of task k) /
  mean(the ``window`` before), once more than ``window`` updates have run
  before the current one,

  .. math::

     w = \operatorname{softmax}(r / T),

  and w = 1/K before. The update is Σ_k w_k g_k; the weights sum to 1. The
  original epoch-level DWA is this with one window per epoch of averaged
  losses.

  Args:
    temperature: T > 0; larger T gives more uniform weights.
    window: number of updates per averaging window (the state keeps the last
      2·window loss vectors).
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination Σ_k w_k g_k.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`DWAState`. ``update(task_grads, state, params=None, *, losses)``
    needs ``losses=`` (shape (K,)) and ignores other keyword arguments;
    non-finite losses skip the step.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.dwa(temperature=1.0, window=1)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> state = tx.init(None)
    >>> for losses in ([1.0, 1.0], [1.0, 1.0], [0.5, 1.0]):  # task 0 improves last
    ...   _, state = tx.update(grads, state, losses=jnp.array(losses))
    >>> bool(state.weights[0] < state.weights[1])
    True

  References:
    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019.

  Deviations: iteration-level, as the Nash-MTL code base; the reference's
  weights are K·softmax(r/T) applied to the mean of the losses, the same
  update as softmax(r/T) applied to their sum; the ratio's denominator
  gets 1e-8 (the reference has none), so a zero loss gives no infinity.
  """
  validation.check_positive("temperature", temperature)
  validation.check_positive_int("window", window)

  def init_state(k, dtype=jnp.float32):
    return DWAState(aggregator.placeholder_weights(k, dtype),
                    jnp.ones((2 * window, k or 0), dtype), jnp.zeros((), jnp.int32),
                    jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    return dwa_weighting(losses, state, temperature=temperature, window=window)[1]

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "dwa", shared=shared, num_tasks=num_tasks, precision=precision)
