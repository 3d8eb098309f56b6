r"""GradDrop: gradient sign dropout, coordinate by coordinate, on the stacked task gradients."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _gradient_buffers as buf


def graddrop_aggregation(leaves: Sequence[jax.Array], state: aggregator.KeyedState, *,
                         leak: float = 0.0, eps: float = buf.EPS
                         ) -> tuple[list, aggregator.KeyedState]:
  r"""The GradDrop update of each stacked leaf, masks drawn from ``state.key``.

  Returns ``(updates, new_state)``: one update per leaf (task axis summed
  out, at least float32) and the state with a fresh key and, as
  ``weights``, the fraction of coordinates each task kept.
  """
  key, *subs = jax.random.split(state.key, len(leaves) + 1)
  updates, kept, total = [], 0.0, 0
  for leaf, sub in zip(leaves, subs):
    g = buf.accumulation(leaf)
    purity = 0.5 * (1.0 + jnp.sum(g, 0) / (jnp.sum(jnp.abs(g), 0) + eps))
    u = jax.random.uniform(sub, purity.shape, g.dtype)
    mask = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
    updates.append(jnp.sum((leak + (1.0 - leak) * mask) * g, axis=0))
    kept = kept + linalg.per_task_sum(mask, jnp.int32)
    total += purity.size
  weights = (kept / max(total, 1)).astype(state.weights.dtype)
  return updates, state._replace(weights=weights, key=key)


def graddrop(*, leak: float = 0.0, eps: float = buf.EPS, seed: int = 0,
             shared: validation.SharedSpec = None,
             num_tasks: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  r"""GradDrop: keep, coordinate by coordinate, only the task gradients of one sign.

  With the sign purity P = ½(1 + Σ_i g_i / (Σ_i |g_i| + ε)) and
  U ~ Uniform(0, 1) drawn per coordinate,

  .. math::

     M_i = [P > U]\,[g_i > 0] + [P < U]\,[g_i < 0], \qquad
     d = \sum_i \big(\ell + (1 - \ell) M_i\big) \odot g_i,

  so where the tasks agree in sign every gradient is kept (with probability
  ½(1 + S/(S + ε)), S = |Σ_i g_i|: a coordinate whose gradients sum to a few
  ε or less, 1e-8 by default, may still be dropped), and elsewhere one sign
  survives with probability given by its share of the total.

  Args:
    leak: ℓ ∈ [0, 1], the fraction of every gradient kept regardless of
      the mask.
    eps: ε > 0 in the purity's denominator.
    seed: seed of the PRNG key stored in the state.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`~conicgrad_jax.aggregator.KeyedState`; its ``weights`` log the
    fraction of coordinates each task kept. ``update(task_grads, state,
    params=None)`` needs no extra arguments and ignores any.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.graddrop()
    >>> grads = {"w": jnp.array([[1.0, 2.0], [3.0, 1.0]])}   # signs agree everywhere
    >>> u, _ = tx.update(grads, tx.init(None))
    >>> [round(float(x), 3) + 0.0 for x in u["w"]]
    [4.0, 3.0]

  References:
    Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout", NeurIPS 2020.

  Deviations: the parameter-level form of the CAGrad/FAMO code, with the
  sum over tasks (their mean × K); LibMTL's representation-level form is
  not implemented.
  """
  validation.check_unit_interval("leak", leak, closed_right=True)
  validation.check_positive("eps", eps)

  def aggregate(leaves, state, **_):
    updates, new_state = graddrop_aggregation(leaves, state, leak=leak, eps=eps)
    return updates, new_state, buf.all_finite(leaves)

  return aggregator.stacked_gradient_transformation(
      aggregate, aggregator.keyed_state(seed), shared=shared, num_tasks=num_tasks,
      needs_jacobian=True)
