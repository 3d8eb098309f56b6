r"""SDMGrad: stochastic direction-oriented MGDA with an unbiased double-sampling weight update."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _double_sampling


class SDMGradState(NamedTuple):
  """State of :func:`sdmgrad`.

  Attributes:
    weights: the K combination weights of the last update, (w + λ/K)/(1 + λ).
    simplex_weights: the simplex weights w (warm start of the next update).
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  simplex_weights: jax.Array
  nonfinite_steps: jax.Array


def sdmgrad_weighting(cross: jax.Array, state: SDMGradState, *, lamda: float = 0.3,
                      niter: int = 20, lr: float = 10.0) -> tuple[jax.Array, SDMGradState]:
  r"""The SDMGrad weights from the cross-batch Gram matrix M = G_{ξ1} G_{ξ2}ᵀ.

  M is normalised by s², s = mean_i (M_ii + 1e-4)^½, b_i = mean_j M_ij;
  ``niter`` projected SGD steps (momentum 0.5, fresh each call) on
  w ← Π_Δ(w − lr(Mw + λb)) start from ``state.simplex_weights``. Returns
  ``((w + λ/K)/(1 + λ), new_state)``.
  """
  k = cross.shape[0]
  scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diagonal(cross), 0.0) + 1e-4))
  m = cross / scale ** 2
  b = jnp.mean(m, axis=1)

  def sgd(carry, _):
    w, velocity = carry
    velocity = 0.5 * velocity + _numeric.matvec(m, w) + lamda * b
    return (_numeric.project_simplex(w - lr * velocity), velocity), None

  w0 = state.simplex_weights.astype(m.dtype)
  (w, _), _ = jax.lax.scan(sgd, (w0, jnp.zeros_like(w0)), None, length=niter)
  weights = (w + lamda / k) / (1.0 + lamda)
  return weights, state._replace(weights=weights, simplex_weights=w)


def sdmgrad(lamda: float = 0.3, *, niter: int = 20, lr: float = 10.0,
            shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""SDMGrad: MGDA regularised towards the mean gradient, weights from two further batches.

  With M = G_{ξ1} G_{ξ2}ᵀ the Gram matrix across two further independent
  batches (an unbiased estimate of G), the simplex weights approximately solve

  .. math::

     \min_{w \in \Delta}\ \tfrac12 w^\top M w + \lambda\, w^\top M \tfrac{\mathbf 1}{K}

  by ``niter`` projected SGD steps with momentum 0.5, warm-started from the
  previous update's w, and the update on the batch ζ is
  (Σ_i w_i g_i + λ·mean_i g_i)/(1 + λ).

  Args:
    lamda: λ ≥ 0, the pull towards the mean gradient (0.3, official).
    niter: projected SGD steps per update (20, official).
    lr: step size of those steps on the normalised M (10, official). At 10
      the steps do not converge: the weights jump between faces of the
      simplex with ``niter`` and with relative changes of M of 1e-7, so the
      update is set by rounding as much as by M. A small step with many
      iterations (``lr=0.05, niter=3000`` in the tests) solves the inner
      problem to its fixed point.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of M and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`SDMGradState`. ``update(task_grads, state, params=None, *,
    weight_grads=None)`` takes the two batches' stacked task gradients as
    ``weight_grads=(grads_xi1, grads_xi2)`` (full pytrees like
    ``task_grads``, or their shared leaves in ``tree_leaves`` order);
    without them both default to ``task_grads``. Other keyword arguments
    are ignored.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.sdmgrad()
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(None))
    >>> [round(float(x), 3) + 0.0 for x in u["w"]]   # symmetric tasks: the mean
    [0.5, 0.5]

  References:
    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
    Provable Stochastic Algorithms", NeurIPS 2023 (code: OptMN-Lab/sdmgrad).

  Deviations from the official code: the update is not multiplied by K (its
  ``overwrite_grad``) and not clipped to norm 1.0 afterwards (chain
  ``optax.clip_by_global_norm`` for that); the scale s clamps negative
  diagonal entries of the cross-batch matrix to 0 before the square root, as
  LibMTL does (the official code gives NaN there). The default of
  ``weight_grads`` (the update's own gradients) is what the official code
  computes anyway, since its three gradient buffers alias one tensor.
  """
  validation.check_precision(precision)
  validation.check_positive("lamda", lamda, allow_zero=True)
  validation.check_positive_int("niter", niter)
  validation.check_positive("lr", lr)

  def init_state(k, dtype=jnp.float32):
    w = aggregator.placeholder_weights(k, dtype)
    return SDMGradState(w, w, jnp.zeros((), jnp.int32))

  def aggregate(leaves, state, weight_grads=None, **_):
    m, finite = _double_sampling.weight_matrix(leaves, weight_grads, shared, precision)
    weights, new_state = sdmgrad_weighting(m, state, lamda=lamda, niter=niter, lr=lr)
    updates = [linalg.combine_leaf(weights, l, _numeric.solver_dtype(l.dtype), precision)
               for l in leaves]
    return updates, new_state, finite

  return aggregator.stacked_gradient_transformation(
      aggregate, init_state, shared=shared, num_tasks=num_tasks)
