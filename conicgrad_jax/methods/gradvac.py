"""GradVac (Wang et al., ICLR 2021): raise each pair's gradient cosine towards an EMA target."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


class GradVacInfo(NamedTuple):
  """The ``aux`` of :func:`gradvac_weighting`: the updated EMA cosine targets ρ̂ (K, K)."""
  targets: jax.Array


def gradvac_weighting(gram: jax.Array, targets: jax.Array, key: jax.Array, *,
                      beta: float = 0.5, eps: float = 1e-8) -> tuple[jax.Array, GradVacInfo]:
  r"""GradVac in Gram form: weights and the updated EMA of pairwise cosine targets ρ̂.

  For each task i (other tasks in a random order), with g_i' = Σ_j c_j g_j its
  running modified gradient: ρ = ⟨g_i', g_j⟩/(‖g_i'‖‖g_j‖ + ε); if ρ < ρ̂_ij,
  g_i' += w g_j with w = ‖g_i'‖(ρ̂_ij√(1−ρ²) − ρ√(1−ρ̂_ij²))/(‖g_j‖√(1−ρ̂_ij²) + ε);
  then ρ̂_ij ← (1−β)ρ̂_ij + βρ (always, with the pre-modification ρ). The update
  is Σ_i g_i' (LibMTL's GradVac with group_type 0, as newer torchjd computes
  it on the Gram matrix; square roots clamped at 0).

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    targets: the current targets ρ̂ (K, K).
    key: the PRNG key of the visiting orders.
    beta: the EMA rate β.
    eps: ε of the cosine and of the step's denominator.

  Returns:
    ``(weights (K,), GradVacInfo(new targets (K, K)))``, the targets in the
    solver dtype of ``gram``.
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  targets = targets.astype(dtype)
  k = gram.shape[0]
  norms = _numeric.gradient_norms(gram)
  keys = jax.random.split(key, k)
  # A target within √eps of ±1 (where √(1 − ρ̂²) is rounding noise) would make the
  # step's denominator ε alone: the step aims at ±(1 − √eps) instead (and a cosine
  # already above that aim takes no step).
  limit = 1.0 - float(np.sqrt(np.finfo(np.dtype(dtype)).eps))

  def one_task(i, target_row, key):
    order = jax.random.permutation(key, k)

    def visit(carry, j):
      c, row = carry
      gc = _numeric.matvec(gram, c)
      norm_i = jnp.sqrt(jnp.maximum(jnp.dot(c, gc), 0.0))
      rho = _ratio(gc[j], norm_i * norms[j] + eps)
      target = row[j]
      aim = jnp.clip(target, -limit, limit)
      root_t = jnp.sqrt(jnp.maximum(1.0 - aim * aim, 0.0))
      root_r = jnp.sqrt(jnp.maximum(1.0 - rho * rho, 0.0))
      w = _ratio(norm_i * (aim * root_r - rho * root_t), norms[j] * root_t + eps)
      other = j != i
      c = c.at[j].add(jnp.where(other & (rho < aim), w, 0.0))
      row = row.at[j].set(jnp.where(other, (1.0 - beta) * target + beta * rho, target))
      return (c, row), None

    (c, row), _ = jax.lax.scan(visit, (jax.nn.one_hot(i, k, dtype=dtype), target_row), order)
    return c, row

  c, rows = jax.vmap(one_task)(jnp.arange(k), targets, keys)
  return jnp.sum(c, axis=0), GradVacInfo(rows)


def _ratio(numerator, denominator):
  """numerator/denominator, and 0 where the denominator is 0 (a zero task gradient
  g_j with ε = 0: its cosine is 0 and adding any multiple of it changes nothing)."""
  safe = jnp.where(denominator > 0, denominator, 1.0)
  return jnp.where(denominator > 0, numerator / safe, 0.0)


class GradVacState(NamedTuple):
  """State of :func:`gradvac`.

  Attributes:
    weights: the K combination weights of the last update.
    key: the PRNG key of the next update's visiting orders.
    targets: the EMA cosine targets ρ̂ (K, K), initially 0.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  key: jax.Array
  targets: jax.Array
  nonfinite_steps: jax.Array


def gradvac(*, beta: float = 0.5, eps: float = 1e-8, seed: int = 0,
            shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Gradient vaccine: raise each pair's cosine towards an EMA target, then sum.

  For each task i, visiting the other tasks j in a random order, with
  ρ = cos(g_i', g_j) and target ρ̂_ij: if ρ < ρ̂_ij,

  .. math::

     g_i' \leftarrow g_i' + \frac{\|g_i'\|\big(\hat\rho_{ij}\sqrt{1-\rho^2}
     - \rho\sqrt{1-\hat\rho_{ij}^2}\big)}{\|g_j\|\sqrt{1-\hat\rho_{ij}^2}}\, g_j,

  which sets cos(g_i', g_j) to ρ̂_ij; then ρ̂_ij ← (1 − β)ρ̂_ij + βρ. The
  update is d = Σ_i g_i'. In Gram form g_i' = Σ_j c_j g_j.

  Args:
    beta: the EMA rate β of the targets, in [0, 1] (default 0.5).
    eps: ε added to the cosine's and the step's denominators (default 1e-8).
    seed: seed of the PRNG key kept in the state; each update splits it and
      draws fresh visiting orders.
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`GradVacState`. ``update`` needs no extra arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.gradvac(beta=0.5)
    >>> task_grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> updates, state = tx.update(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.5, 1.5]
    >>> round(float(state.targets[0, 1]), 3)   # β·cos(g_1, g_2)
    -0.354

  References:
    Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021.

  Deviations from the reference code (LibMTL's GradVac; there is no official
  code): one whole-model target per pair (LibMTL's ``group_type=0``), the
  Gram-matrix form of newer torchjd; square roots are clamped at 0; the
  update is the sum of the modified gradients, as LibMTL. A target within
  √eps (machine epsilon of the solver dtype) of ±1 enters the step as
  ±(1 − √eps): in the reference the step's denominator is then ε alone and
  the update grows by up to 1/ε (after parallel task gradients have driven
  ρ̂ to 1). A zero task gradient with ``eps=0`` counts as cosine 0 and gets
  no step, where the reference divides 0 by 0.
  """
  validation.check_unit_interval("beta", beta, closed_right=True)
  validation.check_positive("eps", eps, allow_zero=True)
  validation.check_integer("seed", seed)

  def init_state(k, dtype):
    kk = k if k is not None else 0
    return GradVacState(aggregator.placeholder_weights(k, dtype), jax.random.PRNGKey(seed),
                        jnp.zeros((kk, kk), dtype), jnp.zeros((), jnp.int32))

  def weigh(gram, state, **_):
    key, sub = jax.random.split(state.key)
    weights, info = gradvac_weighting(gram, state.targets, sub, beta=beta, eps=eps)
    return state._replace(weights=weights, key=key, targets=info.targets)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)
