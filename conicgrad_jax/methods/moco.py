r"""MoCo: a momentum-tracked Jacobian and simplex weights updated by one gradient step."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _gradient_buffers as buf


class MoCoState(NamedTuple):
  """State of :func:`moco`.

  Attributes:
    weights: the weights λ of the last update.
    buffers: the tracked Jacobian y, one (K,) + parameter-shaped array per
      shared leaf.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  buffers: list
  step: jax.Array
  nonfinite_steps: jax.Array


def moco_aggregation(leaves: Sequence[jax.Array], losses: jax.Array, state: MoCoState, *,
                     beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
                     gamma_sigma: float = 0.5, rho: float = 0.0) -> tuple[list, MoCoState]:
  r"""One MoCo step on the stacked shared leaves: returns ``(updates, new_state)``.

  ĝ_i = g_i/(‖g_i‖ + 1e-8)·l_i; y ← y − (β/t^{β_σ})(y − ĝ);
  λ ← softmax(λ − (γ/t^{γ_σ})(y yᵀ + ρI)λ); updates yᵀλ, leaf by leaf.
  """
  k = state.weights.shape[0]
  t = (state.step + 1).astype(losses.dtype)
  scale = losses / (buf.task_norms(leaves) + buf.EPS)
  rate = beta / t ** beta_sigma
  buffers = [y - rate * (y - buf.accumulation(g) * buf.per_task(scale, g))
             for y, g in zip(state.buffers, leaves)]
  yyt = linalg.gram_matrix(buffers) + rho * jnp.eye(k)
  lam = state.weights.astype(yyt.dtype)
  lam = jax.nn.softmax(lam - (gamma / t ** gamma_sigma) * _numeric.matvec(yyt, lam))
  updates = [linalg.combine_leaf(lam, y, y.dtype) for y in buffers]
  return updates, state._replace(weights=lam, buffers=buffers, step=state.step + 1)


def moco(*, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
         gamma_sigma: float = 0.5, rho: float = 0.0, num_tasks: Optional[int] = None,
         shared: validation.SharedSpec = None) -> optax.GradientTransformationExtraArgs:
  r"""MoCo: MGDA with a momentum-tracked Jacobian, which removes the bias of stochastic gradients.

  With ĝ_i = l_i g_i/(‖g_i‖ + 10⁻⁸) and t the step count (from 1),

  .. math::

     y \leftarrow y - \frac{\beta}{t^{\beta_\sigma}}(y - \hat g), \quad
     \lambda \leftarrow \operatorname{softmax}\!\Big(\lambda
       - \frac{\gamma}{t^{\gamma_\sigma}}(y y^\top + \rho I)\lambda\Big), \quad
     d = y^\top \lambda.

  Memory O(Km): y is kept in the state, one buffer per shared leaf.

  Args:
    beta: β, the tracking rate of y.
    beta_sigma: β_σ ≥ 0, the decay exponent of the tracking rate.
    gamma: γ, the step size of λ.
    gamma_sigma: γ_σ ≥ 0, the decay exponent of that step size.
    rho: ρ ≥ 0, the regularisation of y yᵀ.
    num_tasks: K (required: the buffers are built at ``init``).
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`MoCoState`; ``init(params)`` needs the parameters.
    ``update(task_grads, state, params=None, *, losses)`` needs ``losses=``
    (shape (K,)) and ignores other keyword arguments; non-finite or negative
    losses skip the step.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> params = {"w": jnp.zeros(2)}
    >>> tx = cg.moco(num_tasks=2)
    >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(params), params, losses=jnp.array([1.0, 1.0]))
    >>> [round(float(x), 3) + 0.0 for x in u["w"]]   # y = ½ ĝ, ĝ_i = g_i/‖g_i‖, λ = (½, ½)
    [0.25, 0.25]

  References:
    Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning:
    A Provably Convergent Approach", ICLR 2023.

  Deviations: λ is updated by a softmax of the stepped λ (LibMTL's port of
  the authors' code) instead of a projection onto the simplex; defaults
  β = 0.5, β_σ = 0.5, γ = 0.1, γ_σ = 0.5, ρ = 0 as LibMTL.
  """
  buf.require_num_tasks(num_tasks, "moco")
  for name, value in (("beta", beta), ("gamma", gamma)):
    validation.check_positive(name, value)
  for name, value in (("beta_sigma", beta_sigma), ("gamma_sigma", gamma_sigma), ("rho", rho)):
    validation.check_positive(name, value, allow_zero=True)

  def aggregate(leaves, state, losses=None, **_):
    losses = aggregator.require_losses(losses, state.weights.shape[0], "moco")
    updates, new_state = moco_aggregation(leaves, losses, state, beta=beta,
                                          beta_sigma=beta_sigma, gamma=gamma,
                                          gamma_sigma=gamma_sigma, rho=rho)
    # The gradients are rescaled to length L_k: a negative loss would reverse its
    # task's gradient, so such steps are skipped like non-finite ones.
    finite = buf.all_finite(leaves) & jnp.all(jnp.isfinite(losses)) & jnp.all(losses >= 0)
    return updates, new_state, finite

  return aggregator.stacked_gradient_transformation(
      aggregate, buf.buffer_init(MoCoState, shared, 1.0 / num_tasks), shared=shared,
      num_tasks=num_tasks, init_needs_params=True, needs_jacobian=True)
