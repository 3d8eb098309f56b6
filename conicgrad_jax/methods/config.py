"""ConFIG (Liu et al., ICLR 2025): a conflict-free update with equal cosines to every task gradient."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.solvers import pinv


def config_weighting(gram: jax.Array,
                     preference: Optional[jax.Array] = None) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""ConFIG weights: the direction x with as-preferred cosines to every unit gradient, length Σ_i⟨g_i, x̂⟩.

  With unit rows U = D⁻¹J (zero rows for zero gradients), x = U⁺ w = Uᵀ(UUᵀ)⁺w
  (w the preference, ones by default), d = (Σ_i ⟨g_i, x̂⟩) x̂. All from G:
  UUᵀ = D⁻¹GD⁻¹ and x = Jᵀ D⁻¹(UUᵀ)⁺w.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    preference: the target cosines w (up to scale); ones by default.

  Returns:
    ``(weights (K,), no_solver_info())``.
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  k = gram.shape[0]
  w = (jnp.ones((k,), dtype) if preference is None
       else jnp.asarray(preference, dtype))
  norms = _numeric.gradient_norms(gram)
  tiny = jnp.finfo(dtype).tiny
  inv_norm = jnp.where(norms > tiny ** 0.5, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
  cos = inv_norm[:, None] * gram * inv_norm[None, :]
  coeff = inv_norm * _numeric.matvec(pinv.pinv_psd(cos, k * jnp.finfo(dtype).eps), w)
  x_norm = jnp.sqrt(jnp.maximum(_numeric.quad(gram, coeff), 0.0))
  unit = coeff / jnp.where(x_norm > 0, x_norm, 1.0)
  length = jnp.sum(_numeric.matvec(gram, unit))
  weights = jnp.where(x_norm > 0, length * unit, jnp.zeros_like(unit))
  return weights, aggregator.no_solver_info()


def config(*, preference=None, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Conflict-free inverse gradients: equal cosines between the update and every task gradient.

  With U the unit task gradients (rows g_i/‖g_i‖) and w the preference,

  .. math::

     x = U^{+} w, \qquad d = \Big(\sum_i \langle g_i, \hat x\rangle\Big) \hat x,

  so cos(d, g_i) ∝ w_i: all equal (and positive) by default. Computed from
  the Gram matrix alone: x = Jᵀ D⁻¹ (D⁻¹GD⁻¹)⁺ w, D = diag(‖g_i‖).

  Args:
    preference: optional non-negative weights w, the relative target
      cosines; ones by default.
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is an
    :class:`~conicgrad_jax.aggregator.GramMethodState`. ``update`` needs no
    extra arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.config()
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> updates, _ = tx.update(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.16, 2.07, 2.07]

  References:
    Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025 (github.com/tum-pbs/ConFIG).

  Deviations from the reference code: U⁺w is computed through the
  pseudo-inverse of the K×K matrix UUᵀ (the reference solves a least-squares
  problem on the K×m matrix U); zero task gradients get zero rows. UUᵀ holds
  1 − cos θ of two gradients at an angle θ only to rounding, so in float32
  gradients closer than about 1e-3 rad count as one duplicated task (the
  exact update can differ by tens of percent there); float64 resolves far
  smaller angles
  (``test_nearly_parallel_gradients_are_resolved_down_to_the_gram_matrix_rounding``).
  """
  validation.check_static_positive_int("num_tasks", num_tasks, allow_none=True)
  validation.check_preference(preference, num_tasks)
  if preference is not None and num_tasks is None:
    num_tasks = int(np.shape(preference)[0])

  def weighting(gram, **_):
    return config_weighting(gram, preference)

  return aggregator.stateless_gram_method(weighting, shared=shared, num_tasks=num_tasks,
                                         precision=precision)
