r"""Geometric loss strategy (GLS): descend the geometric mean of the task losses."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


class GLSState(NamedTuple):
  """State of :func:`gls`: the weights of the last update and the non-finite count."""
  weights: jax.Array
  nonfinite_steps: jax.Array


def gls_loss(losses: jax.Array) -> jax.Array:
  r"""(Π_i l_i)^{1/K}, computed as exp(mean log l) (no over- or underflow for large K)."""
  validation.check_task_vectors("gls_loss", "losses", losses)
  return jnp.exp(jnp.mean(jnp.log(losses)))


def gls_weighting(losses: jax.Array) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""Weights ∂(Π l)^{1/K}/∂l_i = L/(K l_i), L the geometric mean; a closed form.

  Returns:
    ``(weights, aggregator.no_solver_info())``.
  """
  return jax.grad(gls_loss)(losses), aggregator.no_solver_info()


def gls(*, shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
        precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Geometric loss strategy: gradient descent on the geometric mean of the losses.

  .. math::

     L = \Big(\prod_i l_i\Big)^{1/K}, \qquad
     w_i = \frac{\partial L}{\partial l_i} = \frac{L}{K\,l_i},

  so the update is Σ_i w_i g_i: tasks with small losses weigh more, and the
  direction does not change when one loss is rescaled. Needs positive
  losses. Stateless.

  Args:
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination Σ_i w_i g_i.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`GLSState`. ``update(task_grads, state, params=None, *, losses)``
    needs ``losses=`` (shape (K,)) and ignores other keyword arguments;
    non-finite losses and losses ≤ 0 skip the step. Users who back-propagate one loss can
    use :func:`gls_loss`.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.gls()
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(None), losses=jnp.array([1.0, 4.0]))
    >>> [round(float(w), 3) + 0.0 for w in state.weights]   # L = 2, w = L/(2 l)
    [1.0, 0.25]

  References:
    Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and
    Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.

  Deviations: the geometric mean is computed as exp(mean log l) instead of
  the product to the power 1/K (same value, no overflow for many tasks).
  """

  def init_state(k, dtype=jnp.float32):
    return GLSState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    return state._replace(weights=gls_weighting(losses.astype(state.weights.dtype))[0])

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "gls", shared=shared, num_tasks=num_tasks, precision=precision,
      positive_losses=True)
