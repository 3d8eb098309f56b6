r"""Random loss weighting (RLW): fresh random weights softmax(z), z ~ N(0, I), at every step."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


def rlw_weighting(key: jax.Array, num_tasks: int,
                  dtype=jnp.float32) -> tuple[jax.Array, aggregator.SolverInfo]:
  """w = softmax(z), z ~ N(0, I_K) drawn from ``key``.

  Returns:
    ``(weights, aggregator.no_solver_info())``.
  """
  return (jax.nn.softmax(jax.random.normal(key, (num_tasks,), dtype)),
          aggregator.no_solver_info())


def rlw(*, seed: int = 0, shared: validation.SharedSpec = None,
        num_tasks: Optional[int] = None,
        precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Random loss weighting: a fresh random convex combination of the task gradients each step.

  .. math::

     d = \sum_k w_k g_k, \qquad w = \operatorname{softmax}(z),\
     z \sim \mathcal N(0, I_K),

  with z drawn afresh at every update from the PRNG key kept in the state.
  No Gram matrix is computed (with one backward pass of Σ_k w_k L_k the
  stacked gradients are not needed: read the weights from the state).

  Args:
    seed: seed of the PRNG key stored in the state.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`~conicgrad_jax.aggregator.KeyedState` (the last weights and the
    key). ``update(task_grads, state, params=None)`` needs no extra
    arguments and ignores any.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.rlw(seed=0)
    >>> _, state = tx.update({"w": jnp.eye(3)}, tx.init(None))
    >>> bool(jnp.all(state.weights > 0)), round(float(jnp.sum(state.weights)), 5)
    (True, 1.0)

  References:
    Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test
    for Multi-Task Learning", TMLR 2022.

  Deviations: weights sum to 1 (no ×K), as in the Nash-MTL, LibMTL and
  torchjd code.
  """
  init_state = aggregator.keyed_state(seed)

  def weigh(gram, state, **_):
    del gram
    key, sub = jax.random.split(state.key)
    weights, _ = rlw_weighting(sub, state.weights.shape[0], state.weights.dtype)
    return state._replace(weights=weights, key=key)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision,
      needs_gram=False)
