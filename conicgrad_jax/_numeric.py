"""Small numeric helpers shared by the Gram-level solvers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def solver_dtype(dtype) -> jnp.dtype:
  """The dtype solvers run in: at least float32, float64 if given float64."""
  return jnp.promote_types(jnp.dtype(dtype), jnp.float32)


def matvec(matrix: jax.Array, vector: jax.Array) -> jax.Array:
  """``matrix @ vector`` at full precision (TPU/GPU defaults may use bf16/tf32)."""
  return jnp.matmul(matrix, vector, precision=HIGHEST)


def quad(matrix: jax.Array, vector: jax.Array) -> jax.Array:
  """``vectorᵀ matrix vector`` at full precision."""
  return jnp.dot(vector, matvec(matrix, vector), precision=HIGHEST)


def gradient_norms(gram: jax.Array) -> jax.Array:
  """The task-gradient norms ‖g_i‖ = (G_ii)^½ (rounding below zero read as 0)."""
  return jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))


def frobenius_norm(matrix: jax.Array) -> jax.Array:
  """‖M‖_F as s‖M/s‖_F with s = max|M_ij|, and 1 for M = 0.

  Squaring the entries of a Gram matrix itself overflows float32 for task
  gradients above about 1e9 and underflows below about 1e-10.
  """
  tiny = jnp.finfo(matrix.dtype).tiny
  s = jnp.max(jnp.abs(matrix))
  s = jnp.where(s > tiny, s, 1.0)
  norm = s * jnp.sqrt(jnp.sum(jnp.square(matrix / s)))
  return jnp.where(norm > tiny, norm, 1.0)


def normalized_gram(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns ``(G / σ, σ)`` with σ the largest diagonal entry (σ = 1 if G = 0).

  Every solver works on the normalised matrix, so its tolerances are relative
  to the largest task-gradient norm and the result is invariant to a positive
  rescaling of all gradients, from 1e-20 to 1e20 in float64 (in float32, G itself
  over- or underflows for gradient norms beyond about 1e±19).
  """
  dtype = solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  gram = 0.5 * (gram + gram.T)
  sigma = jnp.max(jnp.diagonal(gram))
  sigma = jnp.where(sigma > jnp.finfo(dtype).tiny, sigma, jnp.ones_like(sigma))
  return gram / sigma, sigma


def as_preference(preference, num_tasks: int, dtype) -> jax.Array:
  """The preference vector on the simplex (uniform when ``None``)."""
  if preference is None:
    return jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
  preference = jnp.asarray(preference, dtype)
  if preference.shape != (num_tasks,):
    raise ValueError(
        f"`preference` has shape {preference.shape}, but the task gradients "
        f"have {num_tasks} tasks; expected shape ({num_tasks},).")
  return preference / jnp.sum(preference)


def project_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection onto the probability simplex (sort-based; Held et al. 1974).

  The projection is unchanged by adding a constant to every entry; shifting the
  largest entry to 0 keeps the −1 of the cumulative sums above rounding for
  entries of any size (unshifted, entries beyond 1/eps lose it and give zeros).
  """
  k = v.shape[0]
  v = v - jnp.max(v)
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u) - 1.0
  idx = jnp.arange(1, k + 1, dtype=v.dtype)
  cond = u - css / idx > 0
  rho = jnp.max(jnp.where(cond, jnp.arange(k), 0))
  theta = css[rho] / (rho + 1.0)
  return jnp.maximum(v - theta, 0.0)


def abs_zero_subgradient(x):
  """|x| whose derivative at 0 is 0 (``torch.abs``'s subgradient; ``jnp.abs`` takes 1 there)."""
  return x * jax.lax.stop_gradient(jnp.sign(x))


def task_stacked_zeros(num_tasks: int, like, dtype) -> jax.Array:
  """Zeros of shape (K,) + ``like``'s shape, placed like the task gradients of ``like``.

  A concrete ``like`` sharded by a ``NamedSharding`` gives the zeros its sharding with
  the task axis replicated, ``P(None, *spec)``, so that a buffer of K stacked gradients
  (an accumulator, a method's state) stays sharded as the parameters are; otherwise
  (under ``jit``, one device) plain zeros, placed by XLA.
  """
  shape = (num_tasks,) + jnp.shape(like)
  sharding = (like.sharding if isinstance(like, jax.Array)
              and not isinstance(like, jax.core.Tracer) else None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    stacked = jax.sharding.NamedSharding(sharding.mesh,
                                         jax.sharding.PartitionSpec(None, *sharding.spec))
    return jnp.zeros(shape, dtype, device=stacked)
  return jnp.zeros(shape, dtype)
