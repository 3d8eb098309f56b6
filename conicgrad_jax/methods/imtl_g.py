"""IMTL-G (Liu et al., ICLR 2021): equal projections of the update on every unit task gradient."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.solvers import pinv


def imtl_g_weighting(gram: jax.Array) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""IMTL-G weights: summing to 1, their combination has equal projections on every unit gradient.

  torchjd's rank-robust form: v = G⁺ diag(G)^½, w = v / Σv (zero weights if
  |Σv| < 1e-12, torchjd's bound, or if |Σv| ≤ (K·ε)^½·Σ|v|, where it is
  rounding noise). Weights can be negative.

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.

  Returns:
    ``(weights (K,), no_solver_info())``.
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  gram_n, _ = _numeric.normalized_gram(gram.astype(dtype))
  eps = jnp.finfo(dtype).eps
  k = gram_n.shape[0]
  v = _numeric.matvec(pinv.pinv_psd(gram_n, k * eps),
                      _numeric.gradient_norms(gram_n))
  total = jnp.sum(v)
  # 1ᵀG⁺s = 0 (e.g. Σ_i g_i = 0 with K > m): no combination has both. Computed, such a
  # total is rounding noise, below (K·ε)^½·Σ|v| (10⁻⁵–10⁻⁴ of Σ|v| in float32, where
  # dividing by it gave updates 10³–10⁶ times the gradients); genuine totals are of the
  # order of Σ|v|, also for ill-conditioned G.
  vanishes = jnp.abs(total) <= jnp.maximum(1e-12, jnp.sqrt(k * eps) * jnp.sum(jnp.abs(v)))
  weights = jnp.where(vanishes, jnp.zeros_like(v), v / jnp.where(vanishes, 1.0, total))
  return weights, aggregator.no_solver_info()


def imtl_g(*, shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Impartial MTL (gradient part): an update with equal projections on every unit task gradient.

  The update d = Σ_i w_i g_i has Σ_i w_i = 1 and ⟨d, g_i/‖g_i‖⟩ equal for all
  tasks, so no task's direction is favoured. On the Gram matrix:

  .. math::

     w = \frac{G^{+} \operatorname{diag}(G)^{1/2}}{\mathbf 1^\top G^{+}
     \operatorname{diag}(G)^{1/2}}.

  Weights can be negative.

  Args:
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
    >>> tx = cg.imtl_g()
    >>> task_grads = {"w": jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])}
    >>> updates, state = tx.update(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.08, 1.0, 1.0]
    >>> round(float(state.weights.sum()), 4)
    1.0

  References:
    Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.

  Deviations from the reference code: torchjd's rank-robust form through the
  pseudo-inverse of G (the paper inverts a (K−1)×(K−1) system, singular when
  gradients are linearly dependent); weights are zero when Σ_i v_i vanishes.
  """

  def weighting(gram, **_):
    return imtl_g_weighting(gram)

  return aggregator.stateless_gram_method(weighting, shared=shared, num_tasks=num_tasks,
                                         precision=precision)
