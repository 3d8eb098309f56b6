r"""DB-MTL: dual balancing, log-loss gradients tracked by an EMA and equalised in magnitude."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _gradient_buffers as buf


class DBMTLState(NamedTuple):
  """State of :func:`db_mtl`.

  Attributes:
    weights: the scales α of the last update.
    buffers: the EMA Ĝ of the log-loss gradients, one (K,) + parameter-shaped
      array per shared leaf.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  buffers: list
  step: jax.Array
  nonfinite_steps: jax.Array


def db_mtl_aggregation(leaves: Sequence[jax.Array], losses: jax.Array, state: DBMTLState, *,
                       beta: float = 0.9, beta_sigma: float = 0.0) -> tuple[list, DBMTLState]:
  r"""One DB-MTL step on the stacked shared leaves: returns ``(updates, new_state)``.

  ĝ_i = g_i/(l_i + 1e-8); Ĝ ← ĝ + β_t(Ĝ − ĝ), β_t = β/t^{β_σ};
  α_i = max_j ‖Ĝ_j‖/(‖Ĝ_i‖ + 1e-8); updates Σ_i α_i Ĝ_i, leaf by leaf.
  """
  t = (state.step + 1).astype(losses.dtype)
  beta_t = beta / t ** beta_sigma
  inv = 1.0 / (losses + buf.EPS)
  buffers = []
  for g_hat, g in zip(state.buffers, leaves):
    log_grad = buf.accumulation(g) * buf.per_task(inv, g)
    buffers.append(log_grad + beta_t * (g_hat - log_grad))
  norms = buf.task_norms(buffers)
  alpha = jnp.max(norms) / (norms + buf.EPS)
  updates = [linalg.combine_leaf(alpha, b, b.dtype) for b in buffers]
  return updates, state._replace(weights=alpha, buffers=buffers, step=state.step + 1)


def db_mtl(*, beta: float = 0.9, beta_sigma: float = 0.0, num_tasks: Optional[int] = None,
           shared: validation.SharedSpec = None) -> optax.GradientTransformationExtraArgs:
  r"""DB-MTL: balance the loss scales with log losses and the gradient scales by norm.

  With the log-loss gradients ĝ_i = ∇ log(l_i + 10⁻⁸) = g_i/(l_i + 10⁻⁸)
  and t the step count (from 1),

  .. math::

     \hat G \leftarrow \hat g + \beta_t(\hat G - \hat g),\ \beta_t = \beta/t^{\beta_\sigma},
     \qquad d = \sum_i \frac{\max_j \|\hat G_j\|}{\|\hat G_i\| + 10^{-8}}\, \hat G_i,

  so every task's tracked gradient enters with the largest one's norm.
  Memory O(Km): Ĝ is kept in the state, one buffer per shared leaf.

  Args:
    beta: β ∈ [0, 1], the EMA rate.
    beta_sigma: β_σ ≥ 0, the decay exponent of the EMA rate.
    num_tasks: K (required: the buffers are built at ``init``).
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their raw task
      gradients.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`DBMTLState`; ``init(params)`` needs the parameters.
    ``update(task_grads, state, params=None, *, losses)`` needs ``losses=``
    (shape (K,)) and ignores other keyword arguments; non-finite losses and
    losses ≤ −10⁻⁸ skip the step. A loss near 0 scales its task's gradient
    ∇ log(L + 10⁻⁸) by up to 10⁸, as in the reference code.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> params = {"w": jnp.zeros(2)}
    >>> tx = cg.db_mtl(num_tasks=2, beta=0.0)
    >>> grads = {"w": jnp.array([[4.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(params), params, losses=jnp.array([2.0, 1.0]))
    >>> [round(float(x), 3) + 0.0 for x in u["w"]]   # ĝ = (2, 0), (0, 1): both scaled to norm 2
    [2.0, 2.0]

  References:
    Lin et al., "Dual-Balancing for Multi-Task Learning", 2023
    (arXiv:2308.12029; LibMTL's ``DB_MTL``).

  Deviations: task-specific leaves get the sum of their raw task gradients
  (the reference gives heads ∇ log l_i); no bias correction of the EMA, as
  the reference.
  """
  buf.require_num_tasks(num_tasks, "db_mtl")
  validation.check_unit_interval("beta", beta, closed_right=True)
  validation.check_positive("beta_sigma", beta_sigma, allow_zero=True)

  def aggregate(leaves, state, losses=None, **_):
    losses = aggregator.require_losses(losses, state.weights.shape[0], "db_mtl")
    updates, new_state = db_mtl_aggregation(leaves, losses, state, beta=beta,
                                            beta_sigma=beta_sigma)
    # log(l + 10⁻⁸) needs l > −10⁻⁸; other steps are skipped like non-finite ones.
    finite = (buf.all_finite(leaves) & jnp.all(jnp.isfinite(losses))
              & jnp.all(losses + buf.EPS > 0))
    return updates, new_state, finite

  return aggregator.stacked_gradient_transformation(
      aggregate, buf.buffer_init(DBMTLState, shared, 1.0), shared=shared, num_tasks=num_tasks,
      init_needs_params=True, needs_jacobian=True)
