"""Pieces shared by the methods that work on the task gradients themselves (GradDrop, MoCo, DB-MTL).

MoCo and DB-MTL keep a K×m buffer in their state, one stacked array per
shared leaf (so it stays pytree-native and sharded like the parameters);
their cost and memory are O(Km) per step rather than O(K²) after the Gram
matrix.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from conicgrad_jax import _numeric
from conicgrad_jax import linalg
from conicgrad_jax import validation

EPS = 1e-8


def accumulation(leaf: jax.Array) -> jax.Array:
  """``leaf`` in its solver dtype (at least float32)."""
  return leaf.astype(_numeric.solver_dtype(leaf.dtype))


def all_finite(leaves: Sequence[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))


def task_norms(leaves: Sequence[jax.Array]) -> jax.Array:
  """‖g_i‖ over all given stacked leaves, per task, as s_i‖g_i/s_i‖ with s_i = max|g_i|
  (squares of the entries themselves overflow float32 beyond about 1.8e19)."""
  leaves = [accumulation(l) for l in leaves]
  peak = functools.reduce(jnp.maximum, [
      jnp.max(jnp.abs(l), axis=tuple(range(1, l.ndim)), initial=0.0) if l.ndim > 1
      else jnp.abs(l)
      for l in leaves])
  peak = jnp.where(peak > 0, peak, 1.0)
  return peak * jnp.sqrt(sum(linalg.per_task_sum(jnp.square(l / per_task(peak, l)))
                             for l in leaves))


def per_task(vector: jax.Array, leaf: jax.Array) -> jax.Array:
  """A (K,) vector shaped to broadcast against a stacked leaf."""
  return vector.reshape((leaf.shape[0],) + (1,) * (leaf.ndim - 1))


def require_num_tasks(num_tasks, method: str):
  if num_tasks is None:
    raise ValueError(f"{method} keeps a buffer of K stacked gradients in its state: pass "
                     "`num_tasks`.")
  validation.check_static_positive_int("num_tasks", num_tasks)


def zero_buffers(shared: validation.SharedSpec, params, k: int, method: str) -> list:
  """Zeros of shape (K,) + each shared parameter's shape, in its solver dtype."""
  if params is None:
    raise ValueError(f"{method} builds its buffers from the parameters: call init(params).")
  flags = validation.resolve_shared(shared, params)
  return [_numeric.task_stacked_zeros(k, p, _numeric.solver_dtype(jnp.result_type(p)))
          for p, f in zip(jax.tree_util.tree_leaves(params), flags) if f]


def buffer_init(state_type, shared: validation.SharedSpec, initial_weight: float):
  """``init_state(k, dtype, params)`` of a ``state_type(weights, buffers, step, nonfinite_steps)``.

  The buffers are zeros of shape (K,) + the shape of each shared parameter,
  in the parameter's solver dtype; the weights are ``initial_weight``.
  """

  def init_state(k, dtype, params):
    buffers = zero_buffers(shared, params, k, "This method")
    return state_type(jnp.full((k,), initial_weight, dtype), buffers, jnp.zeros((), jnp.int32),
                      jnp.zeros((), jnp.int32))

  return init_state
